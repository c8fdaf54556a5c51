"""Reading the public LLM2Vec4CXR checkpoint layout (the TextEncoder is built from it by
`cxr_assets.text.encoder.load_llm2vec4cxr`, which `TextEncoder.from_pretrained` calls).

The published checkpoint (lukeingawesome/llm2vec4cxr) is a `LLM2Vec4CXRModel`: a Llama bi-model
(`LlamaBiModel`, i.e. a LlamaModel body whose weights are saved without a `model.` prefix) plus a
`latent_attn` submodule (NV-Embed latent attention: `latents` [R, D], `multihead_attn.*` an
nn.MultiheadAttention, `mlp.0` / `mlp.2` Linear layers). Its config.json says
`architectures: ["LLM2Vec4CXRModel"]`, `model_type: "llama"`. We read the safetensors ourselves
(single file or sharded), split body and `latent_attn.*` tensors, load the body into a plain
transformers LlamaModel (made bidirectional by TextEncoder) and the rest into our batched head.

Some exports name the attention `cross_attn` or `attn` instead of `multihead_attn`, or keep a
`model.` prefix on the body; both are accepted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

LATENT_PREFIX = "latent_attn."
ARCHITECTURE = "LLM2Vec4CXRModel"
# Defaults of the published model (HF card / modeling_llm2vec4cxr.py).
DEFAULT_HEADS = 8
DEFAULT_MAX_LENGTH = 512
_ATTENTION_ALIASES = ("cross_attn.", "attn.")


def _weight_files(path: Path) -> list[Path]:
    """The checkpoint's safetensors files (sharded via model.safetensors.index.json or single)."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [path / name for name in names]
    single = path / "model.safetensors"
    return [single] if single.is_file() else []


def _tensor_names(path: Path) -> list[str]:
    from safetensors import safe_open

    names: list[str] = []
    for file in _weight_files(path):
        with safe_open(str(file), "pt") as handle:
            names.extend(handle.keys())
    return names


def is_llm2vec4cxr_folder(path: Path) -> bool:
    """True for a folder holding a config.json and safetensors with `latent_attn.*` weights."""
    path = Path(path)
    if not (path / "config.json").is_file():
        return False
    architectures = json.loads((path / "config.json").read_text()).get("architectures") or []
    if ARCHITECTURE in architectures:
        return True
    from safetensors import SafetensorError

    try:
        return any(name.startswith(LATENT_PREFIX) for name in _tensor_names(path))
    except (OSError, SafetensorError):  # unreadable weights: not this layout (caller reports)
        return False


def _split_state(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(body tensors with LlamaModel names, latent-attention tensors with our head's names)."""
    from safetensors.torch import load_file

    body: dict[str, Any] = {}
    head: dict[str, Any] = {}
    for file in _weight_files(path):
        for name, tensor in load_file(str(file)).items():
            if name.startswith(LATENT_PREFIX):
                key = name[len(LATENT_PREFIX) :]
                for alias in _ATTENTION_ALIASES:
                    if key.startswith(alias):
                        key = "multihead_attn." + key[len(alias) :]
                head[key] = tensor
            elif name.startswith("lm_head."):
                continue  # an encoder has no use for the LM head
            else:
                body[name.removeprefix("model.")] = tensor
    return body, head


def read_llm2vec4cxr(
    path: Path,
    dtype: str = "float32",
    threads: int | None = None,
    instruction: str = "",
    max_length: int = DEFAULT_MAX_LENGTH,
    num_heads: int | None = None,
) -> dict[str, Any]:
    """The TextEncoder arguments (body, tokenizer, latent-attention head, settings) of an
    LLM2Vec4CXR checkpoint folder: `TextEncoder(**read_llm2vec4cxr(path))`.

    num_heads: the head count of the latent attention (not recoverable from the weights);
    default from `llm2vec4cxr_config.json` / `latent_attention_config.json` if present, else 8.
    """
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from cxr_assets.text.base_model import torch_dtype
    from cxr_assets.text.pooling import make_latent_attention

    path = Path(path)
    if not _weight_files(path):
        raise FileNotFoundError(f"{path}: no model.safetensors (or sharded index) to load")
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    raw_config = json.loads((path / "config.json").read_text())
    if raw_config.get("model_type") not in ("llama", None):
        raise ValueError(
            f"{path}: LLM2Vec4CXR layout expects a Llama body, config.json has model_type "
            f"{raw_config.get('model_type')!r}"
        )
    config = AutoConfig.from_pretrained(path)
    config.architectures = ["LlamaModel"]
    body_state, head_state = _split_state(path)
    if "latents" not in head_state:
        raise ValueError(f"{path}: no latent_attn.latents tensor: not an LLM2Vec4CXR checkpoint")

    model = AutoModel.from_config(config, attn_implementation="sdpa")
    missing, unexpected = model.load_state_dict(body_state, strict=False)
    # Rotary inverse frequencies are buffers computed from the config, never stored.
    missing = [k for k in missing if "rotary_emb" not in k]
    if missing or unexpected:
        raise ValueError(
            f"{path}: body weights do not fit a {config.model_type} model: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    model = model.to(torch_dtype(dtype))

    extra = {}
    for name in ("llm2vec4cxr_config.json", "latent_attention_config.json"):
        if (path / name).is_file():
            extra.update(json.loads((path / name).read_text()))
    heads = int(num_heads or extra.get("num_heads", DEFAULT_HEADS))
    latents = head_state["latents"]
    head = make_latent_attention(int(latents.shape[1]), int(latents.shape[0]), heads)
    head.load_state_dict({k: v.float() for k, v in head_state.items()})

    tokenizer = AutoTokenizer.from_pretrained(path)
    return {
        "model": model,
        "tokenizer": tokenizer,
        "pooling": "latent_attention",
        "instruction": instruction or extra.get("instruction", ""),
        "max_length": int(extra.get("max_length", max_length)),
        "base_model": f"llm2vec4cxr:{path}",
        "source_dir": path,
        "pooling_head": head,
    }


def write_tiny_llm2vec4cxr(
    out_dir: Path, tokenizer_from: Path, hidden_size: int = 64, num_latents: int = 16, seed: int = 0
) -> Path:
    """A tiny random checkpoint in the LLM2Vec4CXR layout (for tests): bare Llama body names,
    `latent_attn.*` tensors, `architectures: [LLM2Vec4CXRModel]`, tokenizer files."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, LlamaConfig, LlamaModel

    from cxr_assets.text.pooling import make_latent_attention

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=1024, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    body = LlamaModel(config)
    head = make_latent_attention(hidden_size, num_latents, DEFAULT_HEADS, seed=seed + 1)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in body.state_dict().items() if "rotary_emb" not in k}
    tensors.update({LATENT_PREFIX + k: v.contiguous() for k, v in head.state_dict().items()})
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    config.architectures = [ARCHITECTURE]
    config.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
