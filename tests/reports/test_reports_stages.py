"""The report stages end to end on real IU reports: texts + labels, profile, splits, variants."""

from __future__ import annotations

import polars as pl
import pytest

from cxr_assets.config import parse_params
from cxr_assets.paths import ProjectPaths
from tests.helpers import SHARED_DATA

IU_CSV = SHARED_DATA / "iu_xray" / "indiana_reports.csv"
pytestmark = pytest.mark.skipif(not IU_CSV.is_file(), reason="shared IU data not available")


def _project(tmp_path, n: int = 240, **overrides):
    from cxr_assets.reports.sections import text_from_columns

    iu = pl.read_csv(IU_CSV, infer_schema_length=0).head(n)
    rows = []
    for row in iu.iter_rows(named=True):
        path = tmp_path / "reports" / f"{row['uid']}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text_from_columns(indication=row["indication"], comparison=row["comparison"],
                                          findings=row["findings"], impression=row["impression"])
                        or "\n")
        rows.append({"study_id": f"CXR{row['uid']}", "patient_id": f"CXR{row['uid']}",
                     "report_origin": str(path), "source": "iu_xray", "n_images": 1,
                     "report_text": path.read_text()})
    params = parse_params({"paths": {"catalog_dir": "catalog", "reports_dir": "out"}, **overrides})
    paths = ProjectPaths.from_params(params, root=tmp_path)
    paths.catalog_dir.mkdir(parents=True)
    table = pl.DataFrame(rows)
    table.drop("report_text").write_parquet(paths.studies_table)
    table.select("study_id", "report_origin", "report_text").write_parquet(paths.catalog_reports_table)
    return params, paths


def test_report_stages_on_real_iu_reports(tmp_path):
    from cxr_assets.stages import report_profile, report_texts, report_variants, study_splits

    params, paths = _project(tmp_path)
    texts = report_texts.run(params, paths, progress=False)
    reports = pl.read_parquet(paths.report_texts_table)
    labels = pl.read_parquet(paths.labels_table)
    assert labels["study_id"].to_list() == reports["study_id"].to_list()
    assert texts.metadata["n_quarantined"] >= 1  # IU has reports with both sections empty
    assert not reports["report_for_training"].str.contains("XXXX").any()  # de-id -> marker
    assert reports["report_text"].str.contains("XXXX").any()  # the original is kept
    assert 0.2 < texts.metadata["positive_cardiomegaly"] + texts.metadata["positive_lung_opacity"] < 1.0

    profile = report_profile.run(params, paths, progress=False)
    checks = {c.name: c for c in profile.checks}
    assert checks["reports_contract"].passed
    assert 0.05 < profile.metadata["impression_only_share"] < 0.5
    assert profile.metadata["deid_share"] > 0.2
    # The reference profile is the demo data's: real IU text is a different mix, a warning.
    assert not checks["reports_drift"].passed and not checks["reports_drift"].blocking
    assert (paths.report_profile_dir / "drift.json").is_file()

    splits = study_splits.run(params, paths, progress=False)
    checks = {c.name: c for c in splits.checks}
    assert checks["no_patient_leakage"].passed and checks["splits_contract"].passed
    assert checks["no_identical_train_test_text"].metadata["identical_test_reports"] > 0

    variants = report_variants.run(params, paths, progress=False)
    assert all(c.passed for c in variants.checks)
    table = pl.read_parquet(paths.report_variants_table)
    train_ids = set(pl.read_parquet(paths.splits_table).filter(pl.col("split") == "train")["study_id"])
    assert train_ids <= set(table.filter(pl.col("split") == "train")["study_id"])
    assert table["hard_negative"].is_not_null().mean() > 0.8


def test_official_r2gen_split_is_honoured(tmp_path):
    from cxr_assets.quality.splits import load_official_splits
    from cxr_assets.stages import report_texts, study_splits

    r2gen = SHARED_DATA / "iu_xray" / "r2gen_annotation.json"
    params, paths = _project(tmp_path, n=120, splits={"official_split_file": str(r2gen)})
    report_texts.run(params, paths, progress=False)
    study_splits.run(params, paths, progress=False)
    official = load_official_splits(r2gen)
    splits = pl.read_parquet(paths.splits_table)
    listed = [(s, official.get(s)) for s in splits["study_id"].to_list()]
    ours = dict(zip(splits["study_id"], splits["split"]))
    assert sum(o is not None for _, o in listed) > 50
    assert all(ours[s] == o for s, o in listed if o is not None)


def test_broken_reports_fail_the_contract_naming_it(tmp_path):
    from cxr_assets.stages import report_profile, report_texts

    params, paths = _project(tmp_path, n=40, quality={"impression_only_share": [0.9, 1.0]})
    report_texts.run(params, paths, progress=False)
    result = report_profile.run(params, paths, progress=False)
    check = {c.name: c for c in result.checks}["reports_contract"]
    assert not check.passed and check.blocking
    assert "expect_column_mean_to_be_between(impression_only)" in check.metadata["failed_expectations"]
