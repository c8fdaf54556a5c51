"""report_texts: read each study's free-text report and split it into sections.

The original text is kept beside the parsed FINDINGS / IMPRESSION / INDICATION / COMPARISON /
TECHNIQUE sections; unreadable or empty reports are quarantined with a reason.
"""

from __future__ import annotations

import polars as pl

from cxr_assets.config import Params
from cxr_assets.paths import ProjectPaths
from cxr_assets.stages.base import StageResult, TablePreview, require, write_parquet


def run(params: Params, paths: ProjectPaths, progress: bool = True) -> StageResult:
    from cxr_assets.reports.sections import parse_reports

    require("report_texts", {"raw_studies": [paths.studies_table]})
    studies = pl.read_parquet(paths.studies_table)
    reports, quarantine = parse_reports(studies, progress=progress)
    write_parquet(reports, paths.report_texts_table)
    quarantine_path = paths.catalog_dir / "report_texts_quarantine.parquet"
    write_parquet(quarantine, quarantine_path)

    def share(column: str) -> float:
        return round(float(reports[column].is_not_null().mean()), 3) if reports.height else 0.0

    return StageResult(
        "report_texts",
        {"report_texts": paths.report_texts_table, "quarantine": quarantine_path},
        {
            "n_reports": reports.height,
            "n_quarantined": quarantine.height,
            "share_with_findings": share("findings"),
            "share_with_impression": share("impression"),
            "mean_chars": round(float(reports["n_chars"].mean()), 1) if reports.height else 0.0,
            "preview": TablePreview(
                reports.select("study_id", "findings", "impression").head(5).to_dicts()
            ),
        },
    )
