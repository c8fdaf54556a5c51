"""Small CSV helpers shared by the CSV-based layout adapters (manifest, IU, CheXpert, PadChest, OpenI)."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import polars as pl

ROW = "__row"  # 0-based data row number added to every table read here


# --- helpers shared by the CSV layouts -----------------------------------------------------------

def option_path(raw_dir: Path, value: str | None, default: Path) -> Path:
    """A path option: absolute, or relative to raw_dir; `default` when unset."""
    if not value:
        return default
    path = Path(value).expanduser()
    return path if path.is_absolute() else raw_dir / path


def csv_header(path: Path) -> list[str]:
    """Column names of a CSV (or .csv.gz) without reading the rest; [] when unreadable."""
    try:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8-sig", errors="replace", newline="") as handle:
            return next(csv.reader(handle), [])
    except (OSError, EOFError, csv.Error):
        return []


def read_csv(path: Path, what: str, columns: list[str] | None = None) -> pl.DataFrame:
    """Every cell as a string (no type guessing: ids keep their leading zeros), plus ROW.

    Polars reads .csv.gz directly. Blank cells are null.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    try:
        frame = pl.read_csv(path, infer_schema=False, columns=columns, encoding="utf8-lossy")
    except pl.exceptions.NoDataError:
        raise ValueError(f"{path}: {what} is empty (no header line)") from None
    except pl.exceptions.PolarsError as error:
        # Polars' message quotes the offending cell, which may be report text: not repeated here.
        raise ValueError(f"{path}: {what} is not a well-formed CSV ({type(error).__name__}: "
                         "a row with more cells than the header, or an unclosed quote?)") from None
    return frame.with_row_index(ROW)


def require_columns(path: Path, have: list[str], needed: dict[str, str]) -> None:
    """Raise a ValueError naming the CSV, the missing columns, the ones it has and the param.

    `needed` maps column name -> the params key that names it (or a description).
    """
    missing = [name for name in needed if name not in have]
    if missing:
        keys = ", ".join(f"{name!r} ({needed[name]})" for name in missing)
        present = ", ".join(map(repr, have)) or "no header"
        raise ValueError(f"{path}: missing column(s) {keys}; the CSV has {present}")


def column_or_null(name: str | None) -> pl.Expr:
    """An optional column: the column when named, else nulls."""
    return pl.col(name) if name else pl.lit(None, pl.String)


def origin(path: Path, row: int) -> str:
    return f"{path}#row={row}"


def blank(value: str | None) -> bool:
    return value is None or not value.strip()


# A NUL byte in a path makes every file-system call raise ValueError: such a row is a stray.
NUL_PATH = "image path cell contains a NUL byte"


def has_nul(*values: str | None) -> bool:
    return any(value and "\x00" in value for value in values)


def conflict_note(studies: list[str], what: str) -> list[str]:
    if not studies:
        return []
    sample = ", ".join(studies[:3])
    note = f"{len(studies)} studies have rows with differing {what}; the first was used"
    return [f"{note} (e.g. {sample})"]


# --- the generic manifest layout -----------------------------------------------------------------
