"""Streamed (chunked) loading: the image cache and report parsing give exactly the rows of a
single-chunk run, whatever the chunk size; the decode pool never has more than its window of
tasks in flight; duplicates are found across chunk boundaries; the stages write the same files
chunk by chunk."""

from __future__ import annotations

import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar

import numpy as np
import polars as pl
import pytest

from cxr_assets.config import parse_params
from cxr_assets.ingest import image_cache
from cxr_assets.ingest.catalog import scan_mimic_layout
from cxr_assets.ingest.image_cache import ImageCacheStream, cache_images
from cxr_assets.paths import ProjectPaths
from cxr_assets.reports.sections import (
    REPORT_TEXTS_SCHEMA,
    iter_parse_reports,
    parse_reports,
    split_sections,
    training_text,
)
from cxr_assets.stages import stage_module
from tests.ingest.conftest import gradient, write_dicom

SINGLE = 10**9  # chunk_rows: everything in one chunk


@pytest.fixture(scope="module")
def demo_raw(tmp_path_factory) -> Path:
    from cxr_assets.demo import generate_demo_dataset

    raw = tmp_path_factory.mktemp("streaming-demo") / "raw"
    generate_demo_dataset(raw, n_studies=9, seed=7, image_size=32, progress=False)
    return raw


@pytest.fixture(scope="module")
def demo_catalog(demo_raw):
    return scan_mimic_layout(demo_raw, progress=False)


@pytest.fixture
def tricky_images(demo_catalog, tmp_path) -> pl.DataFrame:
    """The demo images plus, spread over later chunks: an undecodable DICOM, a file with another
    file's pixels (other bytes), a row repeating an earlier row's content key, and a second
    failure with the first failure's key."""
    images = demo_catalog.images
    assert images.height >= 9
    first = images.row(0, named=True)
    broken = tmp_path / "broken.dcm"
    write_dicom(broken, gradient(32, 32, 255, np.uint8), truncate_pixels=True)
    copy = tmp_path / "copy.dcm"
    shutil.copyfile(first["image_path"], copy)
    extra = [
        {**first, "image_id": "broken", "image_path": str(broken), "file_sha256": "b" * 64},
        # Same pixels as row 0 under another content hash: decoded again, then a duplicate.
        {**first, "image_id": "copy", "image_path": str(copy), "file_sha256": "c" * 64},
        # Same content key as row 0 (same file hash): decoded once per run, still a duplicate.
        {**first, "image_id": "again", "image_path": str(copy)},
        {**first, "image_id": "broken2", "image_path": str(broken), "file_sha256": "b" * 64},
    ]
    head = images.head(4)
    tail = images.slice(4)
    return pl.concat([head, pl.DataFrame(extra[:1], schema=images.schema), tail,
                      pl.DataFrame(extra[1:], schema=images.schema)])


def _relative(table: pl.DataFrame, cache: Path) -> pl.DataFrame:
    """cache_path relative to its cache folder: runs into two folders compare equal."""
    return table.with_columns(pl.col("cache_path").str.strip_prefix(f"{cache}/"))


# ----------------------------------------------------------------------------- image cache


@pytest.mark.parametrize("chunk_rows", [1, 3, 5])
def test_chunked_cache_gives_the_rows_of_one_chunk(tricky_images, tmp_path, chunk_rows):
    whole, whole_q = cache_images(tricky_images, tmp_path / "a", size=16, workers=1,
                                  progress=False, chunk_rows=SINGLE)
    chunked, chunked_q = cache_images(tricky_images, tmp_path / "b", size=16, workers=1,
                                      progress=False, chunk_rows=chunk_rows)
    assert _relative(chunked, tmp_path / "b").equals(_relative(whole, tmp_path / "a"))
    assert chunked_q.equals(whole_q)
    # What each row became: the first image kept, both failures and all three copies of row 0's
    # pixels quarantined; failures first, then duplicates, each in input order.
    first_path = tricky_images["image_path"][0]
    assert whole.height + whole_q.height == tricky_images.height
    assert whole_q["reason"][0].startswith("cannot decode pixels")
    assert whole_q["reason"][1] == whole_q["reason"][0]  # same key: the same failure
    assert whole_q["reason"].to_list()[2:] == [f"duplicate image: identical pixels to {first_path}"] * 2
    assert whole_q["path"].to_list()[2:] == [str(tmp_path / "copy.dcm")] * 2
    assert not whole["was_cached"].any()
    assert whole["pixel_sha256"].n_unique() == whole.height


