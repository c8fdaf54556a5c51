"""study_splits: patient-level train/val/test assignment, deterministic by hash.

A patient's studies always share one split; the leakage check is blocking.
"""

from __future__ import annotations

import polars as pl

from cxr_assets.config import Params
from cxr_assets.paths import ProjectPaths
from cxr_assets.stages.base import CheckOutcome, StageResult, TablePreview, require, write_parquet
from cxr_assets.stages.contracts import contract_check


def run(params: Params, paths: ProjectPaths, progress: bool = True) -> StageResult:
    from cxr_assets.quality.splits import assign_splits, leakage

    require("study_splits", {"report_texts": [paths.report_texts_table]})
    # Only studies that survived report parsing can be trained or evaluated on.
    reports = pl.read_parquet(paths.report_texts_table).select("study_id", "patient_id")
    s = params.splits
    splits = assign_splits(reports, train=s.train, val=s.val, test=s.test, salt=s.salt)
    write_parquet(splits, paths.splits_table)
    leaked = leakage(splits)
    counts = splits.group_by("split").agg(
        pl.len().alias("studies"), pl.col("patient_id").n_unique().alias("patients")
    ).sort("split")
    return StageResult(
        "study_splits",
        {"study_splits": paths.splits_table},
        {"n_studies": splits.height, "by_split": TablePreview(counts.to_dicts()),
         **{f"n_{r['split']}": r["studies"] for r in counts.to_dicts()}},
        [
            CheckOutcome("no_patient_leakage", not leaked, blocking=True,
                         description="no patient appears in two splits",
                         metadata={"leaked_patients": len(leaked)}),
            contract_check(splits, "splits", params, blocking=True),
        ],
    )
