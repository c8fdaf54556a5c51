"""The text_encoder stage's MLflow run: its params, the loss curve of each adaptation stage, the
held-out evaluation and the encoder folder. Apart from run_logging.py, so the text encoder's code
dependencies do not include CLIP's."""

from __future__ import annotations

import re
from pathlib import Path

from cxr_assets.config import Params
from cxr_assets.fileio import flatten
from cxr_assets.paths import ProjectPaths


def log_text_encoder(params: Params, paths: ProjectPaths, result, data, table,
                     eval_files: tuple[Path, Path] | None) -> str:
    """One MLflow run: params, MNTP / SimCSE / contrastive loss curves, eval metrics, artifact."""
    import mlflow

    from cxr_assets.registry.tracking import configure_mlflow

    configure_mlflow(params, paths)
    with mlflow.start_run(run_name="text_encoder") as run:
        flat = flatten(params.text_encoder.model_dump(), "text_encoder")
        mlflow.log_params({k: str(v)[:500] for k, v in flat.items()})
        mlflow.log_params({"training_source": data.source, "n_pairs": len(data.pairs),
                           "n_train_reports": len(data.texts)})
        mlflow.set_tags({"stage": "text_encoder", "encoder_hash": result.content_hash})
        for stage, losses in (("mntp", result.mntp_losses), ("simcse", result.simcse_losses),
                              ("contrastive", result.contrastive_losses),
                              ("head", result.head_losses)):
            for step, loss in enumerate(losses):
                mlflow.log_metric(f"{stage}_loss", loss, step=step)
        if table is not None:
            for row in table.iter_rows(named=True):
                key = f"eval.{row['encoder']}.{row['task']}.{row['metric']}".replace("@", "_at_")
                # MLflow names allow alphanumerics and _-./: and spaces ("raw_llm+pp" -> raw_llm_pp)
                mlflow.log_metric(re.sub(r"[^A-Za-z0-9_\-./: ]", "_", key).replace(" ", "_"),
                                  row["value"])
        for file in eval_files or ():
            mlflow.log_artifact(str(file), artifact_path="evaluation")
        # The artifact: the whole folder when small; a large LLM's weights stay in the DVC-tracked
        # folder (referenced by tag and content hash) instead of a second copy in mlartifacts.
        folder = Path(result.encoder_dir)
        size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
        for file in sorted(folder.iterdir()):
            if file.is_file() and (size < 200 * 2**20 or not file.name.endswith(".safetensors")
                                   or file.name == "pooling_head.safetensors"):
                mlflow.log_artifact(str(file), artifact_path="text_encoder")
        mlflow.set_tag("encoder_dir", str(folder))
        return run.info.run_id
