"""Bounded-memory cataloguing: chunked (spooled) tables, lazy MIMIC listing, identical results.

`ingest_sources` / `catalog_from_listing` keep at most one chunk of rows as Python values and
write the rest as Parquet chunks to a spool folder; these tests run them with tiny chunks and
check that every table, the accounting, the batches table, the quarantine reasons (also for
duplicates whose first copy is already in a chunk on disk) and the written catalog are the same
as with a single chunk.
"""

from __future__ import annotations

import gc
import shutil
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest
from PIL import Image

from cxr_assets.config import IngestParams
from cxr_assets.ingest import spool as spool_module
from cxr_assets.ingest.catalog import (
    TABLES,
    accounting,
    catalog_from_listing,
    ingest_sources,
    scan_layout,
    write_catalog,
    write_state,
)
from cxr_assets.ingest.layouts.mimic import list_studies
from cxr_assets.ingest.listing import LazyStudies

BIG = 1_000_000  # one chunk: nothing is spooled


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    """30 demo studies plus duplicates that land in different chunks when chunks are tiny."""
    from cxr_assets.demo.generate import generate_demo_dataset

    root = tmp_path_factory.mktemp("memory-demo")
    raw = root / "raw"
    generate_demo_dataset(raw, n_studies=30, seed=4, image_size=32, progress=False)
    files = raw / "files"
    studies = sorted(p for p in files.glob("p*/p*/s*") if p.is_dir())
    # The same study id under another patient, and an image copied into a later study.
    first, other = studies[2], studies[25].parent
    shutil.copytree(first, other / first.name)
    shutil.copy(first.parent / f"{first.name}.txt", other / f"{first.name}.txt")
    dicom = min(studies[1].iterdir())
    shutil.copy(dicom, studies[27] / dicom.name)  # duplicate SOPInstanceUID
    # Identical PNG content under different names (ids) in studies far apart, and a stray.
    pixels = (np.arange(32 * 32).reshape(32, 32) % 251).astype(np.uint8)
    for study, name in ((studies[3], "view_a.png"), (studies[20], "view_b.png"),
                        (studies[28], "view_c.png")):
        Image.fromarray(pixels).save(study / name)
    (files / "README.txt").write_text("not part of the layout\n")
    # A drop-folder batch repeating two base studies (quarantined as already catalogued).
    for study in studies[5:7]:
        dest = root / "incoming" / "b1" / "files" / study.relative_to(files)
        shutil.copytree(study, dest)
        shutil.copy(study.parent / f"{study.name}.txt", dest.parent / f"{study.name}.txt")
    return root


def _ingest(root: Path, catalog: Path, chunk_rows: int, **options):
    params = IngestParams(layout="mimic_cxr", **options)
    result = ingest_sources(root / "raw", params, drop_dir=root / "incoming",
                            previous_catalog=catalog, progress=False, chunk_rows=chunk_rows)
    write_catalog(result, catalog)
    write_state(catalog, params)
    return result


def _tables(result) -> dict[str, pl.DataFrame]:
    return {name: getattr(result, name) for name in TABLES}


def _duckdb_tables(catalog: Path) -> dict[str, pl.DataFrame]:
    with duckdb.connect(str(catalog / "catalog.duckdb"), read_only=True) as con:
        return {name: con.execute(f'SELECT * FROM "{name}"').pl() for name in TABLES}


def _assert_same(a: dict[str, pl.DataFrame], b: dict[str, pl.DataFrame]) -> None:
    assert a.keys() == b.keys()
    for name, frame in a.items():
        assert frame.schema == b[name].schema, name
        assert frame.equals(b[name]), name


