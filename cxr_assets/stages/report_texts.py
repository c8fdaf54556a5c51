"""report_texts: split each catalogued study's free-text report into sections.

The original text (as raw_studies decoded it, PHI policy applied) is kept beside the parsed
FINDINGS / IMPRESSION / INDICATION / COMPARISON / TECHNIQUE sections; reports with neither
findings nor impression are quarantined with a reason. Each report is
also labelled for the 14 CheXpert observations by the project's rule-based labeler
(1 positive, 0 negative, -1 uncertain, null not mentioned) into report_labels.parquet.
"""

from __future__ import annotations

import polars as pl

from cxr_assets.config import Params
from cxr_assets.paths import ProjectPaths
from cxr_assets.stages.base import CheckOutcome, StageResult, TablePreview, require, write_parquet


def run(params: Params, paths: ProjectPaths, progress: bool = True) -> StageResult:
    from cxr_assets.reports.labeler import CHEXPERT_OBSERVATIONS, label_reports
    from cxr_assets.reports.sections import parse_reports

    require("report_texts", {"raw_studies": [paths.studies_table, paths.catalog_reports_table]})
    catalogued = pl.read_parquet(paths.catalog_reports_table).join(
        pl.read_parquet(paths.studies_table).select("study_id", "patient_id", "source"),
        on="study_id", how="inner",
    )
    reports, quarantine = parse_reports(catalogued, progress=progress)
    write_parquet(reports, paths.report_texts_table)
    quarantine_path = paths.catalog_dir / "report_texts_quarantine.parquet"
    write_parquet(quarantine, quarantine_path)
    labels = label_reports(reports["report_for_training"].to_list()).insert_column(
        0, reports["study_id"]
    )
    write_parquet(labels, paths.labels_table)
    positive_share = {
        f"positive_{o.lower().replace(' ', '_')}": round(float((labels[o] == 1.0).fill_null(False).mean()), 3)
        for o in CHEXPERT_OBSERVATIONS
    } if labels.height else {}

    def share(column: str) -> float:
        return round(float(reports[column].is_not_null().mean()), 3) if reports.height else 0.0

    return StageResult(
        "report_texts",
        {"report_texts": paths.report_texts_table, "quarantine": quarantine_path,
         "labels": paths.labels_table},
        {
            "n_reports": reports.height,
            "n_quarantined": quarantine.height,
            "share_with_findings": share("findings"),
            "share_with_impression": share("impression"),
            "mean_chars": round(float(reports["n_chars"].mean()), 1) if reports.height else 0.0,
            **positive_share,
            "preview": TablePreview(
                reports.select("study_id", "findings", "impression").head(5).to_dicts()
            ),
        },
        [CheckOutcome(
            "reports_accounted", reports.height + quarantine.height == catalogued.height,
            blocking=True, description="every catalogued report is parsed or quarantined",
            metadata={"catalogued": catalogued.height, "parsed": reports.height,
                      "quarantined": quarantine.height},
        )],
    )
