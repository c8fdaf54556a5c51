"""evaluation_report: image<->report retrieval on the held-out test split.

Recall@K in both directions under two protocols (paired only; identical report text counts),
mean and median rank, a recall@K plot and the worst retrievals, written to reports/evaluation as
Markdown and HTML, registered with DVC as metrics and plots, and logged to the model's MLflow run.
"""

from __future__ import annotations

import json

import numpy as np
import polars as pl

from cxr_assets.config import Params
from cxr_assets.paths import ProjectPaths
from cxr_assets.stages.base import Markdown, StageResult, png_markdown, require, write_json


def test_pool(paths: ProjectPaths) -> pl.DataFrame:
    embeddings = pl.read_parquet(paths.study_embeddings_table).filter(pl.col("split") == "test")
    reports = pl.read_parquet(paths.report_texts_table).select("study_id", "report_for_training")
    return embeddings.join(reports, on="study_id", how="inner").sort("study_id")


def run(params: Params, paths: ProjectPaths, progress: bool = True) -> StageResult:
    import mlflow

    from cxr_assets.evaluate.plots import plot_recall_curve
    from cxr_assets.evaluate.report import evaluate_pairs, recall_curve_table, render_report
    from cxr_assets.registry.tracking import configure_mlflow

    require("evaluation_report", {"study_embeddings": [paths.study_embeddings_table],
                                  "clip_model": [paths.clip_model_dir / "registry.json"]})
    registry = json.loads((paths.clip_model_dir / "registry.json").read_text())
    pool = test_pool(paths)
    if pool.height < 2:
        raise ValueError(f"evaluation_report: the test split has {pool.height} studies; need >= 2")
    ev = params.evaluation
    evaluation = evaluate_pairs(
        np.asarray(pool["image_embedding"].to_list(), dtype=np.float32),
        np.asarray(pool["report_embedding"].to_list(), dtype=np.float32),
        pool["report_for_training"].fill_null("").to_list(), pool["study_id"].to_list(),
        ev.recall_at, ev.n_worst_examples,
    )
    out = paths.evaluation_dir
    out.mkdir(parents=True, exist_ok=True)
    plot = plot_recall_curve({"image->report": evaluation.i2t_ranks,
                              "report->image": evaluation.t2i_ranks}, out / "recall_at_k.png")
    recall_curve_table(evaluation).write_csv(out / "recall_at_k.csv")
    metrics = {k: round(float(v), 6) for k, v in evaluation.metrics.items()}
    write_json(out / "metrics.json", metrics)
    context = {"model": f"{registry['model_name']} v{registry['version']}",
               "MLflow run": registry["run_id"], "split": "test"}
    markdown, html = render_report("Chest X-ray image-report retrieval", evaluation, context,
                                   ev.recall_at, plot)
    (out / "report.md").write_text(markdown)
    (out / "report.html").write_text(html)

    configure_mlflow(params, paths)
    with mlflow.start_run(run_id=registry["run_id"]):
        mlflow.log_metrics({f"test_{k}".replace("@", "_at_"): v for k, v in metrics.items()})
        mlflow.log_artifacts(str(out), artifact_path="evaluation")
    from mlflow import MlflowClient

    client = MlflowClient()
    client.set_model_version_tag(registry["model_name"], str(registry["version"]),
                                 ev.primary_metric, str(metrics[ev.primary_metric]))
    return StageResult(
        "evaluation_report",
        {"evaluation_dir": out},
        {
            **{k: v for k, v in metrics.items() if not k.startswith("grp_")},
            "model_version": context["model"],
            "report_html": out / "report.html",
            "report": Markdown(markdown.split("![recall at K]")[0]),
            "recall_plot": Markdown(png_markdown(plot, "recall@K")),
        },
    )
