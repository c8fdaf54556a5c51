"""Header-only scan of a MIMIC-like tree: catalog, quarantine reasons, accounting, DuckDB write."""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest

from cxr_assets.ingest.catalog import (
    IMAGES_SCHEMA,
    STUDIES_SCHEMA,
    accounting,
    scan_layout,
    scan_mimic_layout,
    write_catalog,
)
from cxr_assets.schemas import QUARANTINE_SCHEMA
from tests.ingest.conftest import (
    RG1_J2KR,
    RG1_UNCR,
    SIIM_FAKE_MONO1,
    SIIM_ORIGINAL,
    gradient,
    needs_shared,
    write_dicom,
)


def _reasons(result) -> dict[str, str]:
    return {Path(r["path"]).name: r["reason"] for r in result.quarantine.iter_rows(named=True)}


def _all_files(raw: Path) -> set[str]:
    return {str(Path(d) / f) for d, _, names in os.walk(raw / "files") for f in names}


def test_scan_catalogues_good_studies(mimic_tree):
    result = scan_mimic_layout(mimic_tree, source="unit", progress=False)
    assert result.studies["study_id"].to_list() == ["s50000001", "s50000002"]
    assert result.studies["patient_id"].to_list() == ["p10000001", "p10000002"]
    assert result.studies["n_images"].to_list() == [2, 1]
    assert set(result.studies["source"]) == {"unit"}
    images = {Path(r["image_path"]).name: r for r in result.images.iter_rows(named=True)}
    assert set(images) == {"a8.dcm", "b12.dcm", "c16.dcm"}
    assert (images["b12.dcm"]["photometric"], images["b12.dcm"]["bits_stored"]) == (
        "MONOCHROME1",
        12,
    )
    assert (images["b12.dcm"]["rows"], images["b12.dcm"]["columns"]) == (32, 24)
    assert images["b12.dcm"]["view_position"] == "LL"
    assert images["c16.dcm"]["bits_stored"] == 16
    assert all(len(r["file_sha256"]) == 64 for r in images.values())
    assert result.images["image_id"].is_unique().all()
    assert dict(result.studies.schema) == STUDIES_SCHEMA
    assert dict(result.images.schema) == IMAGES_SCHEMA
    assert dict(result.quarantine.schema) == QUARANTINE_SCHEMA


def test_quarantine_reasons_and_accounting(mimic_tree):
    result = scan_mimic_layout(mimic_tree, progress=False)
    reasons = _reasons(result)
    assert "empty file" in reasons["empty.dcm"]
    assert "not a DICOM file" in reasons["notes.dcm"]
    assert reasons["s50000003.txt"] == "study has no valid image"
    assert "no report" in reasons["d.dcm"]
    assert reasons["s50000005.txt"] == "report without image folder"
    assert "unexpected location" in reasons["README.txt"]
    assert set(result.quarantine["stage"]) == {"raw_studies"}
    by_name = {Path(r["path"]).name: r["study_id"] for r in result.quarantine.iter_rows(named=True)}
    assert by_name["d.dcm"] == "s50000004" and by_name["README.txt"] is None

    books = accounting(result)
    assert books == {"inputs": 11, "catalogued": 5, "quarantined": 6, "balanced": True}
    # Every input file is in exactly one place.
    placed = (
        result.images["image_path"].to_list()
        + result.studies["report_origin"].to_list()
        + result.quarantine["path"].to_list()
    )
    assert len(placed) == len(set(placed))
    assert set(placed) == _all_files(mimic_tree)


def test_accounting_detects_a_lost_file(mimic_tree):
    result = scan_mimic_layout(mimic_tree, progress=False)
    result.quarantine = result.quarantine.head(result.quarantine.height - 1)
    assert accounting(result)["balanced"] is False


