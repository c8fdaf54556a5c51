"""Report-embedding cache keyed by (text hash, encoder document hash), and the streamed embeddings
table. The key is the encoder's `document_hash`: a refitted query adapter keeps the cache valid.

Re-materializing report_embeddings with unchanged reports and an unchanged encoder encodes
nothing; a changed report re-encodes only that report.

Memory stays bounded at any number of reports: the cache is a folder of Parquet shards per
encoder hash (one shard per encoded chunk, written as soon as the chunk is done, so a killed run
keeps what it finished), and only the text hashes are held in memory as an index. The
embeddings table is assembled and written one chunk of reports at a time.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from cxr_assets.fileio import atomic_path

# Reports encoded and written per step: bounds memory (texts, token ids, vectors of one chunk).
CHUNK_SIZE = 4096


def text_hash(text: str, instruction: str | None) -> str:
    payload = f"{instruction or ''}\x00{text}".encode()
    return hashlib.sha256(payload).hexdigest()[:32]


class EmbeddingCache:
    """Parquet shards `<cache_dir>/<encoder_hash>/part-*.parquet`: text_hash -> float32 vector.

    A single file `<cache_dir>/<encoder_hash>.parquet` (the earlier layout) is read as one more
    shard. Only the index (text hash -> shard) lives in memory; vectors are read per shard.
    """

    def __init__(self, cache_dir: Path, encoder_hash: str):
        self.folder = Path(cache_dir) / encoder_hash
        self.legacy_file = Path(cache_dir) / f"{encoder_hash}.parquet"
        self._shard_of: dict[str, Path] = {}
        for shard in self.shards():
            for key in pq.read_table(shard, columns=["text_hash"]).column("text_hash").to_pylist():
                self._shard_of.setdefault(key, shard)

    def shards(self) -> list[Path]:
        found = sorted(self.folder.glob("part-*.parquet")) if self.folder.is_dir() else []
        return ([self.legacy_file] if self.legacy_file.is_file() else []) + found

    def __len__(self) -> int:
        return len(self._shard_of)

    def __contains__(self, key: str) -> bool:
        return key in self._shard_of

    def missing(self, keys: list[str]) -> list[str]:
        """Keys not cached yet, each once, in first-seen order."""
        return [k for k in dict.fromkeys(keys) if k not in self._shard_of]

    def add(self, keys: list[str], vectors: np.ndarray) -> Path:
        """Write one shard atomically (tmp + rename) and index it."""
        if len(keys) != len(vectors):
            raise ValueError(f"{len(keys)} keys for {len(vectors)} vectors")
        self.folder.mkdir(parents=True, exist_ok=True)
        shard = self.folder / f"part-{len(self.shards()):05d}-{uuid.uuid4().hex[:8]}.parquet"
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        table = pa.table({"text_hash": pa.array(keys, pa.string()),
                          "embedding": _fixed_size_list(vectors)})
        with atomic_path(shard) as tmp:
            pq.write_table(table, tmp)
        for key in keys:
            self._shard_of.setdefault(key, shard)
        return shard

    def get(self, keys: list[str]) -> np.ndarray:
        """Vectors for keys (input order; repeats allowed), reading only the shards involved."""
        unknown = [k for k in keys if k not in self._shard_of]
        if unknown:
            raise KeyError(f"{len(unknown)} text hashes are not in the cache, e.g. {unknown[0]}")
        by_shard: dict[Path, set[str]] = {}
        for key in keys:
            by_shard.setdefault(self._shard_of[key], set()).add(key)
        found: dict[str, np.ndarray] = {}
        for shard, wanted in by_shard.items():
            table = pq.read_table(shard, filters=[("text_hash", "in", list(wanted))])
            matrix = _to_matrix(table.column("embedding"))
            for key, row in zip(table.column("text_hash").to_pylist(), matrix):
                found.setdefault(key, row)
        return np.stack([found[k] for k in keys]) if keys else np.empty((0, 0), np.float32)


def _fixed_size_list(vectors: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])


def _to_matrix(column: pa.ChunkedArray) -> np.ndarray:
    column = column.combine_chunks()
    width = column.type.list_size if pa.types.is_fixed_size_list(column.type) else None
    flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    if width is None:  # a variable-size list column (older cache files)
        width = len(flat) // max(len(column), 1)
    return flat.reshape(len(column), width)


def encode_missing(encoder, cache: EmbeddingCache, keys: list[str], texts: list[str],
                   instruction: str | None, batch_size: int, progress: bool = False) -> int:
    """Encode the texts whose key is not cached yet (each once) and add them to the cache as one
    shard, kept even if a later chunk fails. Returns how many texts were encoded."""
    todo = cache.missing(keys)
    if todo:
        first_text = dict(zip(reversed(keys), reversed(texts)))
        vectors = encoder.encode([first_text[k] for k in todo], instruction=instruction,
                                 batch_size=batch_size, progress=progress)
        cache.add(todo, vectors)
    return len(todo)


def add_encoded(cache_dir: Path, encoder_hash: str, texts: list[str], vectors: np.ndarray,
                instruction: str | None) -> int:
    """Put embeddings computed elsewhere (texts encoded with `instruction` by the encoder whose
    document hash is `encoder_hash`) into the cache, so report_embeddings does not encode them
    again. Returns how many were new."""
    if len(texts) != len(vectors):
        raise ValueError(f"{len(texts)} texts for {len(vectors)} vectors")
    cache = EmbeddingCache(cache_dir, encoder_hash)
    row_of = {text_hash(t, instruction): i for i, t in enumerate(texts)}
    todo = cache.missing(list(row_of))
    if todo:
        cache.add(todo, np.asarray(vectors, dtype=np.float32)[[row_of[k] for k in todo]])
    return len(todo)


@dataclass
class EmbeddingSummary:
    n_rows: int
    n_computed: int
    dim: int


def embed_table(
    encoder,
    table_file: Path,
    text_column: str,
    keep_columns: list[str],
    out_file: Path,
    cache_dir: Path,
    instruction: str | None,
    batch_size: int = 16,
    chunk_size: int = CHUNK_SIZE,
    progress: bool = True,
) -> EmbeddingSummary:
    """Embed `text_column` of a Parquet table into `out_file`, one chunk of rows at a time.

    The output keeps `keep_columns` and the input's row order, adds `embedding`
    (Array(Float32, dim)) and `encoder_hash`, and is written atomically (tmp + rename). Texts
    already in the cache are not encoded again; new vectors are added to the cache per chunk.
    """
    from tqdm.auto import tqdm

    from cxr_assets.parquet_io import ParquetChunkWriter, iter_parquet_chunks, parquet_rows

    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    cache = EmbeddingCache(cache_dir, encoder.document_hash)
    n_rows = n_computed = 0
    with (tqdm(total=parquet_rows(table_file), desc="report_embeddings", unit="report",
               disable=not progress) as bar,
          ParquetChunkWriter(out_file) as out):
        for chunk in iter_parquet_chunks(table_file, chunk_size, [*keep_columns, text_column]):
            texts = chunk[text_column].fill_null("").to_list()
            keys = [text_hash(t, instruction) for t in texts]
            n_computed += encode_missing(encoder, cache, keys, texts, instruction, batch_size)
            vectors = cache.get(keys) if keys else np.zeros((0, encoder.dim), np.float32)
            out.write(chunk.select(keep_columns).with_columns(
                pl.Series("embedding", vectors, dtype=pl.Array(pl.Float32, encoder.dim)),
                pl.lit(encoder.content_hash).alias("encoder_hash")))
            n_rows += chunk.height
            bar.update(chunk.height)
    return EmbeddingSummary(n_rows=n_rows, n_computed=n_computed, dim=encoder.dim)
