"""The files of a saved encoder folder (full or release): their names, the content hash, and the
latent-attention head and post-processing readers/writers. Below both `encoder` and `release`,
which each read and write such folders.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

ENCODER_CONFIG = "encoder_config.json"
POOLING_HEAD = "pooling_head.safetensors"
_HASH_FIELDS = ("pooling", "instruction", "separator", "max_length", "base_model", "dim")
# Settings added later default to their old behaviour when an older folder lacks them.
_OPTIONAL_FIELDS = {"bidirectional": True, "mean_weight": 0.5, "mean_layers": [-1],
                    "mean_skip_first_token": False}


def folder_hash(folder: Path, settings: dict[str, Any], exclude: tuple[str, ...] = ()) -> str:
    """Short sha256 (16 hex) over every top-level file of `folder` (but encoder_config.json and
    the names in `exclude`) and `settings`."""
    digest = hashlib.sha256()
    files = sorted(
        p
        for p in Path(folder).iterdir()
        if p.is_file() and p.name != ENCODER_CONFIG and p.name not in exclude
        and not p.name.startswith(".")
    )
    for file in files:
        digest.update(file.name.encode() + b"\0")
        with open(file, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
        digest.update(b"\0")
    hashed = {k: settings[k] for k in _HASH_FIELDS}
    hashed.update({k: settings[k] for k, default in _OPTIONAL_FIELDS.items()
                   if settings.get(k, default) != default})  # old hashes stay valid
    digest.update(json.dumps(hashed, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def load_postprocess(folder: Path) -> Any:
    from cxr_assets.text.postprocess import POSTPROCESS_FILE, EmbeddingPostprocess

    file = Path(folder) / POSTPROCESS_FILE
    return EmbeddingPostprocess.load(file) if file.is_file() else None


def save_pooling_head(head: Any, file: Path) -> None:
    """Write a latent-attention head as safetensors; its sizes go into the file's metadata."""
    from safetensors.torch import save_file

    from cxr_assets.text.postprocess import single_key_metadata

    tensors = {k: v.detach().contiguous().cpu() for k, v in head.state_dict().items()}
    meta = single_key_metadata("pooling_head", {"num_latents": head.num_latents,
                                                "num_heads": head.num_heads,
                                                "hidden_size": head.hidden_size})
    save_file(tensors, str(file), metadata=meta)


def load_pooling_head(file: Path, hidden_size: int) -> Any:
    """Read a head written by save_pooling_head (sizes from its metadata), in float32."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from cxr_assets.text.pooling import make_latent_attention
    from cxr_assets.text.postprocess import read_single_key_metadata

    file = Path(file)
    if not file.is_file():
        raise FileNotFoundError(f"{file}: latent-attention pooling head missing")
    with safe_open(str(file), "pt") as handle:
        meta = read_single_key_metadata(handle.metadata(), "pooling_head")
    try:
        latents, heads = int(meta["num_latents"]), int(meta["num_heads"])
    except KeyError as error:
        raise ValueError(f"{file}: metadata lacks {error} (not written by save_pooling_head)") from None
    head = make_latent_attention(hidden_size, latents, heads)
    head.load_state_dict({k: v.float() for k, v in load_file(str(file)).items()})
    return head.eval()


def stored_mean_taps(stored: dict[str, Any]) -> Any:
    """The MeanTaps of an encoder_config.json (encoders without the keys pool the last layer)."""
    from cxr_assets.text.pooling import MeanTaps

    return MeanTaps(tuple(int(layer) for layer in stored.get("mean_layers", [-1])),
                    bool(stored.get("mean_skip_first_token", False)))
