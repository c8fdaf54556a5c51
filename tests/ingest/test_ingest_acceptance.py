"""Acceptance of ingestion on the real layouts in ../shared/data, through the stages users run.

For each source: params point at it, raw_studies -> study_images -> report_texts run as the
assets do, every stage's blocking checks pass (inputs = catalogued + quarantined at each step),
the quarantine reasons are readable, and a second raw_studies run adds nothing and reads no
unchanged file again. Pixels of IU, OpenI, CheXpert and PadChest are not available offline, so
those run report-only (ingest.require_images: false) and every image is quarantined as missing.
"""

from __future__ import annotations

import os

import numpy as np
import polars as pl
import pytest
from PIL import Image

from cxr_assets.config import parse_params
from cxr_assets.paths import ProjectPaths
from cxr_assets.stages import stage_module
from tests.helpers import SHARED_DATA

pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data not available"),
]
META = SHARED_DATA / "public_metadata"
COVID = SHARED_DATA / "images" / "covid_chestxray_2020-04"

SOURCES = {
    "iu_xray": ({"raw_dir": SHARED_DATA / "iu_xray"}, {"layout": "auto", "require_images": False}),
    "openi_xml": ({"raw_dir": SHARED_DATA / "iu_xray" / "openi_xml_sample"},
                  {"layout": "auto", "require_images": False}),
    "padchest": ({"raw_dir": META}, {"layout": "padchest", "require_images": False, "max_studies": 400}),
    "covid_manifest": ({"raw_dir": COVID}, {
        "layout": "csv_manifest", "metadata_csv": "metadata_licensed_xray.csv", "images_root": "images",
        "columns": {"image_path": "filename", "report_text": "clinical notes", "patient_id": "Patientid",
                    "view": "view"},
        "phi_policy": "strip"}),
}


def _project(tmp_path, paths: dict, ingest: dict):
    params = parse_params({
        "paths": {"raw_dir": str(paths["raw_dir"]), "catalog_dir": "catalog",
                  "image_cache_dir": "cache", "reports_dir": "out"},
        "ingest": {**ingest, "image_size": 64, "workers": 2, "drop_dir": "incoming"},
        "quality": {"min_studies": 1},
    })
    return params, ProjectPaths.from_params(params, root=tmp_path)


def _run(name, params, paths):
    result = stage_module(name).run(params, paths, progress=False)
    failed = [(c.name, c.metadata) for c in result.checks if c.blocking and not c.passed]
    assert not failed, f"{name}: blocking checks failed: {failed}"
    return result


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_real_layout_through_the_ingest_stages(tmp_path, source):
    params, paths = _project(tmp_path, *SOURCES[source])
    raw = _run("raw_studies", params, paths)
    meta = raw.metadata
    assert meta["n_studies"] > 0
    assert meta["n_inputs"] == sum(b["n_catalogued"] + b["n_quarantined"] for b in meta["batches"].rows)
    quarantine = pl.read_parquet(paths.quarantine_table)
    for reason in quarantine["reason"].unique():
        assert reason and not reason.startswith(("/", "Traceback")), reason
    images = _run("study_images", params, paths)
    texts = _run("report_texts", params, paths)
    assert texts.metadata["n_reports"] + texts.metadata["n_quarantined"] == meta["n_studies"]
    assert images.metadata["n_images"] + images.metadata["n_quarantined"] == meta["n_images"]

    again = _run("raw_studies", params, paths)
    assert again.metadata["n_reused_unchanged_files"] == meta["n_images"]
    assert pl.read_parquet(paths.studies_table)["study_id"].n_unique() == meta["n_studies"]
    assert pl.read_parquet(paths.quarantine_table).height == quarantine.height

    if source == "covid_manifest":  # the one real image + text set: every image decoded
        assert meta["n_quarantined"] == 0 and images.metadata["n_images"] == meta["n_images"] == 28
        masked = pl.read_parquet(paths.catalog_reports_table).filter(pl.col("phi_masked") != "")
        assert masked.height >= 1  # dated clinical notes are masked under phi_policy strip
    else:
        assert set(quarantine["reason"]) >= {"image file not found"}


def test_chexpert_without_reports_is_quarantined_with_the_fix(tmp_path):
    params, paths = _project(tmp_path, {"raw_dir": META}, {
        "layout": "chexpert", "metadata_csv": "chexpert_train.csv.gz", "max_studies": 300})
    result = stage_module("raw_studies").run(params, paths, progress=False)
    assert result.metadata["n_studies"] == 0
    assert "ingest.reports_csv" in result.metadata["layout"].text
    books = next(c for c in result.checks if c.name == "accounting_balanced")
    assert books.passed and books.metadata["catalogued"] == 0


def _spine_brighter_than_lungs(path) -> bool:
    """Polarity: on a PA chest film the mediastinum/spine column is denser (brighter) than the lungs."""
    image = np.asarray(Image.open(path), dtype=np.float32)
    rows = slice(image.shape[0] // 3, 2 * image.shape[0] // 3)
    width = image.shape[1]
    centre = image[rows, int(width * 0.45):int(width * 0.55)].mean()
    lungs = (image[rows, int(width * 0.2):int(width * 0.3)].mean()
             + image[rows, int(width * 0.7):int(width * 0.8)].mean()) / 2
    return centre > lungs


def test_real_dicoms_as_a_pacs_tree_come_out_with_correct_polarity(tmp_path):
    import pydicom

    tree = tmp_path / "pacs"
    for source in sorted((SHARED_DATA / "dicom").rglob("*.dcm")):
        link = tree / source.parent.name / source.name
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(source, link)
        uid = pydicom.dcmread(source, stop_before_pixels=True).StudyInstanceUID
        (tree / f"{uid}.txt").write_text("FINDINGS: Lungs are clear.\nIMPRESSION: No acute disease.\n")
    params, paths = _project(tmp_path, {"raw_dir": tree}, {"layout": "auto", "phi_policy": "strip"})
    raw = _run("raw_studies", params, paths)
    assert "dicom_tree" in raw.metadata["layout"].text
    _run("study_images", params, paths)
    cached = pl.read_parquet(paths.study_images_table)
    # MONOCHROME1 (RG1, 15 bit) and JPEG-baseline MONOCHROME2 (SIIM) are both catalogued.
    assert {"MONOCHROME1", "MONOCHROME2"} <= set(cached["photometric"])
    for row in cached.iter_rows(named=True):
        assert _spine_brighter_than_lungs(row["cache_path"]), row["image_path"]
    reasons = pl.read_parquet(paths.quarantine_table)["reason"].to_list()
    assert all(r.startswith("duplicate SOPInstanceUID") for r in reasons), reasons  # re-encoded copies
