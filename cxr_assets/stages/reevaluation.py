"""champion_reevaluation: re-score the production model on the current test data.

Loads `models:/<name>@champion` through MLflow (the same pyfunc users load), embeds the current
test split's images and reports, writes a dated report under reports/reevaluation/<date>/ and
warns (check + an alert through `cxr_assets.alerts`: a line in reports/alerts/drift.jsonl and a
JSON POST to $CXR_ALERT_WEBHOOK when set) when a
metric dropped by more than `evaluation.drift_tolerance` against the previous report. The report
has the same sections as evaluation_report (CIs, report-level scores, style breakdown, zero-shot).
A Dagster sensor re-runs it when a new data batch changes the catalog (`data_fingerprint`).
The pool is `clip.pairs.test_pool`, the drift rule `evaluate/history.py`.
"""

from __future__ import annotations

from datetime import date

import polars as pl

from cxr_assets.alerts import DRIFT, alerts_file, send_alert
from cxr_assets.clip.pairs import test_pool
from cxr_assets.config import Params
from cxr_assets.evaluate.history import WATCHED, drift, previous_metrics
from cxr_assets.paths import ProjectPaths
from cxr_assets.stages.base import CheckOutcome, Markdown, StageResult, require


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


def run(params: Params, paths: ProjectPaths, progress: bool = True, today: str | None = None) -> StageResult:
    from cxr_assets.evaluate.labels import load_labeler
    from cxr_assets.evaluate.suite import run_suite, write_report
    from cxr_assets.registry.pyfunc_model import embed_pairs, load_champion, text_embedder
    from cxr_assets.registry.tracking import CHAMPION, configure_mlflow

    require("champion_reevaluation", {"study_images": [paths.study_images_table],
                                      "study_splits": [paths.splits_table],
                                      "report_texts": [paths.report_texts_table]})
    ev = params.evaluation
    name = params.registry.model_name
    champion, model = load_champion(configure_mlflow(params, paths), name)

    images = pl.read_parquet(paths.study_images_table).select("image_id", "study_id", "view_position", "cache_path")
    pool = test_pool(paths, images)  # the catalogued test images, embedded again by the champion
    if pool.height < 2:
        raise ValueError(f"re-evaluation: the test split has {pool.height} studies; need >= 2")
    texts = pool["report_for_training"].fill_null("").to_list()
    image_emb, text_emb = embed_pairs(model, pool["cache_path"].to_list(), texts)
    today = today or date.today().isoformat()
    out = paths.reevaluation_dir / today
    out.mkdir(parents=True, exist_ok=True)
    labeler, _ = load_labeler()
    profile = pl.read_parquet(paths.report_profile_table) if paths.report_profile_table.is_file() else None
    suite = run_suite(image_emb, text_emb, texts, pool["study_id"].to_list(), ev, out,
                      params.project.seed, profile=profile, labeler=labeler,
                      embed_texts=text_embedder(model))
    before = previous_metrics(paths.reevaluation_dir, today)
    context = {"model": f"{name} v{champion.version} @{CHAMPION}", "date": today,
               "compared with": before[0] if before else "no earlier report"}
    report = write_report(suite, f"Champion re-evaluation {today}", context, ev, out)
    metrics = report.metrics
    dropped = drift(metrics, before[1], ev.drift_tolerance) if before else {}
    alert = None
    if dropped:
        alert = send_alert(alerts_file(paths.reports_dir, DRIFT),
                           {"date": today, "model": context["model"], "dropped": dropped,
                            "tolerance": ev.drift_tolerance, "compared_with": before[0]})
    return StageResult(
        "champion_reevaluation",
        {"report_dir": out},
        {"champion_version": str(champion.version), "report_dir": out, "n_pairs": pool.height,
         "data_fingerprint": data_fingerprint(paths), "report_html": out / "report.html",
         **{k: metrics[k] for k in WATCHED if k in metrics},
         "report": Markdown(report.markdown.split("![recall at K]")[0])},
        [CheckOutcome(
            "no_metric_drift", not dropped, blocking=False,
            description=f"no watched metric dropped by more than {ev.drift_tolerance}",
            metadata={"dropped": dropped or "none", "compared_with": context["compared with"],
                      **({"alert": alert.path, "webhook": alert.webhook or "not set"}
                         if alert else {})},
        )],
    )
