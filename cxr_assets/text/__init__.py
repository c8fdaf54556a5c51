"""LLM2Vec-style report encoder: base-LLM loading, bidirectional attention, MNTP, contrastive
training, pooling (incl. latent attention) and the `TextEncoder` API; baselines and the text-tower
evaluation live in `cxr_assets.text.baselines` / `cxr_assets.text.evaluation`.

Importing this package is cheap: torch / transformers / peft are imported inside functions.
"""

from cxr_assets.text.adapt import AdaptationResult, adapt_text_encoder
from cxr_assets.text.base_model import load_causal_lm, resolve_base_model, smollm2_gguf_path
from cxr_assets.text.bidirectional import enable_bidirectional, is_bidirectional
from cxr_assets.text.contrastive import train_contrastive
from cxr_assets.text.encoder import TextEncoder, load_llm2vec4cxr
from cxr_assets.text.llm2vec4cxr import is_llm2vec4cxr_folder
from cxr_assets.text.mntp import train_mntp
from cxr_assets.text.pooling import POOLING_MODES, make_latent_attention, pool
from cxr_assets.text.tiny import make_tiny_causal_lm
from cxr_assets.text.tokenization import SEPARATOR, tokenize_with_instruction

__all__ = [
    "POOLING_MODES",
    "SEPARATOR",
    "AdaptationResult",
    "TextEncoder",
    "adapt_text_encoder",
    "enable_bidirectional",
    "is_bidirectional",
    "is_llm2vec4cxr_folder",
    "load_causal_lm",
    "load_llm2vec4cxr",
    "make_latent_attention",
    "make_tiny_causal_lm",
    "pool",
    "resolve_base_model",
    "smollm2_gguf_path",
    "tokenize_with_instruction",
    "train_contrastive",
    "train_mntp",
]
