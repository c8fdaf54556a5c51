"""torchrun entry point of the clip_model stage: `python -m cxr_assets.clip.launch SPEC.json`.

The stage (`train_with_torchrun`, its launcher a subprocess or the Dagster Pipes client) writes
a spec with the validated params, the project root and an output folder, then starts
`torchrun --nproc_per_node N -m cxr_assets.clip.launch`.
Every rank trains; rank 0 writes the best model (`save_clip_model`), `result.json` (history,
best epoch, steps) and `steps.jsonl` (per-step metrics) into the output folder. When started by
Dagster Pipes, rank 0 also streams log lines and metrics back to the Dagster run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Launcher = Callable[[list[str], dict[str, str]], None]


def torchrun_command(spec_file: Path, nproc: int) -> list[str]:
    """The command that runs this module on `nproc` local processes."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}", "-m", "cxr_assets.clip.launch", str(spec_file)]


def write_spec(params, root: Path, out_dir: Path, spec_file: Path) -> Path:
    spec = {"params": params.model_dump(mode="json"), "root": str(root), "out": str(out_dir)}
    spec_file.parent.mkdir(parents=True, exist_ok=True)
    spec_file.write_text(json.dumps(spec, indent=2))
    return spec_file


def _subprocess_launcher(command: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(command, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"torchrun CLIP training failed with exit code {done.returncode}: "
                           f"{' '.join(command)}")


def train_with_torchrun(params, paths, launcher: Launcher | None = None):
    """Run `clip.distributed.nproc_per_node` ranks with torchrun and read back rank 0's model.

    Returns (ClipTrainResult, per-step metrics). `launcher(command, env)` runs the command;
    the Dagster asset passes one that goes through Dagster Pipes.
    """
    from cxr_assets.clip.model import load_clip_model
    from cxr_assets.clip.train import ClipTrainResult

    work = Path(tempfile.mkdtemp(prefix="clip_torchrun_", dir=paths.artifacts_dir))
    spec = write_spec(params, paths.root, work / "out", work / "spec.json")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]),
                                                      env.get("PYTHONPATH", "")]))
    env.setdefault("OMP_NUM_THREADS", str(params.clip.threads))
    (launcher or _subprocess_launcher)(
        torchrun_command(spec, params.clip.distributed.nproc_per_node), env)
    out = work / "out"
    if not (out / "result.json").is_file():
        raise RuntimeError(f"torchrun CLIP training wrote no result into {out}")
    summary = json.loads((out / "result.json").read_text())
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines() if line]
    result = ClipTrainResult(
        model=load_clip_model(out), history=summary["history"],
        best_epoch=summary["best_epoch"], best_val_loss=summary["best_val_loss"],
        steps=summary["steps"], seconds=summary["seconds"],
        resumed_from_step=summary["resumed_from_step"], world_size=summary["world_size"])
    shutil.rmtree(work, ignore_errors=True)
    return result, steps


@dataclass
class TrainedClip:
    """A finished clip_model training: the result, the pairs it used, the report encoder's
    hash and the per-step metrics (rows with a `step` key)."""

    result: Any  # clip.train.ClipTrainResult
    train: Any  # polars DataFrame of the training pairs
    val: Any
    encoder_hash: str
    step_metrics: list[dict]


def train_clip_model(params, paths, progress: bool = True,
                     launcher: Launcher | None = None) -> TrainedClip:
    """Train on the catalog's pairs: under torchrun when clip.distributed.nproc_per_node > 1
    (unless this process already is a torchrun rank), else in this process."""
    from cxr_assets.clip.from_catalog import report_encoder_hash, split_pairs, train_from_catalog

    step_metrics: list[dict] = []
    if params.clip.distributed.nproc_per_node > 1 and "WORLD_SIZE" not in os.environ:
        train, val = split_pairs(paths)
        encoder_hash = report_encoder_hash(paths)
        result, step_metrics = train_with_torchrun(params, paths, launcher)
    else:
        result, train, val, encoder_hash = train_from_catalog(
            params, paths, progress,
            log_fn=lambda step, metrics: step_metrics.append({"step": step, **metrics}))
    return TrainedClip(result, train, val, encoder_hash, step_metrics)


def _pipes():
    """A Dagster Pipes context when launched by PipesSubprocessClient on rank 0, else None."""
    if os.environ.get("RANK", "0") != "0" or "DAGSTER_PIPES_CONTEXT" not in os.environ:
        return contextlib.nullcontext(None)
    from dagster_pipes import open_dagster_pipes

    return open_dagster_pipes()


def main(spec_file: str) -> None:
    from cxr_assets.clip.from_catalog import train_from_catalog
    from cxr_assets.clip.model import save_clip_model
    from cxr_assets.config import parse_params
    from cxr_assets.paths import ProjectPaths

    spec = json.loads(Path(spec_file).read_text())
    params = parse_params(spec["params"], spec_file)
    paths = ProjectPaths.from_params(params, Path(spec["root"]))
    out = Path(spec["out"])
    rank = int(os.environ.get("RANK", "0"))
    with _pipes() as pipes:
        steps_file = None
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            steps_file = (out / "steps.jsonl").open("w")

        def log_fn(step: int, metrics: dict[str, Any]) -> None:
            if steps_file is None:
                return
            steps_file.write(json.dumps({"step": step, **metrics}) + "\n")
            steps_file.flush()
            if pipes is not None:
                shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
                pipes.log.info(f"step {step}: {shown}")

        result, _, _, _ = train_from_catalog(params, paths, progress=rank == 0, log_fn=log_fn)
        if rank == 0:
            steps_file.close()
            save_clip_model(result.model, out)
            summary = {"history": result.history, "best_epoch": result.best_epoch,
                       "best_val_loss": result.best_val_loss, "steps": result.steps,
                       "seconds": result.seconds, "world_size": result.world_size,
                       "resumed_from_step": result.resumed_from_step}
            (out / "result.json").write_text(json.dumps(summary))
            if pipes is not None:
                pipes.report_custom_message({"world_size": result.world_size,
                                             "steps": result.steps,
                                             "best_val_loss": result.best_val_loss})
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