@pytest.mark.parametrize("chunk_rows", [1, 3])
def test_tiny_chunks_give_the_same_catalog_as_one_chunk(demo_root, tmp_path, chunk_rows):
    whole = _ingest(demo_root, tmp_path / "whole", BIG)
    chunked = _ingest(demo_root, tmp_path / "chunked", chunk_rows)

    assert isinstance(chunked._tables["images"], spool_module.SpooledTable)  # really spooled
    assert not isinstance(whole._tables["images"], spool_module.SpooledTable)
    assert accounting(chunked) == accounting(whole) and accounting(chunked)["balanced"]
    _assert_same(_tables(chunked), _tables(whole))
    assert chunked.batches.drop("first_ingested").equals(whole.batches.drop("first_ingested"))
    assert (chunked.n_inputs, chunked.notes, chunked.n_reused, chunked.n_phi_stripped) == (
        whole.n_inputs, whole.notes, whole.n_reused, whole.n_phi_stripped)
    # The written catalogs: Parquet equal to the frames, DuckDB equal row for row.
    for name, frame in _tables(whole).items():
        assert pl.read_parquet(tmp_path / "chunked" / f"{name}.parquet").equals(frame), name
    _assert_same(_duckdb_tables(tmp_path / "chunked"), _duckdb_tables(tmp_path / "whole"))
    assert not list((tmp_path / "chunked").glob(".*tmp*"))
    # Read back before any catalog is written (sorted in memory from the chunks): the same.
    unwritten = ingest_sources(demo_root / "raw", IngestParams(layout="mimic_cxr"),
                               drop_dir=demo_root / "incoming", progress=False, chunk_rows=chunk_rows)
    _assert_same(_tables(unwritten), _tables(whole))


def test_paths_with_glob_characters(demo_root, tmp_path):
    """DuckDB's read_parquet expands * ? [ ]: such spool / catalog paths take the other road."""
    whole = _ingest(demo_root, tmp_path / "whole", BIG)
    params = IngestParams(layout="mimic_cxr")
    result = ingest_sources(demo_root / "raw", params, drop_dir=demo_root / "incoming",
                            progress=False, chunk_rows=4, spool_dir=tmp_path / "spool[1]")
    catalog = tmp_path / "cat[a]*"
    write_catalog(result, catalog)
    write_state(catalog, params)
    _assert_same(_tables(result), _tables(whole))
    _assert_same(_duckdb_tables(catalog), _duckdb_tables(tmp_path / "whole"))
    again = ingest_sources(demo_root / "raw", params, drop_dir=demo_root / "incoming",
                           previous_catalog=catalog, progress=False, chunk_rows=4)
    assert again.n_reused == whole.images.height


def test_duplicates_across_chunk_boundaries_are_quarantined(demo_root, tmp_path):
    result = _ingest(demo_root, tmp_path / "catalog", chunk_rows=2)
    quarantine = result.quarantine
    reasons = dict(zip(quarantine["path"], quarantine["reason"], strict=True))
    images = set(result.images["image_path"])

    duplicate_study = [r for r in reasons.values() if r.startswith("duplicate study id")]
    assert len(duplicate_study) >= 2  # report + image(s) of the copied study
    assert all("already catalogued under patient p" in r for r in duplicate_study)

    # The first copy's path (read back from a chunk on disk) is named in the reason.
    sop = [(p, r) for p, r in reasons.items() if r.startswith("duplicate SOPInstanceUID")]
    assert len(sop) == 1
    first = sop[0][1].split("(first seen at ")[1].rstrip(")")
    assert first in images and Path(first).name == Path(sop[0][0]).name

    twins = {p: r for p, r in reasons.items() if r.startswith("duplicate image: identical content")}
    assert len(twins) == 2  # three PNGs with the same pixels: the first one is kept
    kept = {r.removeprefix("duplicate image: identical content to ") for r in twins.values()}
    assert len(kept) == 1 and kept <= images

    batch = quarantine.filter(pl.col("path").str.contains("/incoming/b1/"))
    assert batch.height > 0 and set(batch["reason"].str.contains("already catalogued from batch base")) == {True}
    books = accounting(result)
    assert books["balanced"] and books["inputs"] == result.n_inputs
    counts = result.batches.select(pl.col("n_catalogued") + pl.col("n_quarantined")).to_series()
    assert counts.sum() == result.n_inputs