def test_iterable_of_chunks_equals_a_frame(tricky_images, tmp_path):
    whole, whole_q = cache_images(tricky_images, tmp_path / "a", size=16, workers=1, progress=False)
    stream = ImageCacheStream((tricky_images.slice(i, 2) for i in range(0, tricky_images.height, 2)),
                              tmp_path / "b", size=16, workers=1, progress=False)
    parts = list(stream)
    assert [p.height for p in parts][:2] == [2, 2]
    assert _relative(pl.concat(parts), tmp_path / "b").equals(_relative(whole, tmp_path / "a"))
    assert stream.quarantine().equals(whole_q)
    assert (stream.n_input, stream.n_output) == (tricky_images.height, whole.height)


def test_rerun_reuses_the_cache_chunk_by_chunk(tricky_images, tmp_path, monkeypatch):
    first, _ = cache_images(tricky_images, tmp_path / "c", size=16, workers=1, progress=False,
                            chunk_rows=3)

    def must_not_decode(*args, **kwargs):
        raise AssertionError("an unchanged input was decoded again")

    monkeypatch.setattr(image_cache, "_cache_one", lambda path, *a: (
        ("cannot decode pixels (again)", None) if path.endswith("broken.dcm") else must_not_decode()))
    second, quarantine = cache_images(tricky_images, tmp_path / "c", size=16, workers=1,
                                      progress=False, chunk_rows=3)
    assert second["was_cached"].all()
    assert second.drop("was_cached").equals(first.drop("was_cached"))
    assert quarantine.height == tricky_images.height - first.height


@pytest.mark.parametrize("bits", [8, 16])
def test_digest_of_a_fresh_decode_is_the_cached_files(demo_catalog, tmp_path, bits):
    row = demo_catalog.images.row(0, named=True)
    out = tmp_path / "x.png"
    error, digest = image_cache._cache_one(row["image_path"], str(out), 24, bits)
    assert error is None and digest == image_cache._pixel_digest(str(out))
    assert image_cache._digest_task(str(out)) == (None, digest)


class CountingPool(ThreadPoolExecutor):
    """A decode "pool" of threads that records how many submitted tasks are unfinished."""

    instances: ClassVar[list[CountingPool]] = []

    def __init__(self, workers: int):
        super().__init__(max_workers=workers)
        self.lock = threading.Lock()
        self.in_flight = self.max_in_flight = self.submitted = 0
        CountingPool.instances.append(self)

    def submit(self, fn, *args, **kwargs):
        def slow(*a):
            threading.Event().wait(0.01)  # long enough for unbounded submission to pile up
            return fn(*a)

        with self.lock:
            self.in_flight += 1
            self.submitted += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        future = super().submit(slow, *args, **kwargs)
        future.add_done_callback(self._finished)
        return future

    def _finished(self, _future) -> None:
        with self.lock:
            self.in_flight -= 1


@pytest.mark.parametrize(("window", "chunk_rows", "per_task"),
                         [(1, 4, 1), (3, 5, 1), (4, SINGLE, 1), (2, 7, 2), (3, SINGLE, 3)])
