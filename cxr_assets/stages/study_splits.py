"""study_splits: patient-level train/val/test assignment, deterministic by hash.

A patient's studies always share one split. Patients are stratified by source and by the
labeler's normal/abnormal call (splits.stratify), and an official split file (MIMIC-CXR split
CSV, R2Gen IU annotation; splits.official_split_file) wins for the studies it lists. The leakage
check is blocking; identical report text across train and test is a warning.
"""

from __future__ import annotations

import polars as pl

from cxr_assets.config import Params
from cxr_assets.paths import ProjectPaths
from cxr_assets.stages.base import CheckOutcome, StageResult, TablePreview, require, write_parquet
from cxr_assets.stages.contracts import contract_check


def run(params: Params, paths: ProjectPaths, progress: bool = True) -> StageResult:
    from cxr_assets.quality.splits import (
        assign_splits,
        assign_stratified_splits,
        identical_texts_across,
        leakage,
        load_official_splits,
    )

    require("study_splits", {"report_texts": [paths.report_texts_table]})
    # Only studies that survived report parsing can be trained or evaluated on.
    reports = pl.read_parquet(paths.report_texts_table)
    studies = reports.select("study_id", "patient_id", "source")
    s = params.splits
    official = load_official_splits(paths.at(s.official_split_file)) if s.official_split_file else None
    if s.stratify or official:
        # Labels come with report_texts; older catalogs without them are split by source only.
        labels = pl.read_parquet(paths.labels_table) if paths.labels_table.exists() else None
        splits = assign_stratified_splits(
            studies, train=s.train, val=s.val, test=s.test, salt=s.salt,
            labels=labels if s.stratify else None, official=official,
        )
    else:
        splits = assign_splits(studies, train=s.train, val=s.val, test=s.test, salt=s.salt)
    write_parquet(splits, paths.splits_table)
    leaked = leakage(splits)
    identical = identical_texts_across(splits, reports, "train", "test")
    n_test = splits.filter(pl.col("split") == "test").height
    identical_share = round(identical.height / n_test, 4) if n_test else 0.0
    counts = splits.group_by("split").agg(
        pl.len().alias("studies"), pl.col("patient_id").n_unique().alias("patients")
    ).sort("split")
    return StageResult(
        "study_splits",
        {"study_splits": paths.splits_table},
        {"n_studies": splits.height, "by_split": TablePreview(counts.to_dicts()),
         "stratified": s.stratify, "official_split_file": s.official_split_file or "none",
         "identical_test_share": identical_share,
         **{f"n_{r['split']}": r["studies"] for r in counts.to_dicts()}},
        [
            CheckOutcome("no_patient_leakage", not leaked, blocking=True,
                         description="no patient appears in two splits",
                         metadata={"leaked_patients": len(leaked),
                                   "examples": ", ".join(leaked[:10]) or "none"}),
            contract_check(splits, "splits", params, blocking=True),
            CheckOutcome(
                "no_identical_train_test_text",
                identical_share <= params.quality.max_identical_test_share,
                blocking=False,
                description="share of test reports word-identical to a train report is at most "
                            "quality.max_identical_test_share (templated normals inflate it)",
                metadata={"identical_test_reports": identical.height, "test_reports": n_test,
                          "share": identical_share,
                          "limit": params.quality.max_identical_test_share,
                          "most_common": TablePreview(
                              identical.group_by("key").len().sort("len", descending=True)
                              .head(5).rename({"key": "text", "len": "studies"}).to_dicts())},
            ),
        ],
    )
