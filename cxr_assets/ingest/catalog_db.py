"""Catalog writes: atomic Parquet files, DuckDB tables in one transaction, one writer at a time.

Kept apart from the cataloguing so the rules of a safe write (tmp + rename, a DuckDB
transaction, the writer lock, DuckDB's bounded memory) are read in one place; `write_catalog`
in `catalog.py` puts them together for an ingest run.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from cxr_assets.failpoints import failpoint
from cxr_assets.fileio import atomic_path

SORTED_ROW_GROUP = 8192
"""Parquet row group of a table sorted from its chunks: DuckDB's sort buffers one row group of
output, and smaller groups cost DuckDB more when it loads the file."""

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_GLOB_CHARS = frozenset("*?[]{}")
# One thread needs the least memory; the buffer-pool cap keeps DuckDB's sort and table load from
# growing with the catalog (by default it may take 80% of RAM): past it, DuckDB spills to disk.
_DUCKDB_CONFIG = {"threads": 1, "memory_limit": "192MB"}


def duckdb_can_read(path: object) -> bool:
    """False when DuckDB's read_parquet would expand glob characters in the path."""
    return not (_GLOB_CHARS & set(str(path)))


def _sql_string(value: object) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def copy_file_atomic(source: Path, path: Path) -> Path:
    """Copy a file to a temporary sibling of `path` and rename (fileio.atomic_path), like
    parquet_io.write_parquet_atomic."""
    import shutil

    path = Path(path)
    with atomic_path(path) as tmp:
        shutil.copyfile(source, tmp)
    return path


def sort_parquet_files(sources: Sequence[Path], target: Path, by: Sequence[str], nulls_last: bool,
                       exclude: str, temp_dir: Path) -> Path:
    """Sort Parquet files into one zstd Parquet file with DuckDB, dropping column `exclude`.

    DuckDB sorts in its own bounded memory (spilling, if ever, into `temp_dir`), which the
    catalog load right after reuses. The paths must be readable by DuckDB (`duckdb_can_read`).
    """
    import duckdb

    order = ", ".join(f'"{c}" ASC NULLS {"LAST" if nulls_last else "FIRST"}' for c in by)
    files = ", ".join(_sql_string(part) for part in sources)
    con = duckdb.connect(":memory:", config={**_DUCKDB_CONFIG, "temp_directory": str(temp_dir)})
    try:
        con.execute(f"COPY (SELECT * EXCLUDE ({exclude}) FROM read_parquet([{files}]) "
                    f"ORDER BY {order}) TO {_sql_string(target)} "
                    f"(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {SORTED_ROW_GROUP})")
    finally:
        con.close()
    return target


def write_duckdb_tables(db_path: Path, tables: dict[str, pl.DataFrame | Path]) -> Path:
    """Create or replace `tables` in a DuckDB file in one transaction (other tables are kept).

    A table given as a Parquet path is loaded by DuckDB from the file (no second in-memory
    copy of the rows); a DataFrame is registered as Arrow.
    """
    import duckdb

    db_path = Path(db_path)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    for name in tables:
        if not _IDENTIFIER.match(name):
            raise ValueError(f"invalid DuckDB table name {name!r}")
    con = duckdb.connect(str(db_path))
    try:
        con.execute(f"SET threads = {_DUCKDB_CONFIG['threads']}")
        con.execute(f"SET memory_limit = '{_DUCKDB_CONFIG['memory_limit']}'")
        con.begin()
        for name, table in tables.items():
            if isinstance(table, pl.DataFrame) or not duckdb_can_read(table):
                # read_parquet would expand glob characters in a path: read such a file here.
                df = table if isinstance(table, pl.DataFrame) else pl.read_parquet(table, glob=False)
                con.register("_incoming", df.to_arrow())
                con.execute(f'CREATE OR REPLACE TABLE "{name}" AS SELECT * FROM _incoming')
                con.unregister("_incoming")
                del df
            else:
                con.execute(f'CREATE OR REPLACE TABLE "{name}" AS SELECT * FROM read_parquet({_sql_string(table)})')
            failpoint("catalog.inside_duckdb_transaction")
        con.commit()
    except Exception:
        con.rollback()
        raise
    finally:
        con.close()
    return db_path


WRITE_LOCK = ".write.lock"
WRITE_LOCK_TIMEOUT_S = 600.0


class CatalogWriteLock:
    """Exclusive lock on catalog_dir/.write.lock: one catalog writer at a time.

    Two concurrent raw_studies runs would otherwise interleave their Parquet files and one
    would fail on DuckDB's own file lock ("Could not set lock on file"), leaving Parquet from
    one run and DuckDB from the other. The kernel releases the lock when its holder dies.
    """

    def __init__(self, catalog_dir: Path, timeout_s: float = WRITE_LOCK_TIMEOUT_S) -> None:
        self.path = Path(catalog_dir) / WRITE_LOCK
        self.timeout_s = timeout_s
        self._handle = None

    def __enter__(self):
        import time

        try:
            import fcntl
        except ImportError:  # no flock (Windows): one writer assumed, as before
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "a")  # closed (lock released) in __exit__
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() > deadline:
                    self._handle.close()
                    self._handle = None
                    raise TimeoutError(
                        f"catalog {self.path.parent} is being written by another process: "
                        f"{self.path} still locked after {self.timeout_s:.0f} s") from None
                time.sleep(0.1)

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the descriptor releases the flock
            self._handle = None
