"""Chunked Parquet I/O: read a table in slices, write one from frames that arrive one at a time.

Stages that must not hold a whole table in memory (study_images, report_texts,
report_embeddings) read and write through these, so the atomic tmp + rename rule of
`cxr_assets.fileio` holds for streamed writes too. `write_parquet_atomic` is the one whole-frame
atomic Parquet write (stages.base.write_parquet and the catalog use it).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Self

import polars as pl

from cxr_assets.fileio import atomic_path, move_into_place, temp_sibling


def write_parquet_atomic(frame: pl.DataFrame, path: Path) -> Path:
    """Write a Polars frame as Parquet to a temporary sibling and rename, so readers never see
    half a file (fileio.atomic_path: fsync + os.replace; on an error `path` is left as it was)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        frame.write_parquet(tmp)
    return path


def parquet_rows(path: Path) -> int:
    """Row count of a Parquet file, from its footer (no column is read)."""
    return pl.scan_parquet(path, glob=False).select(pl.len()).collect().item()


def iter_parquet_chunks(
    path: Path, chunk_rows: int, columns: list[str] | None = None
) -> Iterator[pl.DataFrame]:
    """A Parquet file as Polars frames of at most `chunk_rows` rows, in file order.

    Each frame is a lazy scan sliced to its rows: the reader skips row groups outside the slice,
    so memory holds one chunk plus at most the row groups it touches (a file written with small
    row groups, as ParquetChunkWriter writes, streams in constant memory; a file written as one
    big row group is decoded up to that group's size per chunk). An empty file gives one empty
    frame with the file's schema, so callers always see the columns.
    """
    scan = pl.scan_parquet(path, glob=False)
    if columns:
        scan = scan.select(columns)
    total = parquet_rows(path)
    if total == 0:
        yield scan.collect()
    for offset in range(0, total, chunk_rows):
        yield scan.slice(offset, chunk_rows).collect()


class ParquetChunkWriter:
    """Atomic Parquet write (tmp + rename, as write_parquet_atomic) of Polars frames that arrive one
    at a time, all with one schema; each becomes a row group, so only the current one is in memory.

        with ParquetChunkWriter(path) as out:
            for frame in frames:
                out.write(frame)

    The file appears at `path` when the block ends without an error (with the schema of the first
    frame even when every frame is empty; at least one frame is required); on an error the
    temporary file is removed and `path` is left as it was.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.tmp = temp_sibling(self.path)
        self.rows = 0
        self._writer = None

    def write(self, frame: pl.DataFrame) -> None:
        import pyarrow.parquet as pq

        table = frame.to_arrow()
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self.tmp, table.schema, compression="zstd")
        elif table.schema != self._writer.schema:
            table = table.cast(self._writer.schema)  # e.g. an all-null chunk; raises if incompatible
        self._writer.write_table(table)
        self.rows += frame.height

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        writer, self._writer = self._writer, None
        try:
            if writer is not None:
                writer.close()
            if kind is None:
                if writer is None:
                    raise ValueError(f"no frames were written to {self.path}")
                move_into_place(self.tmp, self.path)
        finally:
            self.tmp.unlink(missing_ok=True)


def write_parquet_chunks(chunks: Iterable[pl.DataFrame], path: Path) -> int:
    """Write a stream of frames to one Parquet file atomically (ParquetChunkWriter); returns
    the number of rows written."""
    with ParquetChunkWriter(path) as out:
        for chunk in chunks:
            out.write(chunk)
    return out.rows
