"""A tiny randomly initialised Llama with the real SmolLM2 tokenizer, for tests and the "tiny" profile.

The architecture and tokenizer match the real base model, so every code path (bidirectional
switch, LoRA targets, MNTP blank token, pooling, save/load) is exercised, in seconds.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from cxr_assets.fileio import replace_folder


def _load_tokenizer(source: Path | None):
    from transformers import AutoTokenizer

    from cxr_assets.text.base_model import smollm2_gguf_path

    if source is None:
        source = smollm2_gguf_path()
    source = Path(source)
    if source.is_file() and source.suffix.lower() == ".gguf":
        return AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    if source.is_dir():
        return AutoTokenizer.from_pretrained(source)
    raise FileNotFoundError(f"tokenizer source {source} is neither a model folder nor a .gguf file")


def make_tiny_causal_lm(
    out_dir: Path,
    tokenizer_from: Path | None = None,
    hidden_size: int = 64,
    layers: int = 2,
    seed: int = 0,
) -> Path:
    """Save a tiny LlamaForCausalLM (+ tokenizer) to out_dir and return it; same seed, same weights.

    tokenizer_from: a model folder (e.g. the cached dequantized SmolLM2) or a .gguf file;
    None reads the tokenizer from the embedded SmolLM2 GGUF (a few seconds).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    heads = 4
    if hidden_size % (2 * heads) != 0:
        raise ValueError(f"hidden_size must be a multiple of {2 * heads}, got {hidden_size}")
    if layers < 1:
        raise ValueError(f"layers must be >= 1, got {layers}")
    tokenizer = _load_tokenizer(tokenizer_from)
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads // 2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=pad_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        replace_folder(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