def test_in_flight_tasks_never_exceed_the_window(tricky_images, tmp_path, monkeypatch, window,
                                                  chunk_rows, per_task):
    CountingPool.instances.clear()
    monkeypatch.setattr(image_cache, "_make_pool", CountingPool)
    pooled, pooled_q = cache_images(tricky_images, tmp_path / "p", size=16, workers=2,
                                    progress=False, chunk_rows=chunk_rows, window=window,
                                    images_per_task=per_task)
    (pool,) = CountingPool.instances  # one pool for the whole run, not one per chunk
    # Every distinct key is decoded once (16 keys in 18 rows), `per_task` images a task.
    assert pool.submitted >= (tricky_images.height - 2) / per_task
    assert pool.max_in_flight == window  # never above it, and the window is used
    serial, serial_q = cache_images(tricky_images, tmp_path / "s", size=16, workers=1,
                                    progress=False, chunk_rows=SINGLE)
    assert _relative(pooled, tmp_path / "p").equals(_relative(serial, tmp_path / "s"))
    assert pooled_q.equals(serial_q)


def test_default_window_is_per_worker(tricky_images, tmp_path):
    stream = ImageCacheStream(tricky_images, tmp_path, size=16, workers=3, progress=False)
    assert stream.window == 3 * image_cache.WINDOW_PER_WORKER


def test_spawn_pool_with_a_small_window_and_chunks(tricky_images, tmp_path):
    pooled, pooled_q = cache_images(tricky_images, tmp_path / "p", size=16, workers=2,
                                    progress=False, chunk_rows=4, window=2)
    serial, serial_q = cache_images(tricky_images, tmp_path / "s", size=16, workers=1,
                                    progress=False, chunk_rows=SINGLE)
    assert _relative(pooled, tmp_path / "p").equals(_relative(serial, tmp_path / "s"))
    assert pooled_q.equals(serial_q)


def test_duplicate_in_a_later_chunk_is_quarantined(tmp_path):
    study = tmp_path / "raw" / "files" / "p10" / "p10000001" / "s50000001"
    pixels = gradient(24, 24, 255, np.uint8)
    write_dicom(study / "a.dcm", pixels, sop_uid="1.2.826.0.9.1")
    for i in range(2, 6):
        write_dicom(study / f"o{i}.dcm", gradient(24, 24, 40 * i, np.uint8), sop_uid=f"1.2.826.0.9.{i}")
    write_dicom(study / "z.dcm", pixels, sop_uid="1.2.826.0.9.9")  # a.dcm's pixels, other bytes
    (study.parent / "s50000001.txt").write_text("IMPRESSION: Normal.")
    images = scan_mimic_layout(tmp_path / "raw", progress=False).images.sort("image_path")
    assert images["image_path"].str.ends_with("z.dcm")[-1]
    cached, quarantine = cache_images(images, tmp_path / "cache", size=16, workers=1,
                                      progress=False, chunk_rows=2)
    assert quarantine["path"].to_list() == [str(study / "z.dcm")]
    assert quarantine["reason"].to_list() == [f"duplicate image: identical pixels to {study / 'a.dcm'}"]
    assert cached.height == images.height - 1


def test_digest_index_is_exact():
    index = image_cache._DigestIndex()
    rng = np.random.default_rng(0)
    digests = [rng.bytes(32) for _ in range(300)]
    digests.append(digests[5][:31] + b"\x00")  # differs from another only by a trailing zero
    digests.append(b"\x00" * 32)
    for start in range(0, 240, 40):
        index.add(digests[start:start + 40], list(range(start, start + 40)))
    assert index.find(digests[:240]).tolist() == list(range(240))
    assert (index.find(digests[240:]) == -1).all()
    index.add(digests[240:], [7] * len(digests[240:]))
    assert index.find([digests[-1], digests[-2], digests[5]]).tolist() == [7, 7, 5]
    assert len(index) == len(digests)


# ----------------------------------------------------------------------------- reports


