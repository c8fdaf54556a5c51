"""The report encoder used by the rest of the pipeline: a bidirectional LLM body + pooling.

A saved encoder is a plain folder: the merged transformer body (`model.safetensors`,
`config.json`), the tokenizer files, for latent-attention pooling the head
(`pooling_head.safetensors`), the fitted embedding post-processing (`postprocess.safetensors`,
applied by `encode`), the query adapter when one was fitted (`query_adapter.safetensors`,
applied by `encode_queries`), and `encoder_config.json` (pooling, instruction, separator, max_length,
base_model, dim, bidirectional, mean_weight for a head beside the mean, content_hash,
document_hash). `content_hash` identifies what the encoder computes (all weight/config/tokenizer
bytes + the encoding settings); `document_hash` the same without the query adapter, which moves
only queries: what `encode` returns for a report, so the report-embedding cache keys on it.

A release folder (`text/release.py`) holds only what differs from the base model (LoRA deltas,
pooling head, post-processing); `from_pretrained` rebuilds the full encoder from it.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from cxr_assets.fileio import replace_folder
from cxr_assets.text.encoder_files import (
    _HASH_FIELDS,
    ENCODER_CONFIG,
    POOLING_HEAD,
    folder_hash,
    load_pooling_head,
    load_postprocess,
    save_pooling_head,
    stored_mean_taps,
)
from cxr_assets.text.pooling import HEAD_MODES, LAST_LAYER
from cxr_assets.text.postprocess import POSTPROCESS_FILE
from cxr_assets.text.query_adapter import QUERY_ADAPTER_FILE, load_query_adapter

# Padded tokens per encode batch: a few long reports no longer pad a whole batch of short ones,
# and ~1k rows of activations stay in cache. Measured on 256 IU reports, 2 threads (reports/s at
# 768 / 1024 / 1536 / 2048 tokens): fp32 11.5 / 11.5 / 10.9 / 10.4, bf16 20.8 / 21.3 / 21.0 /
# 19.9; fixed batches of 32 texts: fp32 7.2.
DEFAULT_BATCH_TOKENS = 1024


def length_batches(lengths: list[int], batch_size: int,
                   max_tokens: int | None = DEFAULT_BATCH_TOKENS) -> list[list[int]]:
    """Indices grouped into batches of similar token length, longest first (the memory peak shows
    early): each batch holds at most batch_size texts and, when max_tokens is set, at most
    max_tokens tokens once padded to its longest text (a text longer than that goes alone)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_batch_tokens must be >= 1 or None, got {max_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        current = batches[-1] if batches else None
        # Sorted longest first, so the batch's first text sets its padded width.
        if (current is not None and len(current) < batch_size
                and (max_tokens is None or lengths[current[0]] * (len(current) + 1) <= max_tokens)):
            current.append(i)
        else:
            batches.append([i])
    return batches


class TextEncoder:
    """LLM report encoder (bidirectional or causal): `encode(texts) -> float32 [N, dim]`, not
    normalised, except with pooling 'mean_and_latent_attention', whose two weighted unit-length
    halves make a unit-length vector of twice the hidden size."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        pooling: str = "mean",
        instruction: str = "",
        max_length: int = 128,
        base_model: str = "",
        content_hash: str | None = None,
        source_dir: Path | None = None,
        pooling_head: Any = None,
        bidirectional: bool = True,
        postprocess: Any = None,
        mean_weight: float = 0.5,
        mean_taps: Any = None,
        query_adapter: Any = None,
        document_hash: str | None = None,
    ) -> None:
        from cxr_assets.text.base_model import backbone, prepare_tokenizer
        from cxr_assets.text.bidirectional import enable_bidirectional
        from cxr_assets.text.pooling import MEAN_MODES, POOLING_MODES
        from cxr_assets.text.tokenization import SEPARATOR

        if pooling not in POOLING_MODES:
            raise ValueError(f"pooling must be one of {POOLING_MODES}, got {pooling!r}")
        if max_length < 8:
            raise ValueError(f"max_length must be >= 8, got {max_length}")
        # Keep only the body: the LM head is not needed to embed (and is tied on small LLMs).
        # bidirectional=False keeps the causal model: LLM2Vec's reference baseline.
        body = backbone(model)
        self.model = (enable_bidirectional(body) if bidirectional else body).eval()
        self.bidirectional = bool(bidirectional)
        self.tokenizer = prepare_tokenizer(tokenizer)
        self.pooling = pooling
        self.instruction = instruction or ""
        self.max_length = int(max_length)
        self.base_model = str(base_model)
        self.separator = SEPARATOR
        self.hidden_size = int(self.model.config.hidden_size)
        # The mean part reads one layer (the last, by default) or several side by side.
        self.mean_taps = mean_taps if mean_taps is not None else LAST_LAYER
        if self.mean_taps != LAST_LAYER:
            if pooling not in MEAN_MODES:
                raise ValueError(f"mean taps {self.mean_taps} need a pooling with a mean part "
                                 f"{MEAN_MODES}, not {pooling!r}")
            self.mean_taps.check_layers(int(self.model.config.num_hidden_layers))
        self.mean_width = self.hidden_size * len(self.mean_taps.layers)
        # 'mean_and_latent_attention' embeds the mean and the head's output side by side.
        self.dim = (self.mean_width + (self.hidden_size if pooling == "mean_and_latent_attention"
                                       else 0)) if pooling in MEAN_MODES else self.hidden_size
        if not 0.0 < float(mean_weight) < 1.0:
            raise ValueError(f"mean_weight must be in (0, 1), got {mean_weight}")
        self.mean_weight = float(mean_weight)
        self._content_hash = content_hash
        self._document_hash = document_hash
        self._source_dir = source_dir
        if pooling in HEAD_MODES and pooling_head is None:
            raise ValueError(f"pooling {pooling!r} needs its pooling_head (a LatentAttentionPooling)")
        if pooling_head is not None and int(pooling_head.hidden_size) != self.hidden_size:
            raise ValueError(
                f"pooling head width {pooling_head.hidden_size} != model hidden size {self.hidden_size}"
            )
        self.pooling_head = pooling_head.eval() if pooling_head is not None else None
        # Post-processing applies to the mean-pooled part (all of it unless a head is beside it).
        expected = self.mean_width if pooling in MEAN_MODES else self.hidden_size
        if postprocess is not None and postprocess.dim != expected:
            raise ValueError(f"post-processing dim {postprocess.dim} != the pooled part's "
                             f"{expected}")
        self.postprocess = postprocess
        if query_adapter is not None and query_adapter.dim != self.dim:
            raise ValueError(f"query adapter dim {query_adapter.dim} != the encoder's {self.dim}")
        self.query_adapter = query_adapter  # applied by encode_queries only
        from cxr_assets.text.encode_paths import FP32

        self.compute = FP32  # how the forward runs: see use_path / encode_paths.choose_path
        self._path_request: tuple[str, int] | None = None
        self.path_choice: Any = None  # the PathChoice of request_path, once made

    def request_path(self, requested: str, batch_size: int = 16) -> None:
        """Choose the compute path at the first `encode` call, on the texts that call gets (the
        probe of cxr_assets.text.encode_paths.choose_path measures on real work, and costs
        nothing when nothing needs encoding). 'auto' or a path name; see `path_choice` after."""
        from cxr_assets.text.encode_paths import REQUESTS

        if requested not in REQUESTS:
            raise ValueError(f"encode path must be one of {REQUESTS}, got {requested!r}")
        self._path_request = (requested, int(batch_size))

    def use_path(self, name: str, model: Any) -> None:
        """Run the forward through `model` (already converted for path `name`, see
        cxr_assets.text.encode_paths.convert_model). The content hash does not change: every
        path meets the fidelity bar against fp32 or was forced by the user."""
        from cxr_assets.text.encode_paths import ComputePath

        self.compute = ComputePath(name)
        self.model = model.eval()

    def __repr__(self) -> str:
        return (
            f"TextEncoder(base_model={self.base_model!r}, dim={self.dim}, pooling={self.pooling!r}, "
            f"max_length={self.max_length}, bidirectional={self.bidirectional}, "
            f"postprocess={self.postprocess is not None}, "
            f"query_adapter={self.query_adapter is not None}, content_hash={self._content_hash or '?'})"
        )

    def settings(self) -> dict[str, Any]:
        """The encoding settings stored in encoder_config.json (without the hash)."""
        settings = {
            "pooling": self.pooling,
            "instruction": self.instruction,
            "separator": self.separator,
            "max_length": self.max_length,
            "base_model": self.base_model,
            "dim": self.dim,
            "bidirectional": self.bidirectional,
        }
        if self.pooling == "mean_and_latent_attention":  # other modes keep their stored hashes
            settings["mean_weight"] = self.mean_weight
        if self.mean_taps != LAST_LAYER:  # so do encoders that pool the last layer's mean
            settings["mean_layers"] = list(self.mean_taps.layers)
            settings["mean_skip_first_token"] = self.mean_taps.skip_first_token
        return settings

    @property
    def tapped_layers(self) -> tuple[int, ...]:
        """The hidden states the mean part reads besides the last (an exported body's outputs)."""
        return self.mean_taps.layers if self.mean_taps.needs_hidden_states else ()

    @property
    def content_hash(self) -> str:
        """16-hex id of the weights + tokenizer + settings (computed lazily for a raw base model)."""
        if self._content_hash is None:
            if self._source_dir is None:
                raise ValueError(
                    "content_hash is unknown for an in-memory encoder: save_pretrained() it first"
                )
            self._content_hash = folder_hash(self._source_dir, self.settings())
        return self._content_hash

    @property
    def document_hash(self) -> str:
        """16-hex id of what `encode` computes: the content hash without the query adapter (which
        `encode_queries` alone applies), so refitting the adapter keeps cached report embeddings.
        Folders saved before it was stored, and releases, fall back to `content_hash`."""
        return self._document_hash or self.content_hash

    # ------------------------------------------------------------------ construction / storage
    @classmethod
    def from_base(
        cls,
        model_path: Path,
        pooling: str = "mean",
        instruction: str = "",
        max_length: int = 128,
        dtype: str = "float32",
        pooling_head: Any = None,
        bidirectional: bool = True,
        mean_taps: Any = None,
    ) -> TextEncoder:
        """An un-adapted baseline: the base LLM (made bidirectional unless told), nothing trained.
        mean_taps: the layers its mean reads (pooling.MeanTaps; default the last)."""
        from transformers import AutoModel, AutoTokenizer

        from cxr_assets.text.base_model import torch_dtype

        model_path = Path(model_path)
        if not (model_path / "config.json").is_file():
            raise FileNotFoundError(
                f"{model_path} is not a Hugging Face model folder (no config.json); "
                "use resolve_base_model() to turn a spec or .gguf into one"
            )
        model = AutoModel.from_pretrained(
            model_path, dtype=torch_dtype(dtype), attn_implementation="sdpa"
        )
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        return cls(
            model,
            tokenizer,
            pooling,
            instruction,
            max_length,
            base_model=str(model_path),
            source_dir=model_path,
            pooling_head=pooling_head,
            bidirectional=bidirectional,
            mean_taps=mean_taps,
        )

    @classmethod
    def from_pretrained(
        cls, path: Path, dtype: str | None = None, threads: int | None = None
    ) -> TextEncoder:
        """Load a folder written by save_pretrained (threads: sets torch's global thread count)."""
        import torch
        from transformers import AutoModel, AutoTokenizer

        from cxr_assets.text.base_model import torch_dtype

        path = Path(path)
        config_file = path / ENCODER_CONFIG
        if not config_file.is_file():
            from cxr_assets.text.llm2vec4cxr import is_llm2vec4cxr_folder

            if is_llm2vec4cxr_folder(path):
                return load_llm2vec4cxr(path, dtype=dtype or "float32", threads=threads)
            raise FileNotFoundError(
                f"{path} is neither a saved TextEncoder (no {ENCODER_CONFIG}) nor an "
                "LLM2Vec4CXR checkpoint (no latent_attn.* weights)"
            )
        stored = json.loads(config_file.read_text())
        if stored.get("format") == "release":
            from cxr_assets.text.release import read_release

            encoder = cls(**read_release(path, dtype=dtype, threads=threads))
            if encoder.dim != stored.get("dim"):
                raise ValueError(f"{path}: dim {stored.get('dim')} != the encoder's {encoder.dim}")
            return encoder
        missing = [k for k in (*_HASH_FIELDS, "content_hash") if k not in stored]
        if missing:
            raise ValueError(f"{config_file} lacks keys {missing}")
        if threads is not None:
            if threads < 1:
                raise ValueError(f"threads must be >= 1, got {threads}")
            torch.set_num_threads(threads)
        if dtype is None:
            saved = json.loads((path / "config.json").read_text()).get("dtype", "float32")
            dtype = saved if saved in ("float32", "bfloat16", "float16") else "float32"
        model = AutoModel.from_pretrained(
            path, dtype=torch_dtype(dtype), attn_implementation="sdpa"
        )
        tokenizer = AutoTokenizer.from_pretrained(path)
        head = None
        if stored["pooling"] in HEAD_MODES:
            head = load_pooling_head(path / POOLING_HEAD, int(model.config.hidden_size))
        encoder = cls(
            model,
            tokenizer,
            stored["pooling"],
            stored["instruction"],
            stored["max_length"],
            base_model=stored["base_model"],
            content_hash=stored["content_hash"],
            document_hash=stored.get("document_hash"),
            source_dir=path,
            pooling_head=head,
            bidirectional=bool(stored.get("bidirectional", True)),
            postprocess=load_postprocess(path),
            mean_weight=float(stored.get("mean_weight", 0.5)),
            mean_taps=stored_mean_taps(stored),
            query_adapter=load_query_adapter(path),
        )
        if encoder.dim != stored["dim"]:
            raise ValueError(
                f"{config_file}: dim {stored['dim']} does not match the encoder's {encoder.dim}"
            )
        return encoder

    def save_pretrained(self, path: Path) -> None:
        """Write weights, tokenizer and encoder_config.json atomically (tmp folder + rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            tmp.mkdir()
            self.model.save_pretrained(tmp)
            # A fast tokenizer keeps the truncation/padding of its last call in tokenizer.json;
            # clear it so the saved bytes (and the content hash) do not depend on usage history.
            backend = getattr(self.tokenizer, "backend_tokenizer", None)
            if backend is not None:
                backend.no_truncation()
                backend.no_padding()
            self.tokenizer.save_pretrained(tmp)
            if self.pooling_head is not None and self.pooling in HEAD_MODES:
                save_pooling_head(self.pooling_head, tmp / POOLING_HEAD)
            if self.postprocess is not None:
                self.postprocess.save(tmp / POSTPROCESS_FILE)
            if self.query_adapter is not None:
                self.query_adapter.save(tmp / QUERY_ADAPTER_FILE)
            settings = self.settings()
            content_hash = folder_hash(tmp, settings)
            document_hash = (content_hash if self.query_adapter is None else
                             folder_hash(tmp, settings, exclude=(QUERY_ADAPTER_FILE,)))
            (tmp / ENCODER_CONFIG).write_text(json.dumps(
                {**settings, "content_hash": content_hash, "document_hash": document_hash},
                indent=2) + "\n")
            replace_folder(tmp, path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        self._content_hash, self._document_hash = content_hash, document_hash
        self._source_dir = path

    # ------------------------------------------------------------------ encoding
    def encode(
        self,
        texts: list[str],
        instruction: str | None = None,
        batch_size: int = 16,
        progress: bool = True,
        postprocess: bool = True,
        max_batch_tokens: int | None = DEFAULT_BATCH_TOKENS,
    ) -> np.ndarray:
        """Embed texts -> float32 [N, dim], in input order, not L2-normalised.

        instruction=None means no instruction (the stored default is `self.instruction`).
        The fitted post-processing (centering + scaling), when the encoder has one, is applied
        unless postprocess=False: then the raw pooled output is returned (what fitting needs; for
        'mean_and_latent_attention', mean | head side by side, see `finish`).
        Batches are formed from texts sorted by token length (`length_batches`): at most
        batch_size texts and max_batch_tokens padded tokens each, so little compute goes to
        padding and long texts do not make a batch's memory explode. The encoder's compute path
        (`self.compute`, see cxr_assets/text/encode_paths.py; fp32 unless `use_path` or
        `request_path` chose another) decides the precision the forward runs in.
        """
        import torch
        from tqdm.auto import tqdm

        from cxr_assets.text.pooling import embed_batch
        from cxr_assets.text.tokenization import tokenize_with_instruction

        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, not a single string")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"texts[{i}] is empty or not a string: there is nothing to embed")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        if self._path_request is not None:  # cleared first: the probe encodes through here too
            from cxr_assets.text.encode_paths import choose_path

            requested, probe_batch = self._path_request
            self._path_request = None
            self.path_choice = choose_path(self, texts, requested, probe_batch)
        lengths = [
            len(ids)
            for ids in self.tokenizer(texts, truncation=True, max_length=self.max_length)[
                "input_ids"
            ]
        ]
        chunks = length_batches(lengths, batch_size, max_batch_tokens)
        self.model.eval()
        with torch.inference_mode(), self.compute.context():
            for chunk in tqdm(chunks, desc="encode", disable=not progress):
                batch = tokenize_with_instruction(
                    self.tokenizer, [texts[i] for i in chunk], instruction, self.max_length
                )
                out[chunk] = embed_batch(self.model, batch, self.pooling, self.pooling_head,
                                         self.mean_taps).float().cpu().numpy()
        # A NaN written to the embeddings table would poison every search and CLIP step after it
        # (a kernel that misbehaves on this CPU, e.g. inductor's bf16 code under an ISA cap).
        broken = np.flatnonzero(~np.isfinite(out).all(axis=1))
        if broken.size:
            raise RuntimeError(
                f"encode path {self.compute.name!r} produced non-finite embeddings for "
                f"{broken.size} of {len(texts)} texts (first: texts[{broken[0]}] = "
                f"{texts[broken[0]][:80]!r}); force text_encoder.encode_path: fp32")
        return self.finish(out) if postprocess else out

    def encode_queries(self, texts: list[str], batch_size: int = 16, progress: bool = False
                       ) -> np.ndarray:
        """Embed search queries (short finding phrases) for comparison with `encode`d reports:
        `encode`, then the fitted query adapter when the encoder has one (text/query_adapter.py).
        Only the query side moves, so stored report embeddings stay valid."""
        vectors = self.encode(texts, batch_size=batch_size, progress=progress)
        return self.query_adapter(vectors) if self.query_adapter is not None else vectors

    def finish(self, raw: np.ndarray, postprocess: bool = True) -> np.ndarray:
        """Raw pooled output [N, raw dim] -> the embedding `encode` returns: the fitted
        post-processing (unless postprocess=False) and, for 'mean_and_latent_attention', the
        weighted combination of the mean and head parts (cxr_assets.text.pooling.mean_and_head)."""
        pp = self.postprocess if postprocess else None
        if self.pooling != "mean_and_latent_attention":
            return pp(raw) if pp is not None else np.asarray(raw, dtype=np.float32)
        import torch

        from cxr_assets.text.pooling import mean_and_head

        center, scale = (None, None) if pp is None else (torch.from_numpy(pp.mean),
                                                          torch.from_numpy(pp.scale))
        raw_t = torch.from_numpy(np.ascontiguousarray(raw, dtype=np.float32))
        return mean_and_head(raw_t, self.mean_weight, center, scale,
                             head_width=self.hidden_size).numpy()



def load_llm2vec4cxr(
    path: Path,
    dtype: str = "float32",
    threads: int | None = None,
    instruction: str = "",
    max_length: int | None = None,
    num_heads: int | None = None,
) -> TextEncoder:
    """A TextEncoder (latent-attention pooling) from an LLM2Vec4CXR checkpoint folder (read by
    `cxr_assets.text.llm2vec4cxr.read_llm2vec4cxr`; max_length defaults to the published 512).

    num_heads: the head count of the latent attention (not recoverable from the weights);
    default from `llm2vec4cxr_config.json` / `latent_attention_config.json` if present, else 8.
    """
    from cxr_assets.text.llm2vec4cxr import DEFAULT_MAX_LENGTH, read_llm2vec4cxr

    return TextEncoder(**read_llm2vec4cxr(
        path, dtype=dtype, threads=threads, instruction=instruction,
        max_length=DEFAULT_MAX_LENGTH if max_length is None else max_length, num_heads=num_heads,
    ))
