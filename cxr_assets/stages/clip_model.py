"""clip_model: train the image tower against the cached report embeddings (LLM2CLIP recipe).

A timm backbone (grayscale input, random init unless a local weights file is given) and a
trainable adapter on the frozen text embeddings, a contrastive loss (InfoNCE, SigLIP or the
reference-compatible raw-scale mode) with GradCache for large effective batches. With
`clip.distributed.nproc_per_node > 1` training runs under torchrun (a subprocess here, Dagster
Pipes from the asset). Checkpoints in artifacts/clip_checkpoints make an interrupted run resume.
The run is logged to MLflow (params, per-step metrics, system metrics, model card) and
registered as a pyfunc model version with alias `challenger` (`registry/run_logging.py`,
the card in `registry/model_card.py`).
"""

from __future__ import annotations

import polars as pl

from cxr_assets.clip.launch import Launcher
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


def run(params: Params, paths: ProjectPaths, progress: bool = True,
        launcher: Launcher | None = None) -> StageResult:
    import mlflow

    from cxr_assets.clip.launch import train_clip_model
    from cxr_assets.clip.model import save_clip_model
    from cxr_assets.evaluate.plots import plot_training_curves
    from cxr_assets.registry.model_card import clip_model_card
    from cxr_assets.registry.run_logging import log_clip_training
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
        trained = train_clip_model(params, paths, progress, launcher)
        result, n_train, n_val = trained.result, trained.train.height, trained.val.height

        with atomic_dir(paths.clip_model_dir) as out:
            save_clip_model(result.model, out)
            write_json(out / "history.json", result.history)
            curve = plot_training_curves(result.history, out / "training_curves.png")
            card = clip_model_card(params, paths, trained.encoder_hash, result, n_train, n_val)
            (out / "MODEL_CARD.md").write_text(card + "\n")

        training = paths.training_report_dir
        training.mkdir(parents=True, exist_ok=True)
        write_json(training / "clip_metrics.json", {
            "best_epoch": result.best_epoch, "best_val_loss": round(result.best_val_loss, 6),
            "final_train_loss": round(result.history[-1]["train_loss"], 6),
            "steps": result.steps,
        })
        pl.DataFrame(result.history).write_csv(training / "clip_history.csv")

        run_id = run.info.run_id
        version = log_clip_training(client, run_id, params, paths, result, trained.encoder_hash,
                                    n_train, n_val, trained.step_metrics, card)

    registry = {"model_name": params.registry.model_name, "version": version, "run_id": run_id,
                "model_uri": f"models:/{params.registry.model_name}/{version}"}
    write_json(paths.clip_model_dir / "registry.json", registry)
    return StageResult(
        "clip_model",
        {"clip_model": paths.clip_model_dir},
        {
            "vision_backbone": params.clip.vision_backbone,
            "n_train_pairs": n_train,
            "n_val_pairs": n_val,
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
