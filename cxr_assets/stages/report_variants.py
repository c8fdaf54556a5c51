"""report_variants: style variants and hard negatives of every report, for text training.

Per report: abbreviated / expanded forms, impression-only, findings -> impression, sentences
shuffled within sections and a rule-based house-style rewrite, each with a hard negative
(negation flip, left/right swap or finding swap). Deterministic in reports.variant_seed. The
text encoder trains on split == "train" rows; the other splits are for evaluation.
"""

from __future__ import annotations

import polars as pl

from cxr_assets.config import Params
from cxr_assets.paths import ProjectPaths
from cxr_assets.stages.base import StageResult, TablePreview, require, write_parquet
from cxr_assets.stages.contracts import contract_check


def run(params: Params, paths: ProjectPaths, progress: bool = True) -> StageResult:
    from cxr_assets.reports.variants import build_variants

    require("report_variants", {"report_texts": [paths.report_texts_table],
                                "study_splits": [paths.splits_table]})
    reports = pl.read_parquet(paths.report_texts_table)
    splits = pl.read_parquet(paths.splits_table)
    r = params.reports
    variants = build_variants(reports, splits, seed=r.variant_seed, kinds=tuple(r.variant_kinds),
                              abbreviation_rate=r.abbreviation_rate, progress=progress)
    write_parquet(variants, paths.report_variants_table)

    # Every report with a split must have at least one variant row.
    expected = reports.join(splits.select("study_id"), on="study_id", how="semi")["study_id"]
    covered = set(variants["study_id"].to_list())
    uncovered = [s for s in expected.to_list() if s not in covered]
    by_kind = variants.group_by("variant_kind").agg(
        pl.len().alias("rows"), pl.col("hard_negative").is_not_null().mean().round(3)
        .alias("with_hard_negative")
    ).sort("variant_kind")
    contract = contract_check(variants, "report_variants", params, blocking=True)
    contract.passed = contract.passed and not uncovered
    contract.metadata["reports_without_variants"] = len(uncovered)
    return StageResult(
        "report_variants",
        {"report_variants": paths.report_variants_table},
        {
            "n_rows": variants.height,
            "n_reports": len(covered),
            "n_train_rows": variants.filter(pl.col("split") == "train").height,
            "by_kind": TablePreview(by_kind.to_dicts()),
            "preview": TablePreview(
                variants.select("variant_kind", "positive", "negative_kind", "hard_negative")
                .head(6).to_dicts()
            ),
        },
        [contract],
    )