def _reference_parse(reports: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """parse_reports as it was before chunking (one Python dict per report)."""
    from cxr_assets.schemas import QUARANTINE_SCHEMA

    rows, quarantine = [], []
    for study in reports.iter_rows(named=True):
        text = study["report_text"] or ""
        sections = split_sections(text)
        train_text = training_text(sections)
        if train_text is None:
            quarantine.append({"path": study["report_origin"], "study_id": study["study_id"],
                               "reason": "no findings or impression text", "stage": "report_texts"})
            continue
        rows.append({"study_id": study["study_id"], "patient_id": study["patient_id"],
                     "source": study.get("source"), "report_text": text, **sections,
                     "report_for_training": train_text, "n_chars": len(train_text)})
    return (pl.DataFrame(rows, schema=REPORT_TEXTS_SCHEMA),
            pl.DataFrame(quarantine, schema=QUARANTINE_SCHEMA))


@pytest.fixture
def demo_reports(demo_catalog) -> pl.DataFrame:
    reports = demo_catalog.reports.join(
        demo_catalog.studies.select("study_id", "patient_id", "source"), on="study_id",
        how="inner", maintain_order="left")
    # Reports to quarantine, in the middle and at the end: empty, missing, header without text.
    odd = reports.head(3).with_columns(
        pl.Series("report_text", ["", None, "FINDINGS:\n\nIMPRESSION:"], dtype=pl.String),
        pl.Series("study_id", ["e1", "e2", "e3"]))
    return pl.concat([reports.head(4), odd.head(2), reports.slice(4), odd.tail(1)])


@pytest.mark.parametrize("chunk_rows", [1, 3, 4])
def test_chunked_parse_gives_the_rows_of_one_chunk(demo_reports, chunk_rows):
    whole, whole_q = parse_reports(demo_reports, progress=False, chunk_rows=SINGLE)
    chunked, chunked_q = parse_reports(demo_reports, progress=False, chunk_rows=chunk_rows)
    assert chunked.equals(whole) and chunked_q.equals(whole_q)
    reference, reference_q = _reference_parse(demo_reports)
    assert whole.equals(reference) and whole_q.equals(reference_q)
    assert whole_q["study_id"].to_list() == ["e1", "e2", "e3"]
    assert whole.height + whole_q.height == demo_reports.height


def test_parse_without_source_and_iterated(demo_reports):
    frame = demo_reports.drop("source")
    whole, _ = parse_reports(frame, progress=False)
    assert whole["source"].is_null().all()
    parts = list(iter_parse_reports([frame.head(5), frame.slice(5)], progress=False))
    assert pl.concat([p for p, _ in parts]).equals(whole)
    assert pl.concat([q for _, q in parts]).equals(parse_reports(frame, progress=False)[1])


def test_parse_of_no_reports(demo_reports):
    parsed, quarantine = parse_reports(demo_reports.head(0), progress=False, chunk_rows=2)
    assert parsed.height == quarantine.height == 0
    assert parsed.schema == pl.Schema(REPORT_TEXTS_SCHEMA)


# ----------------------------------------------------------------------------- stages


def _project(root: Path, raw: Path) -> tuple:
    params = parse_params({
        "paths": {"raw_dir": str(raw), "catalog_dir": "catalog", "image_cache_dir": "cache",
                  "reports_dir": "out"},
        "ingest": {"image_size": 32, "workers": 1},
    })
    return params, ProjectPaths.from_params(params, root=root)


@pytest.fixture(scope="module")
def demo_projects(demo_raw, tmp_path_factory):
    """Two projects with the same catalog (raw_studies run once, copied)."""
    base = tmp_path_factory.mktemp("streaming-projects")
    params, paths = _project(base / "one", demo_raw)
    result = stage_module("raw_studies").run(params, paths, progress=False)
    assert not result.blocking_failures
    shutil.copytree(base / "one" / "catalog", base / "two" / "catalog")
    return (params, paths), _project(base / "two", demo_raw)


def test_study_images_stage_streams_the_same_table(demo_projects):
    from cxr_assets.stages import study_images

    (params, one), (_, two) = demo_projects
    small = study_images.run(params, one, progress=False, chunk_rows=2)
    big = study_images.run(params, two, progress=False, chunk_rows=SINGLE)
    assert not small.blocking_failures and not big.blocking_failures
    a = _relative(pl.read_parquet(one.study_images_table), one.image_cache_dir)
    b = _relative(pl.read_parquet(two.study_images_table), two.image_cache_dir)
    assert a.equals(b) and a.height > 0
    # The table the in-memory function gives, row for row.
    direct, _ = cache_images(pl.read_parquet(one.images_table), one.image_cache_dir, size=32,
                             workers=1, progress=False)
    assert _relative(direct.with_columns(pl.lit(False).alias("was_cached")),
                     one.image_cache_dir).equals(a)
    drop = {"cache_dir"}
    assert ({k: v for k, v in small.metadata.items() if k not in drop}
            == {k: v for k, v in big.metadata.items() if k not in drop})
    assert small.metadata["n_images"] == a.height and small.metadata["n_decoded"] == a.height
    assert not list(one.catalog_dir.glob(".*.tmp"))

    rerun = study_images.run(params, one, progress=False, chunk_rows=3)
    assert rerun.metadata["n_reused_from_cache"] == a.height and rerun.metadata["n_decoded"] == 0


def test_report_texts_stage_streams_the_same_tables(demo_projects):
    from cxr_assets.stages import report_texts

    (params, one), (_, two) = demo_projects
    small = report_texts.run(params, one, progress=False, chunk_rows=2)
    big = report_texts.run(params, two, progress=False, chunk_rows=SINGLE)
    for table in ("report_texts_table", "labels_table"):
        a = pl.read_parquet(getattr(one, table))
        assert a.equals(pl.read_parquet(getattr(two, table))) and a.height > 0
    assert small.metadata == big.metadata
    assert [c.passed for c in small.checks] == [True]

    # The same rows as parsing the whole joined table in memory.
    catalogued = pl.read_parquet(one.catalog_reports_table).join(
        pl.read_parquet(one.studies_table).select("study_id", "patient_id", "source"),
        on="study_id", how="inner", maintain_order="left")
    reference, _ = _reference_parse(catalogued)
    assert pl.read_parquet(one.report_texts_table).equals(reference)
    labels = pl.read_parquet(one.labels_table)
    assert labels["study_id"].to_list() == reference["study_id"].to_list()
    assert small.metadata["n_reports"] == reference.height


def test_chunk_writer_is_atomic(tmp_path):
    from cxr_assets.parquet_io import ParquetChunkWriter, iter_parquet_chunks

    target = tmp_path / "t.parquet"
    frame = pl.DataFrame({"a": [1, 2, 3, 4, 5], "b": ["x", None, "z", "w", "v"]})
    with ParquetChunkWriter(target) as out:
        out.write(frame.head(2))
        out.write(frame.slice(2, 0))
        out.write(frame.slice(2))
    assert pl.read_parquet(target).equals(frame)
    assert [c.height for c in iter_parquet_chunks(target, 2)] == [2, 2, 1]
    with pytest.raises(RuntimeError), ParquetChunkWriter(target) as out:
        out.write(frame.head(1))
        raise RuntimeError("stage failed half-way")
    assert pl.read_parquet(target).equals(frame)  # the old file is intact, no temporary left
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]
    with ParquetChunkWriter(tmp_path / "empty.parquet") as out:
        out.write(frame.head(0))
    (empty,) = iter_parquet_chunks(tmp_path / "empty.parquet", 10)
    assert empty.height == 0 and empty.schema == frame.schema


def test_cache_of_no_images_keeps_the_columns(tricky_images, tmp_path):
    cached, quarantine = cache_images(tricky_images.head(0), tmp_path / "c", size=16, workers=2,
                                      progress=False, chunk_rows=3)
    assert cached.height == quarantine.height == 0
    assert cached.columns == [*tricky_images.columns, "cache_path", "cache_key", "was_cached",
                              "pixel_sha256"]
