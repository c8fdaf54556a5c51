"""Image cache: decode + resize + pad to PNG, content-keyed, never decoding unchanged inputs twice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from cxr_assets.ingest import image_cache
from cxr_assets.ingest.catalog import scan_mimic_layout
from cxr_assets.ingest.image_cache import cache_images, cache_key, resize_and_pad
from tests.ingest.conftest import gradient, write_dicom


def _images(raw):
    return scan_mimic_layout(raw, progress=False).images


def test_cache_writes_padded_pngs_and_second_run_decodes_nothing(mimic_tree, tmp_path, monkeypatch):
    images = _images(mimic_tree)
    cache = tmp_path / "cache"
    first, quarantine = cache_images(images, cache, size=20, bits=8, workers=1, progress=False)
    assert quarantine.height == 0
    assert first.height == images.height
    assert not first["was_cached"].any()
    assert first.columns == [*images.columns, "cache_path", "cache_key", "was_cached", "pixel_sha256"]
    for row in first.iter_rows(named=True):
        assert row["cache_path"].endswith(f"{row['cache_key'][:2]}/{row['cache_key']}.png")
        with Image.open(row["cache_path"]) as png:
            assert png.size == (20, 20) and png.mode == "L"

    # 32 x 24 MONOCHROME1 ramp -> 20 x 15 centred: black pad columns left and right, inverted ramp.
    mono1 = first.filter(pl.col("image_path").str.ends_with("b12.dcm")).row(0, named=True)
    pixels = np.asarray(Image.open(mono1["cache_path"]))
    assert (pixels[:, :2] == 0).all() and (pixels[:, -3:] == 0).all()
    assert pixels[10, 3] > 200 and pixels[10, 16] < 55  # MONOCHROME1: stored 0 is white

    def must_not_decode(*args, **kwargs):
        raise AssertionError("an unchanged input was decoded again")

    monkeypatch.setattr(image_cache, "_cache_one", must_not_decode)
    second, quarantine = cache_images(images, cache, size=20, bits=8, workers=1, progress=False)
    assert second["was_cached"].all() and quarantine.height == 0
    assert second["cache_key"].to_list() == first["cache_key"].to_list()


def test_key_depends_on_content_and_params():
    assert cache_key("a" * 64, 224, 8) != cache_key("b" * 64, 224, 8)
    assert cache_key("a" * 64, 224, 8) != cache_key("a" * 64, 256, 8)
    assert cache_key("a" * 64, 224, 8) != cache_key("a" * 64, 224, 16)
    assert cache_key("a" * 64, 224, 8) == cache_key("a" * 64, 224, 8)


def test_sixteen_bit_cache(tmp_path):
    study = tmp_path / "raw" / "files" / "p10" / "p10000001" / "s50000001"
    write_dicom(study / "x.dcm", gradient(16, 16, 4095, np.uint16), bits_stored=12)
    (study.parent / "s50000001.txt").write_text("IMPRESSION: normal")
    out, _ = cache_images(
        _images(tmp_path / "raw"), tmp_path / "c", size=16, bits=16, workers=1, progress=False
    )
    with Image.open(out["cache_path"][0]) as png:
        assert png.mode.startswith("I;16") or png.mode == "I"
        values = np.asarray(png)
    assert values.max() > 60000 and values.min() == 0


def test_undecodable_image_is_quarantined(tmp_path):
    study = tmp_path / "raw" / "files" / "p10" / "p10000001" / "s50000001"
    write_dicom(study / "good.dcm", gradient(8, 8, 255, np.uint8))
    write_dicom(study / "short.dcm", gradient(32, 32, 255, np.uint8), truncate_pixels=True)
    (study.parent / "s50000001.txt").write_text("IMPRESSION: normal")
    images = _images(tmp_path / "raw")
    assert images.height == 2  # the header is fine, only the pixels are broken
    out, quarantine = cache_images(images, tmp_path / "c", size=8, workers=1, progress=False)
    assert out["image_path"].to_list() == [str(study / "good.dcm")]
    assert quarantine["path"].to_list() == [str(study / "short.dcm")]
    assert quarantine["stage"].to_list() == ["study_images"]
    assert quarantine["study_id"].to_list() == ["s50000001"]
    assert quarantine["reason"][0].startswith("cannot decode pixels")


def test_process_pool_path(mimic_tree, tmp_path):
    images = _images(mimic_tree)
    out, quarantine = cache_images(images, tmp_path / "c", size=12, workers=2, progress=False)
    assert quarantine.height == 0 and out.height == images.height
    serial, _ = cache_images(images, tmp_path / "c2", size=12, workers=1, progress=False)
    for a, b in zip(out["cache_path"], serial["cache_path"]):
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


def test_resize_and_pad_keeps_aspect():
    tall = np.ones((40, 20), dtype=np.float32)
    padded = resize_and_pad(tall, 10)
    assert padded.shape == (10, 10)
    assert padded[:, :2].max() == 0.0 and padded[:, 3:7].min() == pytest.approx(1.0, abs=1e-3)


def test_identical_pixels_in_different_files_are_quarantined(tmp_path):

    study = tmp_path / "raw" / "files" / "p10" / "p10000001" / "s50000001"
    pixels = gradient(24, 24, 255, np.uint8)
    write_dicom(study / "a.dcm", pixels, sop_uid="1.2.826.0.9.1")
    write_dicom(study / "b.dcm", pixels, sop_uid="1.2.826.0.9.2")  # same pixels, other UID/bytes
    write_dicom(study / "c.dcm", gradient(24, 24, 100, np.uint8), sop_uid="1.2.826.0.9.3")
    (study.parent / "s50000001.txt").write_text("IMPRESSION: Normal.")
    catalog = scan_mimic_layout(tmp_path / "raw", progress=False)
    assert catalog.images.height == 3  # different bytes: the catalog cannot tell
    cached, quarantine = cache_images(catalog.images, tmp_path / "cache", size=16, workers=1,
                                      progress=False)
    assert sorted(Path(p).name for p in cached["image_path"]) == ["a.dcm", "c.dcm"]
    assert quarantine["reason"].to_list() == [f"duplicate image: identical pixels to {study / 'a.dcm'}"]
    assert cached["pixel_sha256"].n_unique() == 2
