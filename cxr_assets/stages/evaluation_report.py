"""evaluation_report: how good the challenger is, and on which reports it fails.

On the held-out test split: image<->report retrieval R@K, mean and median rank under two
protocols (paired only; identical report text counts) with bootstrap 95% CIs; report-level
scores of the top-1 retrieved report (ROUGE-L, BLEU-4, labeler F1 per observation); a
5x200-style subset; zero-shot AUC per observation with prompt ensembles and their sensitivity;
everything broken down by report style. Written to reports/evaluation as Markdown and HTML with
plots, registered with DVC as metrics and plots, logged to the model's MLflow run, and the
metrics promotion compares are tagged on the registered model version
(`registry/run_logging.py`).
"""

from __future__ import annotations

import json

import numpy as np
import polars as pl

from cxr_assets.config import Params
from cxr_assets.paths import ProjectPaths
from cxr_assets.stages.base import Markdown, StageResult, png_markdown, require

HEADLINE = ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "i2t_mean_rank",
            "t2i_mean_rank", "i2t_median_rank", "t2i_median_rank", "mean_recall", "n_pairs",
            "report/rouge_l", "report/bleu4", "report/f1_micro", "report/f1_macro",
            "zeroshot/mean_auc", "zeroshot/prompt_spread", "subset5x200/mean_recall")


def read_profile(paths: ProjectPaths) -> pl.DataFrame | None:
    """report_profile columns used for the style breakdown (None before report_profile ran)."""
    if not paths.report_profile_table.is_file():
        return None
    return pl.read_parquet(paths.report_profile_table)


def run(params: Params, paths: ProjectPaths, progress: bool = True) -> StageResult:
    from cxr_assets.clip.pairs import test_pool
    from cxr_assets.embed.search import LocalEncoder
    from cxr_assets.evaluate.labels import load_labeler
    from cxr_assets.evaluate.report import recall_curve_table
    from cxr_assets.evaluate.suite import run_suite, write_report
    from cxr_assets.registry.run_logging import log_evaluation
    from cxr_assets.registry.tracking import configure_mlflow

    require("evaluation_report", {"study_embeddings": [paths.study_embeddings_table],
                                  "clip_model": [paths.clip_model_dir / "registry.json"]})
    registry = json.loads((paths.clip_model_dir / "registry.json").read_text())
    pool = test_pool(paths)
    if pool.height < 2:
        raise ValueError(f"evaluation_report: the test split has {pool.height} studies; need >= 2")
    ev = params.evaluation
    out = paths.evaluation_dir
    out.mkdir(parents=True, exist_ok=True)
    labeler, labeler_note = load_labeler()
    embed_texts = None
    if labeler is not None and ev.zero_shot and paths.text_encoder_dir.is_dir():
        embed_texts = LocalEncoder(paths.text_encoder_dir, paths.clip_model_dir).embed_texts
    suite = run_suite(
        np.asarray(pool["image_embedding"].to_list(), dtype=np.float32),
        np.asarray(pool["report_embedding"].to_list(), dtype=np.float32),
        pool["report_for_training"].fill_null("").to_list(), pool["study_id"].to_list(),
        ev, out, params.project.seed, profile=read_profile(paths), labeler=labeler, embed_texts=embed_texts,
    )
    context = {"model": f"{registry['model_name']} v{registry['version']}",
               "MLflow run": registry["run_id"], "split": "test", "labels": labeler_note}
    report = write_report(suite, "Chest X-ray image-report retrieval", context, ev, out)
    recall_curve_table(suite.evaluation).write_csv(out / "recall_at_k.csv")
    metrics = report.metrics

    configure_mlflow(params, paths)
    log_evaluation(params, registry, metrics, out)
    plots = {f"{name}_plot": Markdown(png_markdown(path, name.replace("_", " ")))
             for name, path in suite.plots.items()}
    return StageResult(
        "evaluation_report",
        {"evaluation_dir": out},
        {
            **{k: metrics[k] for k in HEADLINE if k in metrics},
            "model_version": context["model"],
            "report_html": out / "report.html",
            "notes": "; ".join(suite.notes) or "none",
            "report": Markdown(report.markdown.split("![recall at K]")[0]),
            "recall_plot": Markdown(png_markdown(report.recall_plot, "recall@K")),
            **plots,
        },
    )