def test_duplicate_uid_and_multiframe_are_quarantined(tmp_path):
    study = tmp_path / "raw" / "files" / "p10" / "p10000009" / "s59000000"
    write_dicom(study / "a.dcm", gradient(4, 4, 255, np.uint8), sop_uid="1.2.826.0.1.9")
    write_dicom(study / "b.dcm", gradient(4, 4, 200, np.uint8), sop_uid="1.2.826.0.1.9")
    write_dicom(study / "c.dcm", np.stack([gradient(4, 4, 255, np.uint8)] * 2), frames=2)
    write_dicom(study / "d.dcm", gradient(4, 4, 255, np.uint8), photometric="PALETTE COLOR")
    (study.parent / "s59000000.txt").write_text("IMPRESSION: normal")
    result = scan_mimic_layout(tmp_path / "raw", progress=False)
    reasons = _reasons(result)
    assert result.images["image_path"].to_list() == [str(study / "a.dcm")]
    assert "duplicate SOPInstanceUID 1.2.826.0.1.9" in reasons["b.dcm"]
    assert "multi-frame" in reasons["c.dcm"]
    assert "PALETTE COLOR" in reasons["d.dcm"]
    assert accounting(result)["balanced"]


def test_missing_folders_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="raw data folder not found"):
        scan_mimic_layout(tmp_path / "absent", progress=False)
    (tmp_path / "raw").mkdir()
    with pytest.raises(FileNotFoundError, match="no 'files' folder"):
        scan_mimic_layout(tmp_path / "raw", progress=False)
    with pytest.raises(ValueError, match="unknown dataset layout 'nope'"):
        scan_layout(tmp_path / "raw", layout="nope")


def test_write_catalog_is_idempotent(mimic_tree, tmp_path):
    catalog = tmp_path / "catalog"
    result = scan_mimic_layout(mimic_tree, progress=False)
    paths = write_catalog(result, catalog)
    assert {k: p.name for k, p in paths.items()} == {
        "studies": "studies.parquet",
        "images": "images.parquet",
        "reports": "reports.parquet",
        "quarantine": "quarantine.parquet",
        "ingest_batches": "ingest_batches.parquet",
        "duckdb": "catalog.duckdb",
    }
    assert pl.read_parquet(paths["images"]).equals(result.images)

    again = scan_mimic_layout(mimic_tree, progress=False)
    write_catalog(again, catalog)
    with duckdb.connect(str(paths["duckdb"]), read_only=True) as con:
        counts = {
            t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("studies", "images", "quarantine")
        }
        ids = [
            r[0] for r in con.execute("SELECT study_id FROM studies ORDER BY study_id").fetchall()
        ]
    assert counts == {"studies": 2, "images": 3, "quarantine": 6}
    assert ids == ["s50000001", "s50000002"]
    assert pl.read_parquet(paths["studies"]).equals(again.studies)
    assert not list(catalog.glob(".*tmp*"))  # no temporary files left behind


def test_write_catalog_keeps_other_duckdb_tables(mimic_tree, tmp_path):
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    with duckdb.connect(str(catalog / "catalog.duckdb")) as con:
        con.execute("CREATE TABLE notes AS SELECT 1 AS x")
    write_catalog(scan_mimic_layout(mimic_tree, progress=False), catalog)
    with duckdb.connect(str(catalog / "catalog.duckdb"), read_only=True) as con:
        assert con.execute("SELECT x FROM notes").fetchone() == (1,)


@needs_shared(RG1_UNCR, RG1_J2KR, SIIM_ORIGINAL, SIIM_FAKE_MONO1)
def test_scan_real_dicom_files(tmp_path):
    patient = tmp_path / "raw" / "files" / "p10" / "p10000100"
    for study, sources in {
        "s51000001": [RG1_UNCR, RG1_J2KR],
        "s51000002": [SIIM_ORIGINAL, SIIM_FAKE_MONO1],
    }.items():
        (patient / study).mkdir(parents=True)
        for src in sources:
            (patient / study / src.name).symlink_to(src)
        (patient / f"{study}.txt").write_text("IMPRESSION: No acute disease.")
    result = scan_mimic_layout(tmp_path / "raw", source="real", progress=False)
    assert accounting(result)["balanced"]
    assert result.studies["n_images"].to_list() == [2, 1]
    rg1 = result.images.filter(pl.col("study_id") == "s51000001")
    assert set(rg1["photometric"]) == {"MONOCHROME1"} and set(rg1["bits_stored"]) == {15}
    # The header-edited copy keeps the original's SOPInstanceUID: one of the two is a duplicate.
    reasons = _reasons(result)
    assert len(reasons) == 1 and "duplicate SOPInstanceUID" in next(iter(reasons.values()))
