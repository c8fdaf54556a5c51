"""Incremental ingestion: drop-folder batches, reuse of unchanged files, idempotent re-runs, PHI policy."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from cxr_assets.config import IngestParams
from cxr_assets.ingest.catalog import accounting, ingest_sources, write_catalog, write_state
from tests.ingest.conftest import gradient, write_dicom


def _study(raw: Path, patient: str, study: str, report: str, seed: int) -> None:
    folder = raw / "files" / patient[:3] / patient / study
    write_dicom(folder / "img.dcm", gradient(16, 16, 255 - seed, np.uint8))
    (folder.parent / f"{study}.txt").write_text(report)


def _ingest(root: Path, options: IngestParams):
    result = ingest_sources(root / "raw", options, drop_dir=root / "incoming",
                            previous_catalog=root / "catalog", progress=False)
    write_catalog(result, root / "catalog")
    write_state(root / "catalog", options)
    return result


def test_batches_reuse_and_idempotency(tmp_path):
    options = IngestParams(layout="mimic_cxr")
    _study(tmp_path / "raw", "p10000001", "s50000001", "IMPRESSION: Normal chest.", 1)
    _study(tmp_path / "raw", "p10000002", "s50000002", "IMPRESSION: Small effusion.", 2)

    first = _ingest(tmp_path, options)
    assert first.studies["batch_id"].to_list() == ["base", "base"]
    assert first.n_reused == 0

    again = _ingest(tmp_path, options)  # nothing changed: nothing read, nothing added
    assert again.n_reused == 2
    assert again.studies.equals(first.studies) and again.images.equals(first.images)
    assert again.batches["first_ingested"].to_list() == first.batches["first_ingested"].to_list()

    # A new batch lands in the drop folder (hidden while copying, then renamed).
    _study(tmp_path / "incoming" / ".b1", "p10000003", "s50000003", "IMPRESSION: Pneumothorax.", 3)
    assert _ingest(tmp_path, options).studies.height == 2  # hidden: still uploading
    (tmp_path / "incoming" / ".b1").rename(tmp_path / "incoming" / "b1")
    third = _ingest(tmp_path, options)
    assert third.studies.filter(pl.col("batch_id") == "b1")["study_id"].to_list() == ["s50000003"]
    assert third.n_reused == 2  # the base images were not read again
    assert third.batches["batch_id"].to_list() == ["base", "b1"]
    assert accounting(third)["balanced"]

    # The same files dropped again as another batch add nothing; each is quarantined with the reason.
    shutil.copytree(tmp_path / "raw", tmp_path / "incoming" / "b2")
    fourth = _ingest(tmp_path, options)
    assert fourth.studies.equals(third.studies)
    b2 = fourth.quarantine.filter(pl.col("path").str.contains("/b2/"))
    assert b2.height == 4  # 2 images + 2 reports
    assert set(b2["reason"]) == {"study s50000001 already catalogued from batch base",
                                 "study s50000002 already catalogued from batch base"}
    assert fourth.batches.filter(pl.col("batch_id") == "b2")["n_catalogued"].item() == 0
    assert accounting(fourth)["balanced"]


def test_changed_file_is_read_again(tmp_path):
    options = IngestParams(layout="mimic_cxr")
    _study(tmp_path / "raw", "p10000001", "s50000001", "IMPRESSION: Normal chest.", 1)
    first = _ingest(tmp_path, options)
    image = Path(first.images["image_path"].item())
    write_dicom(image, gradient(20, 20, 100, np.uint8))  # new content, same path
    second = _ingest(tmp_path, options)
    assert second.n_reused == 0
    assert second.images["file_sha256"].item() != first.images["file_sha256"].item()
    # A different PHI policy must not trust the previous checks either.
    third = _ingest(tmp_path, IngestParams(layout="mimic_cxr", phi_policy="strip"))
    assert third.n_reused == 0


@pytest.mark.parametrize("policy", ["refuse", "strip", "allow"])
def test_phi_policy_on_reports(tmp_path, policy):
    secret = "Dictated by Dr. Harold Whitfield on 03/14/2021, call 555-867-5309."
    _study(tmp_path / "raw", "p10000001", "s50000001", f"IMPRESSION: Normal chest. {secret}", 1)
    _study(tmp_path / "raw", "p10000002", "s50000002", "IMPRESSION: Small effusion.", 2)
    result = _ingest(tmp_path, IngestParams(layout="mimic_cxr", phi_policy=policy))
    assert accounting(result)["balanced"]
    everything = " ".join(
        str(v) for table in (result.studies, result.images, result.reports, result.quarantine)
        for row in table.iter_rows() for v in row
    )
    if policy == "refuse":
        assert result.studies["study_id"].to_list() == ["s50000002"]
        reason = result.quarantine.filter(pl.col("path").str.ends_with(".txt"))["reason"].item()
        assert "report text contains" in reason and "phi_policy is refuse" in reason
    elif policy == "strip":
        text = result.reports.filter(pl.col("study_id") == "s50000001")["report_text"].item()
        assert "Normal chest." in text and "[PHI]" in text
        assert result.n_phi_stripped == 1
    else:
        assert "Whitfield" in everything
    if policy != "allow":
        for planted in ("Whitfield", "03/14/2021", "555-867-5309"):
            assert planted not in everything
