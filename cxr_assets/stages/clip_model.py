"""clip_model: train the image tower against the cached report embeddings (LLM2CLIP recipe).

A timm backbone (grayscale input, random init unless a local weights file is given) and a
trainable adapter on the frozen text embeddings, a contrastive loss (InfoNCE, SigLIP or the
reference-compatible raw-scale mode) with GradCache for large effective batches. With
`clip.distributed.nproc_per_node > 1` training runs under torchrun (a subprocess here, Dagster
Pipes from the asset). Checkpoints in artifacts/clip_checkpoints make an interrupted run resume.
The run is logged to MLflow (params, per-step metrics, system metrics, model card) and
registered as a pyfunc model version with alias `challenger`.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import polars as pl

from cxr_assets.clip.from_catalog import report_encoder_hash, split_pairs, train_from_catalog
from cxr_assets.clip.launch import Launcher, train_with_torchrun
from cxr_assets.config import Params
from cxr_assets.fileio import flatten
from cxr_assets.paths import ProjectPaths
from cxr_assets.stages.base import (
    Markdown,
    StageResult,
    atomic_dir,
    png_markdown,
    require,
    write_json,
)


def git_sha(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=False)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def dvc_lock_hashes(root: Path) -> dict[str, str]:
    """md5 of each clip_model dependency recorded in dvc.lock ({} without a lock file)."""
    import yaml

    lock = root / "dvc.lock"
    if not lock.is_file():
        return {}
    try:
        stage = (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).get("clip_model", {})
    except yaml.YAMLError:
        return {}
    return {d["path"]: d.get("md5", "") for d in stage.get("deps", []) if "path" in d}


def model_card(params: Params, paths: ProjectPaths, encoder_hash: str, result, n_train: int,
               n_val: int) -> str:
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


def run(params: Params, paths: ProjectPaths, progress: bool = True,
        launcher: Launcher | None = None) -> StageResult:
    import mlflow

    from cxr_assets.clip.model import save_clip_model
    from cxr_assets.evaluate.plots import plot_training_curves
    from cxr_assets.registry.pyfunc_model import log_clip_pyfunc
    from cxr_assets.registry.tracking import CHALLENGER, configure_mlflow

    require("clip_model", {
        "study_images": [paths.study_images_table],
        "study_splits": [paths.splits_table],
        "report_embeddings": [paths.report_embeddings_table],
        "text_encoder": [paths.text_encoder_dir / "encoder_config.json"],
    })
    client = configure_mlflow(params, paths)
    # The run spans training, so MLflow's system metrics (CPU, memory, GPU) cover it.
    with mlflow.start_run(run_name="clip_model", log_system_metrics=True) as run:
        step_metrics: list[dict] = []
        if params.clip.distributed.nproc_per_node > 1 and "WORLD_SIZE" not in os.environ:
            train, val = split_pairs(paths)
            encoder_hash = report_encoder_hash(paths)
            result, step_metrics = train_with_torchrun(params, paths, launcher)
        else:
            result, train, val, encoder_hash = train_from_catalog(
                params, paths, progress,
                log_fn=lambda step, metrics: step_metrics.append({"step": step, **metrics}))

        with atomic_dir(paths.clip_model_dir) as out:
            save_clip_model(result.model, out)
            write_json(out / "history.json", result.history)
            curve = plot_training_curves(result.history, out / "training_curves.png")
            card = model_card(params, paths, encoder_hash, result, train.height, val.height)
            (out / "MODEL_CARD.md").write_text(card + "\n")

        training = paths.training_report_dir
        training.mkdir(parents=True, exist_ok=True)
        write_json(training / "clip_metrics.json", {
            "best_epoch": result.best_epoch, "best_val_loss": round(result.best_val_loss, 6),
            "final_train_loss": round(result.history[-1]["train_loss"], 6),
            "steps": result.steps,
        })
        pl.DataFrame(result.history).write_csv(training / "clip_history.csv")

        mlflow.log_params(flatten(params.clip.model_dump(), "clip"))  # clip.checkpoint.every_n_steps
        mlflow.log_params({
            "text_encoder.base_model": params.text_encoder.base_model,
            "text_encoder.hash": encoder_hash, "n_train_pairs": train.height,
            "n_val_pairs": val.height, "seed": params.project.seed,
        })
        for row in result.history:
            mlflow.log_metrics({k: float(v) for k, v in row.items() if k != "epoch"},
                               step=int(row["epoch"]))
        _log_step_metrics(client, run.info.run_id, step_metrics)
        mlflow.log_artifact(str(paths.clip_model_dir / "training_curves.png"))
        mlflow.log_text(card, "MODEL_CARD.md")
        info = log_clip_pyfunc(paths.text_encoder_dir, paths.clip_model_dir,
                               params.registry.model_name)
        version = str(info.registered_model_version)
        client.set_registered_model_alias(params.registry.model_name, CHALLENGER, version)
        client.set_model_version_tag(params.registry.model_name, version, "encoder_hash",
                                     encoder_hash)
        run_id = run.info.run_id

    registry = {"model_name": params.registry.model_name, "version": version, "run_id": run_id,
                "model_uri": f"models:/{params.registry.model_name}/{version}"}
    write_json(paths.clip_model_dir / "registry.json", registry)
    return StageResult(
        "clip_model",
        {"clip_model": paths.clip_model_dir},
        {
            "vision_backbone": params.clip.vision_backbone,
            "n_train_pairs": train.height,
            "n_val_pairs": val.height,
            "best_epoch": result.best_epoch,
            "best_val_loss": round(result.best_val_loss, 4),
            "final_train_loss": round(result.history[-1]["train_loss"], 4),
            "seconds": round(result.seconds, 1),
            "mlflow_run_id": run_id,
            "registered_version": f"{params.registry.model_name} v{version} @{CHALLENGER}",
            "training_curves": Markdown(
                png_markdown(paths.clip_model_dir / curve.name, "training curves")),
        },
    )


def _log_step_metrics(client, run_id: str, rows: list[dict]) -> None:
    """Per-step training metrics (`step/<name>`) in batches of 1,000 (MLflow's limit)."""
    import time

    from mlflow.entities import Metric

    stamp = int(time.time() * 1000)
    metrics = [Metric(f"step/{k}", float(v), stamp, int(row["step"]))
               for row in rows for k, v in row.items() if k != "step"]
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start:start + 1000])
