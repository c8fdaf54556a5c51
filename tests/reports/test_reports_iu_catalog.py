"""The report stages on the real IU reports, ingested as users ingest them (layout iu_xray).

raw_studies (report-only: IU pixels are not available offline) -> report_texts -> report_profile
-> study_splits (the official R2Gen split) -> report_variants: every blocking check passes, the
profile shows IU's real mix, no patient crosses splits, every training report has variants.
"""

from __future__ import annotations

import polars as pl
import pytest

from cxr_assets.config import parse_params
from cxr_assets.paths import ProjectPaths
from cxr_assets.stages import stage_module
from tests.helpers import SHARED_DATA

IU = SHARED_DATA / "iu_xray"
pytestmark = [pytest.mark.shared_data,
              pytest.mark.skipif(not (IU / "indiana_reports.csv").is_file(), reason="shared IU data not available")]


def test_iu_reports_through_the_catalog_and_report_stages(tmp_path):
    params = parse_params({
        "paths": {"raw_dir": str(IU), "catalog_dir": "catalog", "image_cache_dir": "cache",
                  "reports_dir": "out"},
        "ingest": {"layout": "auto", "require_images": False, "source_name": "iu_xray"},
        "splits": {"official_split_file": str(IU / "r2gen_annotation.json")},
    })
    paths = ProjectPaths.from_params(params, root=tmp_path)
    results = {}
    for name in ("raw_studies", "report_texts", "report_profile", "study_splits", "report_variants"):
        results[name] = stage_module(name).run(params, paths, progress=False)
        failed = [c.name for c in results[name].checks if c.blocking and not c.passed]
        assert not failed, f"{name}: {failed}"

    assert "auto-detected iu_xray" in results["raw_studies"].metadata["layout"].text
    studies = results["raw_studies"].metadata["n_studies"]
    assert studies > 3000 and results["report_texts"].metadata["n_reports"] == studies
    profile = results["report_profile"].metadata
    assert 0.05 < profile["impression_only_share"] < 0.3  # IU: many impression-only notes
    assert profile["deid_share"] > 0.2  # XXXX de-identification tokens
    splits = pl.read_parquet(paths.splits_table)
    assert splits.group_by("patient_id").agg(pl.col("split").n_unique())["split"].max() == 1
    assert set(splits["split"]) == {"train", "val", "test"}
    variants = pl.read_parquet(paths.report_variants_table)
    train_ids = set(splits.filter(pl.col("split") == "train")["study_id"])
    texts = pl.read_parquet(paths.report_texts_table)
    assert train_ids & set(texts["study_id"]) <= set(variants["study_id"])
