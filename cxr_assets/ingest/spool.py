"""Bounded-memory tables for cataloguing: rows spooled as Parquet chunks, and a hash index.

The catalogue of a large dataset must not hold its tables as Python values. A `ChunkedTable`
keeps at most one chunk of rows in Python and writes the rest as Parquet chunks into a
temporary `Spool` folder; `finish` gives a sorted frame (small tables) or a `SpooledTable`
that is sorted on disk only when it is read or written. `RowIndex` maps keys to row numbers
with no Python object per key, reading keys back from the table to confirm a match.
Nothing here knows the catalog's tables: each table is given its schema and sort order.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from array import array
from bisect import bisect_right
from collections.abc import Callable
from pathlib import Path

import polars as pl

from cxr_assets.ingest.catalog_db import duckdb_can_read, sort_parquet_files

SortOrder = tuple[tuple[str, ...], bool]
"""(sort columns, nulls last) of a table."""


class Spool:
    """A temporary folder for Parquet chunks, removed once nothing refers to it any more."""

    def __init__(self, parent: Path | None) -> None:
        if parent is not None:
            Path(parent).mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix="cxr-ingest-spool-", dir=parent))
        weakref.finalize(self, shutil.rmtree, str(self.path), True)


class SpoolMaker:
    """The spool of one catalogue run, created on first use (a small run never needs one)."""

    def __init__(self, parent: Path | None) -> None:
        self.parent = parent
        self.spool: Spool | None = None

    def __call__(self) -> Spool:
        if self.spool is None:
            self.spool = Spool(self.parent)
        return self.spool


class SpooledTable:
    """A table kept as Parquet chunks (each with its running row number `_row`) in a spool."""

    def __init__(self, name: str, schema: dict[str, pl.DataType], spool: Spool,
                 parts: list[Path], height: int, order: SortOrder) -> None:
        self.name, self.schema, self.spool = name, schema, spool
        self.parts = parts
        self.height = height
        self.order = order
        self.sorted_path: Path | None = None  # the sorted table once written (write_sorted)

    def _order(self) -> tuple[list[str], bool]:
        by, nulls_last = self.order
        return [*by, "_row"], nulls_last  # _row: ties keep the order rows were added in

    def load(self) -> pl.DataFrame:
        """The whole table, sorted, as one frame."""
        if self.sorted_path is not None:
            return pl.read_parquet(self.sorted_path, glob=False)
        by, nulls_last = self._order()
        return (pl.read_parquet(self.parts, glob=False).sort(by, nulls_last=nulls_last)
                .drop("_row").rechunk())

    def write_sorted(self) -> Path:
        """Sort the chunks into one Parquet file in the spool.

        DuckDB sorts (bounded memory, spilling into the spool); `_row` breaks ties, so the
        order is the one `load` gives.
        """
        if self.sorted_path is not None:
            return self.sorted_path
        target = self.spool.path / f"{self.name}.sorted.parquet"
        if not duckdb_can_read(self.spool.path):  # read_parquet would expand these
            self.load().write_parquet(target)
        else:
            by, nulls_last = self._order()
            sort_parquet_files(self.parts, target, by, nulls_last, exclude="_row",
                               temp_dir=self.spool.path / "duckdb.tmp")
        for part in self.parts:
            part.unlink(missing_ok=True)
        self.parts = []
        self.sorted_path = target
        return target


class ChunkedTable:
    """One table filled a row at a time.

    The rows since the last flush are Python lists (one per column); every `chunk_rows` rows
    they are written as a Parquet chunk into a spool folder (created on the first flush), so
    a small run never touches the disk and a large one holds at most one chunk in Python.
    """

    def __init__(self, name: str, schema: dict[str, pl.DataType], chunk_rows: int,
                 spool: Callable[[], Spool], order: SortOrder) -> None:
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
        self.name, self.schema, self.chunk_rows = name, schema, chunk_rows
        self.order = order
        self._spool = spool  # the run's spool, created when first asked for
        self.height = 0
        self._parts: list[Path] = []
        self._starts: list[int] = []  # row number of each part's first row
        self._pending: dict[str, list] = {name: [] for name in schema}
        self._n_pending = 0
        self._read_back: dict[tuple[int, str], pl.Series] = {}  # (part, column) read from disk

    def append(self, row: dict) -> int:
        """Add a row (a dict with every column); returns its row number."""
        for name, values in self._pending.items():
            values.append(row[name])
        self._n_pending += 1
        self.height += 1
        if self._n_pending >= self.chunk_rows:
            self.flush()
        return self.height - 1

    def _pending_frame(self) -> pl.DataFrame:
        frame = pl.DataFrame(self._pending, schema=self.schema)
        self._pending = {name: [] for name in self.schema}
        self._n_pending = 0
        return frame

    def flush(self) -> None:
        if not self._n_pending:
            return
        start = self.height - self._n_pending
        path = self._spool().path / f"{self.name}.{len(self._parts):06d}.parquet"
        self._pending_frame().with_columns(
            pl.int_range(start, self.height, dtype=pl.Int64).alias("_row")
        ).write_parquet(path, compression="lz4")
        self._parts.append(path)
        self._starts.append(start)

    def value(self, column: str, row: int):
        """One cell by row number (to name what came first when a duplicate turns up)."""
        first_pending = self.height - self._n_pending
        if row >= first_pending:
            return self._pending[column][row - first_pending]
        k = bisect_right(self._starts, row) - 1
        values = self._read_back.get((k, column))
        if values is None:
            if len(self._read_back) >= 8:  # duplicates come in runs: keep the last few
                self._read_back.clear()
            values = pl.read_parquet(self._parts[k], columns=[column], glob=False)[column]
            self._read_back[(k, column)] = values
        return values[row - self._starts[k]]

    def finish(self) -> pl.DataFrame | SpooledTable:
        """The table: a sorted frame when it never left memory, else its spooled chunks."""
        self._read_back = {}
        if not self._parts:
            by, nulls_last = self.order
            return self._pending_frame().sort(*by, nulls_last=nulls_last, maintain_order=True)
        self.flush()
        table = SpooledTable(self.name, self.schema, self._spool(), self._parts, self.height,
                             self.order)
        self._parts, self._starts, self.height = [], [], 0
        return table


class RowIndex:
    """key -> row number of the table row that holds it, with no Python object per key.

    The de-duplication indexes (study ids, image ids, content hashes) are the only state that
    grows with the number of studies; as dicts they cost ~150 bytes an entry in small Python
    objects that fragment the heap. This is open addressing over two arrays of 8-byte slots
    (the key's hash and its row number, at most half full); a hash match is confirmed by
    reading the key back from the table, so keys that share a hash are never confused.
    """

    _EMPTY = -1

    def __init__(self, key_of: Callable[[int], object], capacity: int = 1024) -> None:
        self._key_of = key_of  # row number -> the key stored in that row
        self._allocate(capacity)
        self._n = 0

    def _allocate(self, capacity: int) -> None:
        self._hashes = array("q", bytes(8 * capacity))
        self._rows = array("q", [self._EMPTY]) * capacity
        self._mask = capacity - 1  # capacity is a power of two

    def __len__(self) -> int:
        return self._n

    def get(self, key) -> int | None:
        h = hash(key)
        i = h & self._mask
        while (row := self._rows[i]) != self._EMPTY:
            if self._hashes[i] == h and self._key_of(row) == key:
                return row
            i = (i + 1) & self._mask
        return None

    def add(self, key, row: int) -> None:
        """Record `key` at `row` (the caller has checked that the key is new)."""
        if 2 * (self._n + 1) > len(self._rows):
            hashes, rows = self._hashes, self._rows
            self._allocate(2 * len(rows))
            for h, old in zip(hashes, rows, strict=True):
                if old != self._EMPTY:
                    self._put(h, old)
        self._put(hash(key), row)
        self._n += 1

    def _put(self, h: int, row: int) -> None:
        i = h & self._mask
        while self._rows[i] != self._EMPTY:
            i = (i + 1) & self._mask
        self._hashes[i] = h
        self._rows[i] = row
