"""Generic CSV manifest: one row per image, an image path column and a report text column.

The column names come from `ingest.columns` (image_path, report_text, optional study_id,
patient_id, view). Without a study id column every row is its own study ("row<n>"); with one,
the rows of a study share its images and its report (the first non-blank text). The CSV is
`ingest.metadata_csv` (default raw_dir/manifest.csv); image paths are relative to
`ingest.images_root` (default raw_dir).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from cxr_assets.ingest.layouts._csv import (
    NUL_PATH,
    ROW,
    blank,
    column_or_null,
    conflict_note,
    csv_header,
    has_nul,
    option_path,
    origin,
    read_csv,
    require_columns,
)
from cxr_assets.ingest.listing import ImageRef, LayoutListing, ReportRef, Stray, StudyFiles

DEFAULT_NAME = "manifest.csv"


def detect(raw_dir: Path) -> str | None:
    from cxr_assets.config import ManifestColumns

    path = raw_dir / DEFAULT_NAME
    columns = ManifestColumns()
    header = csv_header(path) if path.is_file() else []
    if columns.image_path in header and columns.report_text in header:
        return f"{path} has the {columns.image_path!r} and {columns.report_text!r} columns"
    return None


def list_studies(raw_dir: Path, options) -> LayoutListing:
    raw_dir = Path(raw_dir)
    cols = options.columns
    path = option_path(raw_dir, options.metadata_csv, raw_dir / DEFAULT_NAME)
    frame = read_csv(path, "manifest CSV (ingest.metadata_csv)")
    needed = {cols.image_path: "ingest.columns.image_path",
              cols.report_text: "ingest.columns.report_text"}
    for key in ("study_id", "patient_id", "view"):
        if getattr(cols, key):
            needed[getattr(cols, key)] = f"ingest.columns.{key}"
    require_columns(path, [c for c in frame.columns if c != ROW], needed)
    root = option_path(raw_dir, options.images_root, raw_dir)

    # One pass: each row is an image of its study, or a stray when it cannot be placed.
    # Aliased: one CSV column may serve two roles (e.g. patient id = study id).
    rows = frame.select(ROW, column_or_null(cols.study_id).alias("s"),
                        column_or_null(cols.patient_id).alias("p"),
                        pl.col(cols.image_path).alias("i"), column_or_null(cols.view).alias("v"),
                        pl.col(cols.report_text).alias("r"))
    studies: dict[str, StudyFiles] = {}
    reports: dict[str, list[tuple[int, str | None]]] = {}
    stray: list[Stray] = []
    for row, sid, pid, image, view, text in rows.iter_rows():
        sid = (sid or "").strip() if cols.study_id else f"row{row}"
        if not sid:
            why = f"empty study id cell (column {cols.study_id!r})"
            stray.append(Stray(origin(path, row), None, why))
            continue
        if blank(image):
            why = f"empty image path cell (column {cols.image_path!r})"
            stray.append(Stray(origin(path, row), sid, why))
            continue
        if has_nul(image):
            stray.append(Stray(origin(path, row), sid, NUL_PATH))
            continue
        study = studies.get(sid)
        if study is None:  # the first row of a study names its patient
            study = studies[sid] = StudyFiles(sid, (pid or "").strip() or sid, None)
        study.images.append(ImageRef(root / image.strip(), image_id=image.strip(), view_hint=view))
        reports.setdefault(sid, []).append((row, text))

    # A study's report is its first non-blank text; an all-blank study keeps its first row so
    # the catalog quarantines it as an empty report at that row.
    conflicts = []
    for sid, texts in reports.items():
        filled = [(row, text) for row, text in texts if not blank(text)]
        row, text = filled[0] if filled else (texts[0][0], "")
        studies[sid].report = ReportRef(origin(path, row), text=text)
        if len({" ".join(t.split()) for _, t in filled}) > 1:
            conflicts.append(sid)
    notes = [f"manifest {path}: {frame.height} rows, image paths relative to {root}"]
    return LayoutListing("csv_manifest", list(studies.values()), stray,
                         notes + conflict_note(conflicts, "report texts"))
