"""Contracts on large tables run in bounded pieces and reach the whole-table verdict.

Row-wise expectations are validated chunk by chunk and merged (a failure in any chunk fails the
table, counts add up), `mostly` expectations and uniqueness see every row, and pandas, Polars
and Parquet inputs give the same result.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from cxr_assets.quality.contracts import run_contract
from tests.quality.test_quality_contracts import (
    CONTRACTS,
    _failed,
    good_images,
    good_reports,
    good_splits,
    good_studies,
)


def _inputs(frame: pl.DataFrame, tmp_path: Path, name: str):
    path = tmp_path / f"{name}.parquet"
    frame.write_parquet(path, row_group_size=4)
    return {"pandas": frame.to_pandas(), "polars": frame, "parquet": path}


def _broken_tables() -> dict[str, pl.DataFrame]:
    studies = good_studies().with_columns(
        pl.when(pl.col("study_id") == "s50000019").then(pl.lit("s50000000"))
        .otherwise(pl.col("study_id")).alias("study_id"),  # duplicate far apart: chunks differ
        pl.when(pl.int_range(pl.len()) == 17).then(None).otherwise(pl.col("patient_id"))
        .alias("patient_id"),  # one null, in the last chunk only
    )
    images = good_images().with_columns(
        pl.when(pl.int_range(pl.len()) == 13).then(pl.lit("OBLIQUE"))
        .otherwise(pl.col("view_position")).alias("view_position"))
    splits = pl.concat([good_splits(), good_splits().tail(1)])
    return {"studies": studies, "images": images, "splits": splits}


@pytest.mark.parametrize("suite", ["studies", "images", "splits"])
def test_chunked_verdict_equals_whole_table(suite, tmp_path):
    broken = _broken_tables()[suite]
    whole = run_contract(broken.to_pandas(), suite, CONTRACTS, chunk_rows=10_000)
    assert not whole.success and whole.failed
    for kind, data in _inputs(broken, tmp_path, suite).items():
        for chunk_rows in (1, 3, 7):
            result = run_contract(data, suite, CONTRACTS, chunk_rows=chunk_rows)
            assert (result.success, result.n_expectations) == (False, whole.n_expectations), kind
            assert _failed(result) == _failed(whole), (kind, chunk_rows)


def test_good_tables_pass_in_every_form(tmp_path):
    for suite, frame in {"studies": good_studies(), "images": good_images(),
                         "splits": good_splits(), "reports": good_reports()}.items():
        for kind, data in _inputs(frame, tmp_path, suite).items():
            assert run_contract(data, suite, CONTRACTS, chunk_rows=3).success, (suite, kind)


def test_counts_add_up_over_chunks():
    frame = good_studies().with_columns(pl.lit(None, dtype=pl.String).alias("patient_id"))
    result = run_contract(frame, "studies", CONTRACTS, chunk_rows=3)
    (nulls,) = [f for f in result.failed if f["column"] == "patient_id"]
    details = nulls["details"]
    assert details["element_count"] == 20 and details["unexpected_count"] == 20
    assert details["chunks"] == 7 and details["chunks_failed"] == 7  # ceil(20 / 3)
    assert details["unexpected_percent"] == pytest.approx(100.0)


def test_mostly_is_decided_on_the_whole_column():
    # 1 short report of 20 passes "mostly 0.95"; in a chunk of 4 it would be 25% and fail.
    one_short = good_reports().with_columns(
        pl.when(pl.col("study_id") == "s0").then(pl.lit(3)).otherwise(pl.col("n_chars"))
        .alias("n_chars"))
    assert run_contract(one_short, "reports", CONTRACTS, chunk_rows=4).success


def test_empty_table_and_bad_chunk_size(tmp_path):
    empty = good_splits().head(0)
    result = run_contract(_inputs(empty, tmp_path, "empty")["parquet"], "splits", CONTRACTS)
    assert result.n_expectations == run_contract(empty, "splits", CONTRACTS).n_expectations
    with pytest.raises(ValueError, match="chunk_rows"):
        run_contract(empty, "splits", CONTRACTS, chunk_rows=0)


def test_parquet_path_with_glob_characters(tmp_path):
    # A folder named like "site[1]" must be read as written, not expanded as a pattern.
    folder = tmp_path / "site[1] *?"
    folder.mkdir()
    path = folder / "studies.parquet"
    good_studies().write_parquet(path)
    assert run_contract(path, "studies", CONTRACTS, chunk_rows=3).success
    broken = folder / "broken.parquet"
    good_studies().with_columns(pl.lit(None, dtype=pl.String).alias("source")).write_parquet(broken)
    assert _failed(run_contract(broken, "studies", CONTRACTS, chunk_rows=3)) == {
        ("expect_column_values_to_not_be_null", "source")}
