"""Resumable CLIP training checkpoints: `last/` every N steps, `best/` at each better epoch.

A checkpoint folder holds `model.safetensors` (weights, bit-exact), optionally
`ema.safetensors`, and `state.pt` with the optimizer, LR scheduler, grad scaler, RNG states, the
global step (the data position: batch order and augmentation are pure functions of seed and
step) and the bookkeeping needed to continue the history. Folders are written to a temporary
sibling and swapped in with renames, so a kill at any instant leaves either the old or the new
checkpoint, never a torn one.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from cxr_assets.fileio import dumps_json, replace_folder

LAST, BEST = "last", "best"
MODEL_FILE, EMA_FILE, STATE_FILE, META_FILE = (
    "model.safetensors", "ema.safetensors", "state.pt", "meta.json"
)


def fingerprint(payload: dict[str, Any]) -> str:
    """Stable hash of what must match for a checkpoint to be resumable (params, data)."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage; clone to contiguous, CPU copies.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}


def save_checkpoint(
    root: Path,
    name: str,
    model: torch.nn.Module,
    state: dict[str, Any] | None,
    meta: dict[str, Any],
    ema: torch.nn.Module | None = None,
) -> Path:
    """Atomically (re)write `root/name` and return it."""
    from safetensors.torch import save_file

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / name
    tmp = root / f".{name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file(_tensors(model), str(tmp / MODEL_FILE))
    if ema is not None:
        save_file(_tensors(ema), str(tmp / EMA_FILE))
    if state is not None:
        torch.save(state, tmp / STATE_FILE)
    (tmp / META_FILE).write_text(dumps_json(meta))
    replace_folder(tmp, final, aside=root / f".{name}.old")  # find_checkpoint looks there too
    return final


def find_checkpoint(root: Path | None, name: str) -> Path | None:
    """The checkpoint folder if complete; a crash between the two renames leaves `.name.old`."""
    if root is None:
        return None
    root = Path(root)
    for candidate in (root / name, root / f".{name}.old"):
        if (candidate / META_FILE).is_file() and (candidate / MODEL_FILE).is_file():
            return candidate
    return None


def read_meta(folder: Path) -> dict[str, Any]:
    return json.loads((Path(folder) / META_FILE).read_text())


def load_weights(module: torch.nn.Module, file: Path) -> None:
    from safetensors.torch import load_file

    device = next(iter(module.state_dict().values())).device
    module.load_state_dict(load_file(str(file), device=str(device)), strict=True)


def load_state(folder: Path) -> dict[str, Any]:
    # Our own file (optimizer tensors, RNG byte tensors, plain python): not arbitrary pickles.
    return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=False)
