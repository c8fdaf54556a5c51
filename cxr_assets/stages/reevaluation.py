"""champion_reevaluation: re-score the production model on the current test data.

Loads `models:/<name>@champion` through MLflow (the same pyfunc users load), embeds the current
test split's images and reports, writes a dated report under reports/reevaluation/<date>/ and
warns (check + an alert through `cxr_assets.alerts`: a line in reports/alerts/drift.jsonl and a
JSON POST to $CXR_ALERT_WEBHOOK when set) when a
metric dropped by more than `evaluation.drift_tolerance` against the previous report. The report
has the same sections as evaluation_report (CIs, report-level scores, style breakdown, zero-shot).
A Dagster sensor re-runs it when a new data batch changes the catalog (`data_fingerprint`).
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl

from cxr_assets.alerts import DRIFT, alerts_file, send_alert
from cxr_assets.clip.pairs import test_pool
from cxr_assets.config import Params
from cxr_assets.paths import ProjectPaths
from cxr_assets.stages.base import CheckOutcome, Markdown, StageResult, require, write_json

WATCHED = ("mean_recall", "i2t_R@1", "t2i_R@1", "i2t_R@5", "t2i_R@5", "report/rouge_l",
           "report/f1_micro", "zeroshot/mean_auc")


def data_fingerprint(paths: ProjectPaths) -> str:
    """Changes whenever the catalog tables the re-evaluation reads change (a new data batch).

    Size + modification time of each file: cheap enough for a sensor polling every few minutes.
    """
    import hashlib

    digest = hashlib.sha256()
    for file in (paths.study_images_table, paths.splits_table, paths.report_texts_table):
        stat = file.stat() if file.exists() else None
        digest.update(f"{file.name}:{stat.st_size if stat else -1}:{stat.st_mtime_ns if stat else -1};".encode())
    return digest.hexdigest()[:16]


def previous_metrics(root: Path, today: str) -> tuple[str, dict] | None:
    """The most recent earlier report's metrics, if any."""
    earlier = sorted(d for d in root.glob("????-??-??") if d.name < today and (d / "metrics.json").exists())
    if not earlier:
        return None
    return earlier[-1].name, json.loads((earlier[-1] / "metrics.json").read_text())


def drift(current: dict, previous: dict, tolerance: float) -> dict[str, float]:
    """Metrics that dropped by more than `tolerance` (absolute)."""
    return {k: round(previous[k] - current[k], 6) for k in WATCHED
            if k in current and k in previous and previous[k] - current[k] > tolerance}


def run(params: Params, paths: ProjectPaths, progress: bool = True, today: str | None = None) -> StageResult:
    import mlflow.pyfunc

    from cxr_assets.evaluate.labels import load_labeler
    from cxr_assets.evaluate.plots import plot_recall_curve
    from cxr_assets.evaluate.report import render_report
    from cxr_assets.evaluate.suite import run_suite
    from cxr_assets.registry.tracking import CHAMPION, configure_mlflow, model_uri, version_by_alias

    require("champion_reevaluation", {"study_images": [paths.study_images_table],
                                      "study_splits": [paths.splits_table],
                                      "report_texts": [paths.report_texts_table]})
    client = configure_mlflow(params, paths)
    name = params.registry.model_name
    champion = version_by_alias(client, name, CHAMPION)
    if champion is None:
        raise LookupError(f"no version of model {name!r} has the alias '{CHAMPION}': run the main job first")
    model = mlflow.pyfunc.load_model(model_uri(name, CHAMPION))

    images = pl.read_parquet(paths.study_images_table).select("image_id", "study_id", "view_position", "cache_path")
    pool = test_pool(paths, images)  # the catalogued test images, embedded again by the champion
    if pool.height < 2:
        raise ValueError(f"re-evaluation: the test split has {pool.height} studies; need >= 2")
    texts = pool["report_for_training"].fill_null("").to_list()
    predicted = model.predict(pd.DataFrame({"image_path": pool["cache_path"].to_list(), "report_text": texts}))
    today = today or date.today().isoformat()
    out = paths.reevaluation_dir / today
    out.mkdir(parents=True, exist_ok=True)
    labeler, _ = load_labeler()

    def embed_prompts(prompts: list[str]) -> np.ndarray:
        embedded = model.predict(pd.DataFrame({"report_text": prompts}))
        return np.asarray(embedded["text_embedding"].tolist(), dtype=np.float32)

    profile = pl.read_parquet(paths.report_profile_table) if paths.report_profile_table.is_file() else None
    suite = run_suite(
        np.asarray(predicted["image_embedding"].tolist(), dtype=np.float32),
        np.asarray(predicted["text_embedding"].tolist(), dtype=np.float32),
        texts, pool["study_id"].to_list(), params.evaluation, out, params.project.seed,
        profile=profile, labeler=labeler, embed_texts=embed_prompts,
    )
    evaluation = suite.evaluation
    plot = plot_recall_curve({"image->report": evaluation.i2t_ranks, "report->image": evaluation.t2i_ranks},
                             out / "recall_at_k.png")
    metrics = {k: round(float(v), 6) for k, v in suite.metrics.items() if not np.isnan(v)}
    write_json(out / "metrics.json", metrics)
    before = previous_metrics(paths.reevaluation_dir, today)
    dropped = drift(metrics, before[1], params.evaluation.drift_tolerance) if before else {}
    context = {"model": f"{name} v{champion.version} @{CHAMPION}", "date": today,
               "compared with": before[0] if before else "no earlier report"}
    markdown, html = render_report(f"Champion re-evaluation {today}", evaluation, context,
                                   params.evaluation.recall_at, plot, suite.sections)
    (out / "report.md").write_text(markdown)
    (out / "report.html").write_text(html)
    alert = None
    if dropped:
        alert = send_alert(alerts_file(paths.reports_dir, DRIFT),
                           {"date": today, "model": context["model"], "dropped": dropped,
                            "tolerance": params.evaluation.drift_tolerance,
                            "compared_with": before[0]})
    return StageResult(
        "champion_reevaluation",
        {"report_dir": out},
        {"champion_version": str(champion.version), "report_dir": out, "n_pairs": pool.height,
         "data_fingerprint": data_fingerprint(paths), "report_html": out / "report.html",
         **{k: metrics[k] for k in WATCHED if k in metrics},
         "report": Markdown(markdown.split("![recall at K]")[0])},
        [CheckOutcome(
            "no_metric_drift", not dropped, blocking=False,
            description=f"no watched metric dropped by more than {params.evaluation.drift_tolerance}",
            metadata={"dropped": dropped or "none", "compared_with": context["compared with"],
                      **({"alert": alert.path, "webhook": alert.webhook or "not set"}
                         if alert else {})},
        )],
    )
