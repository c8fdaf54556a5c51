"""clip_model: train the image tower against the cached report embeddings (LLM2CLIP recipe).

A timm backbone (grayscale input, random init unless a local weights file is given) and a
trainable LayerNorm + Linear adapter on the frozen text embeddings, symmetric InfoNCE with a
learnable clamped temperature. The run is logged to MLflow and registered as a pyfunc model
version with alias `challenger`.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import polars as pl

from cxr_assets.config import Params
from cxr_assets.paths import ProjectPaths
from cxr_assets.stages.base import (
    Markdown,
    StageResult,
    atomic_dir,
    png_markdown,
    require,
    write_json,
)
from cxr_assets.stages.training_data import embedding_matrix, image_report_pairs


def git_sha(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def model_card(params: Params, paths: ProjectPaths, encoder_hash: str, result, n_train: int,
               n_val: int) -> str:
    c = params.clip
    return "\n".join([
        f"# {params.registry.model_name}: chest X-ray image-report CLIP model",
        "",
        "Image tower: timm `{}` ({} px, grayscale); text tower: frozen adapted LLM encoder "
        "`{}` with a LayerNorm + Linear adapter; shared dimension {}.".format(
            c.vision_backbone, c.image_size, params.text_encoder.base_model, c.embed_dim),
        "",
        "## Lineage",
        f"- git commit: `{git_sha(paths.root)}`",
        f"- Dagster run: `{os.environ.get('DAGSTER_RUN_ID', 'n/a (CLI / dvc)')}`",
        f"- text encoder hash: `{encoder_hash}`",
        f"- training pairs: {n_train}, validation pairs: {n_val}",
        "",
        "## Training",
        f"- epochs: {c.epochs}, batch: {c.batch_size}, lr: {c.lr}, best epoch: {result.best_epoch}",
        f"- best validation loss: {result.best_val_loss:.4f}",
        "",
        "Evaluation metrics are added to this run by the evaluation_report asset.",
    ])


def run(params: Params, paths: ProjectPaths, progress: bool = True) -> StageResult:
    import mlflow

    from cxr_assets.clip.model import save_clip_model
    from cxr_assets.clip.train import train_clip
    from cxr_assets.evaluate.plots import plot_training_curves
    from cxr_assets.registry.pyfunc_model import log_clip_pyfunc
    from cxr_assets.registry.tracking import CHALLENGER, configure_mlflow

    require("clip_model", {
        "study_images": [paths.study_images_table],
        "study_splits": [paths.splits_table],
        "report_embeddings": [paths.report_embeddings_table],
        "text_encoder": [paths.text_encoder_dir / "encoder_config.json"],
    })
    pairs = image_report_pairs(paths)
    train, val = pairs.filter(pl.col("split") == "train"), pairs.filter(pl.col("split") == "val")
    if train.height < 2:
        raise ValueError(f"clip_model: only {train.height} training image-report pairs; need >= 2")
    encoder_hash = pl.read_parquet(paths.report_embeddings_table)["encoder_hash"][0]

    result = train_clip(
        [Path(p) for p in train["cache_path"]], embedding_matrix(train),
        [Path(p) for p in val["cache_path"]], embedding_matrix(val),
        params.clip, text_encoder_hash=encoder_hash, seed=params.project.seed, progress=progress,
    )

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
        "final_train_loss": round(result.history[-1]["train_loss"], 6), "steps": result.steps,
    })
    pl.DataFrame(result.history).write_csv(training / "clip_history.csv")

    client = configure_mlflow(params, paths)
    with mlflow.start_run(run_name="clip_model") as run:
        mlflow.log_params({f"clip.{k}": v for k, v in params.clip.model_dump().items()})
        mlflow.log_params({
            "text_encoder.base_model": params.text_encoder.base_model,
            "text_encoder.hash": encoder_hash, "n_train_pairs": train.height,
            "n_val_pairs": val.height, "seed": params.project.seed,
        })
        for row in result.history:
            mlflow.log_metrics({k: float(v) for k, v in row.items() if k != "epoch"},
                               step=int(row["epoch"]))
        mlflow.log_artifact(str(paths.clip_model_dir / "training_curves.png"))
        mlflow.log_text(card, "MODEL_CARD.md")
        info = log_clip_pyfunc(paths.text_encoder_dir, paths.clip_model_dir, params.registry.model_name)
        version = str(info.registered_model_version)
        client.set_registered_model_alias(params.registry.model_name, CHALLENGER, version)
        client.set_model_version_tag(params.registry.model_name, version, "encoder_hash", encoder_hash)
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
