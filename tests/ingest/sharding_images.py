"""A tiny project for the sharded study_images tests: a MIMIC-like tree of small DICOMs (with a
pixel duplicate and an undecodable image), params.yaml and the catalog's images.parquet; the
comparison of what two projects' study_images wrote (table, quarantine, cached PNG bytes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from cxr_assets.ingest.image_shards import RECORDS_FOLDER
from tests.ingest.conftest import write_dicom

N_STUDIES = 8


def write_image_tree(raw: Path) -> Path:
    """8 studies of 2-3 noise images (each its own pixels), plus: b.dcm of s50000002 repeats the
    pixels of a.dcm (other file bytes: quarantined as a duplicate), and a DICOM with truncated
    pixel data in s50000005 (quarantined as undecodable)."""
    rng = np.random.default_rng(5)
    files = raw / "files" / "p10"
    for s in range(N_STUDIES):
        patient = files / f"p1000000{s // 2}"
        study = patient / f"s5000000{s}"
        for i in range(2 + s % 2):
            shape = (24 + 4 * i, 32 - 2 * s)
            write_dicom(study / f"img{i}.dcm", rng.integers(0, 256, shape, dtype=np.uint8))
        (patient / f"s5000000{s}.txt").write_text(f"IMPRESSION: Study {s}, normal.\n")
    twin = rng.integers(0, 256, (20, 20), dtype=np.uint8)
    write_dicom(files / "p10000001" / "s50000002" / "a.dcm", twin, sop_uid="1.2.826.0.9.1")
    write_dicom(files / "p10000001" / "s50000002" / "b.dcm", twin, sop_uid="1.2.826.0.9.2")
    write_dicom(files / "p10000002" / "s50000005" / "short.dcm",
                rng.integers(0, 256, (16, 16), dtype=np.uint8), truncate_pixels=True)
    return raw


def make_project(root: Path, raw: Path, **ingest):
    """A project folder with params.yaml (ingest overrides) and the catalog's images.parquet."""
    from cxr_assets.config import load_params
    from cxr_assets.ingest.catalog import scan_mimic_layout
    from cxr_assets.paths import ProjectPaths
    from tests.helpers import tiny_params, write_params

    raw_params = tiny_params(root, root, ingest={"image_size": 32, "workers": 1, **ingest})
    params = load_params(write_params(root, raw_params))
    paths = ProjectPaths.from_params(params, root)
    paths.images_table.parent.mkdir(parents=True, exist_ok=True)
    scan_mimic_layout(raw, progress=False).images.write_parquet(paths.images_table)
    return params, paths


def relative_table(table: Path, cache_dir: Path) -> pl.DataFrame:
    """study_images with cache_path relative to the project's cache (the rest as written)."""
    return pl.read_parquet(table).with_columns(
        pl.col("cache_path").str.strip_prefix(f"{cache_dir}/"))


def cached_pngs(cache_dir: Path) -> dict[str, bytes]:
    """Every cached image, by path relative to the cache: the bytes."""
    return {str(p.relative_to(cache_dir)): p.read_bytes() for p in sorted(cache_dir.rglob("*.png"))
            if RECORDS_FOLDER not in p.parts}


def assert_same_output(sharded, single) -> None:
    """Two projects' study_images outputs are the same: rows, columns, quarantine, PNG bytes."""
    a = relative_table(sharded.study_images_table, sharded.image_cache_dir)
    b = relative_table(single.study_images_table, single.image_cache_dir)
    assert a.columns == b.columns
    assert a.equals(b)  # same rows, same order, same content (was_cached and digests included)
    quarantine = "study_images_quarantine.parquet"
    assert pl.read_parquet(sharded.catalog_dir / quarantine).equals(
        pl.read_parquet(single.catalog_dir / quarantine))
    assert cached_pngs(sharded.image_cache_dir) == cached_pngs(single.image_cache_dir)
