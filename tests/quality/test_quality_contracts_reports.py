"""New suites: report_variants (blocking) and reports_drift (warning); labels/variants schemas."""

from __future__ import annotations

import polars as pl
import pytest

from cxr_assets.quality.contracts import CONTRACTS_DIR, run_contract, schema_problems
from cxr_assets.quality.drift import (
    DRIFT_MEASURES,
    drift_overrides,
    load_reference,
    reference_measures,
    write_reference,
)
from cxr_assets.reports.labeler import LABELS_SCHEMA
from cxr_assets.reports.variants import VARIANTS_SCHEMA, build_variants


def _variants() -> pl.DataFrame:
    reports = pl.DataFrame({
        "study_id": [f"s{i}" for i in range(6)],
        "report_for_training": ["No pneumothorax. Small left effusion."] * 6,
        "findings": ["No pneumothorax."] * 6,
        "impression": ["Small left effusion."] * 6,
    })
    splits = pl.DataFrame({"study_id": [f"s{i}" for i in range(6)],
                           "split": ["train", "train", "train", "val", "test", "test"]})
    return build_variants(reports, splits, seed=1, progress=False)


def test_report_variants_suite_passes_good_and_names_failures():
    good = _variants()
    assert run_contract(good.to_pandas(), "report_variants", CONTRACTS_DIR).success
    bad = good.with_columns(
        pl.when(pl.int_range(pl.len()) == 0).then(pl.lit("holdout")).otherwise(pl.col("split")).alias("split"),
        pl.when(pl.int_range(pl.len()) == 1).then(pl.lit(None)).otherwise(pl.col("positive")).alias("positive"),
    )
    result = run_contract(bad.to_pandas(), "report_variants", CONTRACTS_DIR)
    failed = {(f["expectation"], f["column"]) for f in result.failed}
    assert not result.success
    assert ("expect_column_values_to_be_in_set", "split") in failed
    assert ("expect_column_values_to_not_be_null", "positive") in failed


def _profile(impression_only_share: float, n: int = 100) -> pl.DataFrame:
    k = int(n * impression_only_share)
    return pl.DataFrame({
        "impression_only": [True] * k + [False] * (n - k),
        "has_findings": [False] * k + [True] * (n - k),
        "templated_normal": [i % 3 == 0 for i in range(n)],
        "comparison_to_prior": [i % 4 == 0 for i in range(n)],
        "numbered_list": [i % 10 == 0 for i in range(n)],
        "abbreviation_density": [0.05] * n,
    })


def test_drift_suite_warns_when_the_mix_moves(tmp_path):
    path = write_reference(_profile(0.2), tmp_path / "reference.json")
    reference = load_reference(path)
    assert set(reference) == set(DRIFT_MEASURES) and reference["impression_only"] == 0.2
    overrides = drift_overrides(reference, 0.1)
    same = run_contract(_profile(0.25).to_pandas(), "reports_drift", CONTRACTS_DIR, overrides)
    assert same.success
    moved = run_contract(_profile(0.6).to_pandas(), "reports_drift", CONTRACTS_DIR, overrides)
    failed = {f["column"] for f in moved.failed}
    assert not moved.success and failed == {"impression_only", "has_findings"}


def test_reference_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_reference(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"measures": {"impression_only": 0.1}}')
    with pytest.raises(ValueError, match="needs 'measures'"):
        load_reference(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="empty profile"):
        reference_measures(_profile(0.1).head(0))


def test_shipped_reference_profile_is_valid():
    reference = load_reference(CONTRACTS_DIR / "reference" / "report_profile.json")
    assert all(0.0 <= v <= 1.0 for v in reference.values())


@pytest.mark.parametrize("table, schema", [
    ("report_variants", VARIANTS_SCHEMA),
    ("report_labels", {"study_id": pl.String, **LABELS_SCHEMA}),
])
def test_new_schema_files_match_the_code(table, schema):
    assert schema_problems(pl.DataFrame(schema=schema), table, CONTRACTS_DIR) == []
