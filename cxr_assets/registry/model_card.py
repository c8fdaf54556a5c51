"""The clip_model's model card and its lineage: git commit, Dagster run, dvc.lock hashes."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from cxr_assets.config import Params
from cxr_assets.paths import ProjectPaths


def git_sha(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=False)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def dvc_lock_hashes(root: Path, stage: str = "clip_model") -> dict[str, str]:
    """md5 of each dependency of `stage` recorded in dvc.lock ({} without a lock file)."""
    import yaml

    lock = root / "dvc.lock"
    if not lock.is_file():
        return {}
    try:
        entry = (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).get(stage, {})
    except yaml.YAMLError:
        return {}
    return {d["path"]: d.get("md5", "") for d in entry.get("deps", []) if "path" in d}


def clip_model_card(params: Params, paths: ProjectPaths, encoder_hash: str, result, n_train: int,
                    n_val: int) -> str:
    """MODEL_CARD.md of a trained CLIP model (`result`: clip.train.ClipTrainResult)."""
    c = params.clip
    locked = dvc_lock_hashes(paths.root)
    lock_lines = [f"- dvc.lock `{k}`: `{v}`" for k, v in sorted(locked.items())] or [
        "- dvc.lock: no clip_model entry yet"]
    return "\n".join([
        f"# {params.registry.model_name}: chest X-ray image-report CLIP model",
        "",
        "Image tower: timm `{}` ({} px, grayscale); text tower: {} adapted LLM encoder "
        "`{}` with a {} adapter; shared dimension {}; loss `{}` (in-batch positives: {}).".format(
            c.vision_backbone, c.image_size,
            "frozen" if c.text_tower == "cached" else
            f"online LoRA-trained (r={c.text_lora.r}, merged into clip_model/text_encoder)",
            params.text_encoder.base_model,
            "LayerNorm + Linear" if c.text_adapter == "linear" else "residual MLP",
            c.embed_dim, c.loss, c.positives),
        "",
        "## Lineage",
        f"- git commit: `{git_sha(paths.root)}`",
        f"- Dagster run: `{os.environ.get('DAGSTER_RUN_ID', 'n/a (CLI / dvc)')}`",
        f"- text encoder hash: `{encoder_hash}`",
        f"- training pairs: {n_train}, validation pairs: {n_val}",
        *lock_lines,
        "",
        "## Training",
        (f"- epochs: {c.epochs}, batch: {c.batch_size} (micro-batch "
         f"{c.micro_batch_size or 'none'}), processes: {result.world_size}, "
         f"precision: {c.precision}, lr: {c.lr}"),
        (f"- steps: {result.steps} (resumed from step {result.resumed_from_step}), "
         f"best epoch: {result.best_epoch} (kept by clip.select_best: {c.select_best})"),
        f"- validation loss of that epoch: {result.best_val_loss:.4f}",
        "",
        "Evaluation metrics are added to this run by the evaluation_report asset.",
    ])
