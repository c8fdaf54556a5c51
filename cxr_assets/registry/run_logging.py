"""What the stages log to MLflow: the CLIP training run and its registered version, the
evaluation added to that run (and tagged on the version for promotion), the tower comparison
(the text encoder's run: registry/text_logging.py).

Each function expects `tracking.configure_mlflow` to have pointed MLflow at the store.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from cxr_assets.config import Params
from cxr_assets.fileio import flatten
from cxr_assets.paths import ProjectPaths
from cxr_assets.registry.tracking import CHALLENGER


def log_clip_training(client, run_id: str, params: Params, paths: ProjectPaths, result,
                      encoder_hash: str, n_train: int, n_val: int, step_metrics: list[dict],
                      card: str) -> str:
    """Into the open clip_model run `run_id`: params, per-epoch and per-step metrics, the
    training curves and model card; then register the saved model (paths.clip_model_dir) as a
    pyfunc version with alias `challenger`. Returns the version."""
    import mlflow

    from cxr_assets.registry.pyfunc_model import log_clip_pyfunc

    mlflow.log_params(flatten(params.clip.model_dump(), "clip"))  # clip.checkpoint.every_n_steps
    mlflow.log_params({
        "text_encoder.base_model": params.text_encoder.base_model,
        "text_encoder.hash": encoder_hash, "n_train_pairs": n_train,
        "n_val_pairs": n_val, "seed": params.project.seed,
    })
    for row in result.history:
        mlflow.log_metrics({k: float(v) for k, v in row.items() if k != "epoch"},
                           step=int(row["epoch"]))
    log_step_metrics(client, run_id, step_metrics)
    mlflow.log_artifact(str(paths.clip_model_dir / "training_curves.png"))
    mlflow.log_text(card, "MODEL_CARD.md")
    name = params.registry.model_name
    info = log_clip_pyfunc(paths.text_encoder_dir, paths.clip_model_dir, name)
    version = str(info.registered_model_version)
    client.set_registered_model_alias(name, CHALLENGER, version)
    client.set_model_version_tag(name, version, "encoder_hash", encoder_hash)
    return version


def log_step_metrics(client, run_id: str, rows: list[dict]) -> None:
    """Per-step training metrics (`step/<name>`) in batches of 1,000 (MLflow's limit)."""
    import time

    from mlflow.entities import Metric

    stamp = int(time.time() * 1000)
    metrics = [Metric(f"step/{k}", float(v), stamp, int(row["step"]))
               for row in rows for k, v in row.items() if k != "step"]
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start:start + 1000])


def metric_key(key: str) -> str:
    """metrics.json key -> a valid MLflow metric name (no '@', '=' or other punctuation)."""
    return re.sub(r"[^\w./ -]", "_", "test_" + key.replace("@", "_at_"))


def log_evaluation(params: Params, registry: dict, metrics: dict[str, float], out_dir: Path) -> None:
    """The evaluation into the model's own MLflow run (metrics and the report folder), and
    what promotion compares tagged on its registered version."""
    import mlflow

    with mlflow.start_run(run_id=registry["run_id"]):
        mlflow.log_metrics({metric_key(k): v for k, v in metrics.items()})
        mlflow.log_artifacts(str(out_dir), artifact_path="evaluation")
    tag_version(params, registry["model_name"], str(registry["version"]), metrics)


def tag_version(params: Params, model_name: str, version: str, metrics: dict[str, float]) -> None:
    """Tag the registered version with what promotion compares (primary + robustness metrics)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    watched = [params.evaluation.primary_metric, *params.registry.robustness_metrics]
    for key in watched:
        if key in metrics:
            client.set_model_version_tag(model_name, version, key, str(metrics[key]))
    client.set_model_version_tag(model_name, version, "evaluation_metrics", json.dumps(
        {k: metrics[k] for k in watched if k in metrics}, sort_keys=True))


def log_comparison(metrics: dict[str, float], out_dir: Path) -> None:
    """The tower comparison as its own MLflow run: mean recall per cell and the report folder."""
    import mlflow

    with mlflow.start_run(run_name="model_comparison"):
        mlflow.log_metrics({k.replace("@", "_at_"): v for k, v in metrics.items()})
        mlflow.log_artifacts(str(out_dir), artifact_path="comparison")