def test_at_most_one_chunk_of_rows_is_held_in_python(demo_root, monkeypatch):
    largest: dict[str, int] = {}
    append = spool_module.ChunkedTable.append

    def checked(self, row):
        number = append(self, row)
        largest[self.name] = max(largest.get(self.name, 0), self._n_pending)
        assert self._n_pending < self.chunk_rows  # flushed as soon as a chunk is full
        return number

    monkeypatch.setattr(spool_module.ChunkedTable, "append", checked)
    listing = list_studies(demo_root / "raw")
    result = catalog_from_listing(listing, progress=False, chunk_rows=4)
    assert largest and max(largest.values()) <= 3
    assert accounting(result)["balanced"]


def test_height_and_accounting_do_not_read_the_spool(demo_root, monkeypatch, tmp_path):
    result = ingest_sources(demo_root / "raw", IngestParams(layout="mimic_cxr"),
                            progress=False, chunk_rows=5, spool_dir=tmp_path / "spool")
    spool = next((tmp_path / "spool").iterdir())
    assert spool.name.startswith("cxr-ingest-spool-") and any(spool.glob("images.*.parquet"))

    def no_load(self):
        raise AssertionError("a table was read back")

    monkeypatch.setattr(spool_module.SpooledTable, "load", no_load)
    books = accounting(result)
    assert books["balanced"] and books["catalogued"] == result.height("images") + result.height("reports")
    monkeypatch.undo()
    assert result.height("studies") == result.studies.height > 0
    del result
    gc.collect()
    assert not spool.exists()  # removed with the result


def test_reuse_from_the_previous_catalog_with_chunks(demo_root, tmp_path):
    catalog = tmp_path / "catalog"
    first = _ingest(demo_root, catalog, chunk_rows=3)
    again = _ingest(demo_root, catalog, chunk_rows=3)
    assert first.n_reused == 0
    assert again.n_reused == first.images.height  # every catalogued image was unchanged
    _assert_same(_tables(again), _tables(first))
    assert again.batches["first_ingested"].to_list() == first.batches["first_ingested"].to_list()


def test_mimic_listing_is_lazy_and_counts_inputs(demo_root):
    listing = list_studies(demo_root / "raw")
    assert isinstance(listing.studies, LazyStudies)
    studies = list(listing.studies)
    assert [s.study_id for s in studies] == sorted(s.study_id for s in studies)
    assert listing.n_inputs == len(listing.stray) + sum(
        len(s.images) + (s.report is not None) for s in studies)
    assert listing.studies[3].study_id == studies[3].study_id
    head = listing.studies[:5]
    assert isinstance(head, LazyStudies) and [s.study_id for s in head] == [s.study_id for s in studies[:5]]
    # Image paths are the files on disk, each study's images in name order.
    for study in studies:
        assert all(ref.path.is_file() for ref in study.images)
        assert study.report is None or Path(study.report.origin).is_file()


def test_max_studies_cap_with_the_lazy_listing(demo_root):
    capped = scan_layout(demo_root / "raw", "mimic_cxr", progress=False,
                         options=IngestParams(max_studies=7))
    whole = scan_layout(demo_root / "raw", "mimic_cxr", progress=False)
    assert accounting(capped)["balanced"]
    assert capped.studies.height <= 7 < whole.studies.height
    assert any("ingest.max_studies: catalogued the first 7 of" in note for note in capped.notes)


class _SameHash(str):
    __slots__ = ()

    def __hash__(self) -> int:
        return 12345  # every key collides: only reading the key back tells them apart


def test_row_index_confirms_hash_matches_and_grows():
    keys = [_SameHash(f"key{i}") for i in range(40)] + [f"plain{i}" for i in range(3000)]
    table: list[str] = []
    index = spool_module.RowIndex(lambda row: table[row], capacity=4)
    for key in keys:
        assert index.get(key) is None
        table.append(key)
        index.add(key, len(table) - 1)
    assert len(index) == len(keys)
    assert all(index.get(key) == row for row, key in enumerate(keys))
    assert index.get(_SameHash("key40")) is None and index.get("plain3000") is None
