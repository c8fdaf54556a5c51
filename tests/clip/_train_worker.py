"""Subprocess entry for the DDP and kill-and-resume tests (run as a script, or under torchrun).

argv: spec.json. The spec names the pairs (.npz with paths, text and optionally positive-group
keys train_groups / val_groups), ClipParams overrides,
the seed, an optional checkpoint dir, an optional step at which the process SIGKILLs itself,
and where rank 0 writes the final weights (safetensors).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import numpy as np


def main(spec_file: str) -> None:
    import torch
    from safetensors.torch import save_file

    from cxr_assets.clip.train import train_clip
    from cxr_assets.config import ClipParams

    spec = json.loads(Path(spec_file).read_text())
    torch.set_num_threads(1)
    data = np.load(spec["pairs"])
    kill_at = spec.get("kill_at_step")

    def log_fn(step: int, metrics: dict) -> None:
        # A hard crash: no exception handler, no atexit, no flush runs after this.
        if kill_at is not None and "train_loss" in metrics and step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    result = train_clip(
        [Path(p) for p in data["train_paths"]], data["train_text"],
        [Path(p) for p in data["val_paths"]], data["val_text"],
        params=ClipParams(**spec["params"]), text_encoder_hash="h", seed=spec["seed"],
        progress=False, log_fn=log_fn,
        checkpoint_dir=Path(spec["checkpoint_dir"]) if spec.get("checkpoint_dir") else None,
        # Optional positive-group keys (clip.positives other than paired).
        train_groups=data["train_groups"].tolist() if "train_groups" in data else None,
        val_groups=data["val_groups"].tolist() if "val_groups" in data else None,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        state = {k: v.contiguous() for k, v in result.model.state_dict().items()}
        save_file(state, spec["out"])
        Path(spec["out"] + ".json").write_text(
            json.dumps({"world_size": result.world_size, "history": result.history})
        )
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
