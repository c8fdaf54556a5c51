"""Each GX suite passes on good data and fails, naming the expectation, on broken data."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from cxr_assets.ingest.catalog import (
    BATCHES_SCHEMA,
    IMAGES_SCHEMA,
    REPORTS_SCHEMA,
    STUDIES_SCHEMA,
)
from cxr_assets.quality.contracts import (
    ContractError,
    flatten_overrides,
    load_suite,
    run_contract,
    schema_problems,
)
from cxr_assets.reports.profile import PROFILE_SCHEMA
from cxr_assets.reports.sections import REPORT_TEXTS_SCHEMA
from cxr_assets.schemas import QUARANTINE_SCHEMA

CONTRACTS = Path(__file__).resolve().parents[2] / "data_contracts"
N = 20


def _failed(result) -> set[tuple[str, str | None]]:
    return {(f["expectation"], f["column"]) for f in result.failed}


def good_studies() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "study_id": [f"s{50000000 + i}" for i in range(N)],
            "patient_id": [f"p{10000000 + i // 2}" for i in range(N)],
            "source": ["demo"] * N,
            "batch_id": ["base"] * N,
            "report_origin": [f"/data/s{i}.txt" for i in range(N)],
            "n_images": [1 + i % 2 for i in range(N)],
        },
        schema=STUDIES_SCHEMA,
    )


def good_images() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "image_id": [f"1.2.3.{i}" for i in range(N)],
            "study_id": [f"s{50000000 + i}" for i in range(N)],
            "patient_id": [f"p{10000000 + i}" for i in range(N)],
            "image_path": [f"/data/{i}.dcm" for i in range(N)],
            "image_format": ["dicom"] * N,
            "file_sha256": [f"{i:064x}" for i in range(N)],
            "file_size": [1000 + i for i in range(N)],
            "file_mtime_ns": [10**18 + i for i in range(N)],
            "modality": ["CR"] * N,
            "view_position": ["PA", "LATERAL", "AP", None] * (N // 4),
            "photometric": ["MONOCHROME1", "MONOCHROME2"] * (N // 2),
            "bits_stored": [8, 12, 15, 16] * (N // 4),
            "rows": [256] * N,
            "columns": [200] * N,
            "pixel_spacing": ["0.139\\0.139"] * N,
            "batch_id": ["base"] * N,
        },
        schema=IMAGES_SCHEMA,
    )


def good_reports() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "study_id": [f"s{i}" for i in range(N)],
            "patient_id": [f"p{i}" for i in range(N)],
            "report_for_training": ["Lungs are clear. No acute process."] * N,
            "n_chars": [34] * N,
            "impression_only": [i % 4 == 0 for i in range(N)],  # 25 %
        }
    )


def good_splits() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "study_id": [f"s{i}" for i in range(N)],
            "patient_id": [f"p{i // 2}" for i in range(N)],
            "split": (["train"] * 7 + ["val"] + ["test"] * 2) * (N // 10),
        }
    )


def test_studies_suite():
    assert run_contract(good_studies().to_pandas(), "studies", CONTRACTS).success
    broken = good_studies().with_columns(
        pl.when(pl.col("study_id") == "s50000001")
        .then(pl.lit("s50000000"))
        .otherwise(pl.col("study_id"))
        .alias("study_id"),
        pl.lit(None, dtype=pl.String).alias("patient_id"),
    )
    result = run_contract(broken.to_pandas(), "studies", CONTRACTS)
    assert not result.success
    assert _failed(result) == {
        ("expect_column_values_to_be_unique", "study_id"),
        ("expect_column_values_to_not_be_null", "patient_id"),
    }
    extra = run_contract(
        good_studies().with_columns(pl.lit(1).alias("surprise")).to_pandas(), "studies", CONTRACTS
    )
    assert _failed(extra) == {("expect_table_columns_to_match_set", None)}


def test_images_suite():
    result = run_contract(good_images().to_pandas(), "images", CONTRACTS)
    assert result.success and result.n_expectations == 12 and result.failed == []
    broken = good_images().with_columns(
        pl.lit("RGB").alias("photometric"),
        pl.lit(24, dtype=pl.Int64).alias("bits_stored"),
        pl.lit("OBLIQUE").alias("view_position"),
    )
    result = run_contract(broken.to_pandas(), "images", CONTRACTS)
    assert _failed(result) == {
        ("expect_column_values_to_be_in_set", "photometric"),
        ("expect_column_values_to_be_between", "bits_stored"),
        ("expect_column_values_to_be_in_set", "view_position"),
    }
    photometric = next(f for f in result.failed if f["column"] == "photometric")
    assert photometric["details"]["unexpected_count"] == N
    assert photometric["details"]["partial_unexpected_list"][0] == "RGB"


def test_reports_suite_and_overrides():
    good = good_reports().to_pandas()
    assert run_contract(good, "reports", CONTRACTS).success  # params defaults: band 0.02-0.8
    # The band comes from overrides: 25 % impression-only is outside [0.3, 0.6].
    strict = {"quality.impression_only_share_low": 0.3, "quality.impression_only_share_high": 0.6}
    result = run_contract(good, "reports", CONTRACTS, overrides=strict)
    assert _failed(result) == {("expect_column_mean_to_be_between", "impression_only")}
    assert result.failed[0]["details"]["observed_value"] == pytest.approx(0.25)
    assert result.failed[0]["details"]["kwargs"]["min_value"] == 0.3
    # Nested params-style overrides resolve the same placeholders.
    nested = {"quality": {"impression_only_share": [0.3, 0.6], "min_report_chars": 10}}
    assert not run_contract(good, "reports", CONTRACTS, overrides=nested).success

    broken = good_reports().with_columns(
        pl.when(pl.col("study_id").is_in(["s0", "s1", "s2"]))
        .then(pl.lit(3))
        .otherwise(pl.col("n_chars"))
        .alias("n_chars"),
        pl.when(pl.col("study_id") == "s5")
        .then(None)
        .otherwise(pl.col("report_for_training"))
        .alias("report_for_training"),
        pl.lit(True).alias("impression_only"),
    )
    result = run_contract(broken.to_pandas(), "reports", CONTRACTS)
    assert _failed(result) == {
        ("expect_column_values_to_be_between", "n_chars"),  # 3 of 20 short: below "mostly 0.95"
        ("expect_column_values_to_not_be_null", "report_for_training"),
        ("expect_column_mean_to_be_between", "impression_only"),
    }
    one_short = good_reports().with_columns(
        pl.when(pl.col("study_id") == "s0")
        .then(pl.lit(3))
        .otherwise(pl.col("n_chars"))
        .alias("n_chars")
    )
    assert run_contract(one_short.to_pandas(), "reports", CONTRACTS).success  # 1 of 20 is tolerated


def test_splits_suite():
    assert run_contract(good_splits().to_pandas(), "splits", CONTRACTS).success
    broken = pl.concat([good_splits(), good_splits().head(1)]).with_columns(
        pl.when(pl.col("study_id") == "s3")
        .then(pl.lit("holdout"))
        .otherwise(pl.col("split"))
        .alias("split")
    )
    result = run_contract(broken.to_pandas(), "splits", CONTRACTS)
    assert _failed(result) == {
        ("expect_column_values_to_be_in_set", "split"),
        ("expect_column_values_to_be_unique", "study_id"),
    }


def test_table_too_small_fails():
    result = run_contract(
        good_studies().head(2).to_pandas(),
        "studies",
        CONTRACTS,
        overrides={"quality.min_studies": 4},
    )
    assert _failed(result) == {("expect_table_row_count_to_be_between", None)}


def test_contract_errors(tmp_path):
    with pytest.raises(ContractError, match="no suite 'nope'"):
        run_contract(good_splits().to_pandas(), "nope", CONTRACTS)
    with pytest.raises(TypeError, match="pandas or Polars DataFrame or a Parquet path"):
        run_contract(good_splits().to_dicts(), "splits", CONTRACTS)  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match="missing.parquet"):
        run_contract(tmp_path / "missing.parquet", "splits", CONTRACTS)
    suites = tmp_path / "expectations"
    suites.mkdir()
    (suites / "odd.json").write_text(
        json.dumps(
            [
                {
                    "type": "expect_column_values_to_be_between",
                    "kwargs": {"column": "x", "min_value": "${quality.nope}"},
                }
            ]
        )
    )
    with pytest.raises(ContractError, match=r"placeholder \$\{quality.nope\} has no value"):
        load_suite(tmp_path, "odd")
    (suites / "typo.json").write_text(
        json.dumps([{"type": "expect_column_to_be_lovely", "kwargs": {"column": "x"}}])
    )
    with pytest.raises(ContractError, match="expect_column_to_be_lovely"):
        run_contract(good_splits().to_pandas(), "typo", tmp_path)


def test_flatten_overrides():
    flat = flatten_overrides(
        {"quality": {"impression_only_share": (0.1, 0.5), "min_report_chars": 5}}
    )
    assert flat["quality.impression_only_share_low"] == 0.1
    assert flat["quality.impression_only_share_high"] == 0.5
    assert flat["quality.min_report_chars"] == 5


@pytest.mark.parametrize(
    "table, schema",
    [
        ("studies", STUDIES_SCHEMA),
        ("images", IMAGES_SCHEMA),
        ("quarantine", QUARANTINE_SCHEMA),
        ("reports", REPORTS_SCHEMA),
        ("ingest_batches", BATCHES_SCHEMA),
        ("report_texts", REPORT_TEXTS_SCHEMA),
        ("report_profile", PROFILE_SCHEMA),
        (
            "study_images",
            {
                **IMAGES_SCHEMA,
                "cache_path": pl.String,
                "cache_key": pl.String,
                "was_cached": pl.Boolean,
                "pixel_sha256": pl.String,
            },
        ),
        ("study_splits", {"study_id": pl.String, "patient_id": pl.String, "split": pl.String}),
    ],
)
def test_schema_files_match_the_code(table, schema):
    assert schema_problems(pl.DataFrame(schema=schema), table, CONTRACTS) == []
    wrong = pl.DataFrame(schema={**schema, next(iter(schema)): pl.Int32, "extra": pl.String})
    problems = schema_problems(wrong, table, CONTRACTS)
    assert any("is Int32" in p for p in problems) and "unexpected column 'extra'" in problems
