"""The streamed embeddings table and its sharded cache, with a deterministic stand-in encoder."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from cxr_assets.embed.text_cache import EmbeddingCache, embed_table, text_hash


class CountingEncoder:
    """Vectors derived from the text's hash; counts every text it is asked to encode."""

    content_hash = "enc-test"
    document_hash = "enc-test"  # what the cache keys on (no query adapter here)
    dim = 8

    def __init__(self) -> None:
        self.encoded: list[str] = []
        self.fail_after: int | None = None

    def encode(self, texts, instruction=None, batch_size=16, progress=True) -> np.ndarray:
        if self.fail_after is not None and len(self.encoded) + len(texts) > self.fail_after:
            raise RuntimeError("killed")
        self.encoded += list(texts)
        return np.stack([self.vector(t) for t in texts])

    @staticmethod
    def vector(text: str) -> np.ndarray:
        seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
        return np.random.default_rng(seed).standard_normal(8).astype(np.float32)


def _reports(tmp_path: Path, texts: list[str]) -> Path:
    file = tmp_path / "report_texts.parquet"
    pl.DataFrame({"study_id": [f"s{i:03d}" for i in range(len(texts))],
                  "patient_id": [f"p{i // 2}" for i in range(len(texts))],
                  "report_for_training": texts}).write_parquet(file)
    return file


def _embed(encoder, table: Path, tmp_path: Path, chunk_size: int) -> tuple[pl.DataFrame, object]:
    out = tmp_path / "out" / "report_embeddings.parquet"
    summary = embed_table(encoder, table, "report_for_training", ["study_id", "patient_id"], out,
                          tmp_path / "cache", instruction="Embed:", batch_size=2,
                          chunk_size=chunk_size, progress=False)
    return pl.read_parquet(out), summary


def test_chunked_table_equals_direct_encoding_and_keeps_row_order(tmp_path: Path) -> None:
    texts = [f"report {i % 7}" for i in range(23)]  # repeats inside and across chunks
    table = _reports(tmp_path, texts)
    encoder = CountingEncoder()
    stored, summary = _embed(encoder, table, tmp_path, chunk_size=5)
    assert stored["study_id"].to_list() == [f"s{i:03d}" for i in range(23)]
    assert stored.schema["embedding"] == pl.Array(pl.Float32, 8)
    expected = np.stack([CountingEncoder.vector(t) for t in texts])
    assert np.array_equal(np.stack(stored["embedding"].to_numpy()), expected)
    assert set(stored["encoder_hash"]) == {"enc-test"}
    # each distinct text encoded exactly once, although it repeats across chunks
    assert sorted(encoder.encoded) == sorted(set(texts)) and summary.n_computed == 7
    assert (summary.n_rows, summary.dim) == (23, 8)


def test_second_run_encodes_nothing_and_a_changed_report_only_itself(tmp_path: Path) -> None:
    texts = [f"report {i}" for i in range(12)]
    _embed(CountingEncoder(), _reports(tmp_path, texts), tmp_path, chunk_size=4)
    again = CountingEncoder()
    _, summary = _embed(again, _reports(tmp_path, texts), tmp_path, chunk_size=4)
    assert summary.n_computed == 0 and again.encoded == []
    texts[5] = "report five, edited"
    changed = CountingEncoder()
    second, summary = _embed(changed, _reports(tmp_path, texts), tmp_path, chunk_size=4)
    assert changed.encoded == ["report five, edited"] and summary.n_computed == 1
    assert np.array_equal(np.stack(second["embedding"].to_numpy())[5], CountingEncoder.vector(texts[5]))


def test_a_killed_run_keeps_finished_chunks_and_leaves_no_partial_table(tmp_path: Path) -> None:
    texts = [f"report {i}" for i in range(10)]
    table = _reports(tmp_path, texts)
    dying = CountingEncoder()
    dying.fail_after = 6  # dies inside the second chunk of 4
    with pytest.raises(RuntimeError, match="killed"):
        _embed(dying, table, tmp_path, chunk_size=4)
    out_dir = tmp_path / "out"
    assert list(out_dir.iterdir()) == []  # no half-written table, no temporary file left
    assert len(EmbeddingCache(tmp_path / "cache", "enc-test")) == 4  # first chunk kept
    resumed = CountingEncoder()
    stored, summary = _embed(resumed, table, tmp_path, chunk_size=4)
    assert summary.n_computed == 6 and stored.height == 10


def test_cache_reads_the_earlier_single_file_layout(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    key = text_hash("old report", "Embed:")
    vector = CountingEncoder.vector("old report")
    pl.DataFrame({"text_hash": [key], "embedding": [vector.tolist()]}).write_parquet(
        cache_dir / "enc-test.parquet")
    encoder = CountingEncoder()
    stored, summary = _embed(encoder, _reports(tmp_path, ["old report", "new report"]), tmp_path, 8)
    assert encoder.encoded == ["new report"] and summary.n_computed == 1
    assert np.array_equal(np.stack(stored["embedding"].to_numpy())[0], vector)


def test_unknown_keys_are_named(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path, "enc-test")
    with pytest.raises(KeyError, match="not in the cache"):
        cache.get(["nope"])
