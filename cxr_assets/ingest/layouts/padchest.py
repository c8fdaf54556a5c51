"""PadChest: PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv(.gz), one row per image.

Columns used: ImageID (file name), ImageDir (numbered image sub-folder), StudyID, PatientID,
Projection (PA, AP, AP_horizontal, L, COSTAL, ...), Report (stemmed Spanish, repeated on
every row of a study). Images are images_root/<ImageDir>/<ImageID> (images_root default
raw_dir). A study's report is its first non-blank Report cell; studies whose rows disagree on
the report or the patient are counted in the notes.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from cxr_assets.ingest.layouts._csv import (
    NUL_PATH,
    ROW,
    conflict_note,
    csv_header,
    has_nul,
    option_path,
    origin,
    read_csv,
    require_columns,
)
from cxr_assets.ingest.listing import ImageRef, LayoutListing, ReportRef, Stray, StudyFiles

PATTERNS = ("PADCHEST_*.csv", "PADCHEST_*.csv.gz")
COLUMNS = ("ImageID", "ImageDir", "StudyID", "PatientID", "Projection", "Report")


def _found(raw_dir: Path) -> list[Path]:
    return sorted(p for pattern in PATTERNS for p in raw_dir.glob(pattern) if p.is_file())


def detect(raw_dir: Path) -> str | None:
    found = _found(raw_dir)
    return f"{found[0]} is a PadChest label CSV" if found else None


def list_studies(raw_dir: Path, options) -> LayoutListing:
    raw_dir = Path(raw_dir)
    notes: list[str] = []
    if options.metadata_csv:
        path = option_path(raw_dir, options.metadata_csv, raw_dir)
    else:
        found = _found(raw_dir)
        if not found:
            raise FileNotFoundError(f"{raw_dir}: no PADCHEST_*.csv(.gz); set ingest.metadata_csv")
        path = found[0]
        if len(found) > 1:  # never merge two releases silently
            notes.append(f"{len(found)} PADCHEST_*.csv files; listed {path.name} only "
                         "(set ingest.metadata_csv)")
    require_columns(path, csv_header(path), {c: "PadChest column" for c in COLUMNS})
    frame = read_csv(path, "PadChest CSV (ingest.metadata_csv)", columns=list(COLUMNS))
    root = option_path(raw_dir, options.images_root, raw_dir)

    # Report and disagreements per study, grouped by polars over the rows that place an image.
    # Ids stripped once, here: grouping and placing must agree on them (" S1" is "S1").
    frame = frame.with_columns(pl.col("StudyID", "ImageID").str.strip_chars())
    placed = frame.filter(pl.col("StudyID").str.len_chars() > 0,
                          pl.col("ImageID").str.len_chars() > 0)
    text = pl.col("Report").str.strip_chars()
    per_study = (
        placed.with_columns(filled=text.str.len_chars().fill_null(0) > 0)
        .sort("filled", descending=True, maintain_order=True)  # non-blank rows first, stable
        .group_by("StudyID", maintain_order=True)
        .agg(pl.col(ROW).first(), pl.col("Report").first(),
             text.filter(pl.col("filled")).n_unique().alias("texts"),
             pl.col("PatientID").n_unique().alias("patients"))
    )
    report_of = {sid: ReportRef(origin(path, row), text=report or "")
                 for sid, row, report, _, _ in per_study.iter_rows()}

    studies: dict[str, StudyFiles] = {}
    stray: list[Stray] = []
    for row, image_id, image_dir, sid, pid, projection in frame.select(
            ROW, *COLUMNS[:5]).iter_rows():
        if not sid or not image_id:
            why = "row without StudyID" if not sid else "row without ImageID"
            stray.append(Stray(origin(path, row), sid or None, why))
            continue
        if has_nul(image_id, image_dir):
            stray.append(Stray(origin(path, row), sid, NUL_PATH))
            continue
        study = studies.get(sid)
        if study is None:
            study = studies[sid] = StudyFiles(sid, (pid or "").strip() or sid, report_of[sid])
        study.images.append(ImageRef(root.joinpath((image_dir or "").strip(), image_id),
                                     image_id=image_id, view_hint=projection))

    notes.append(f"PadChest {path.name}: {frame.height} rows, images under {root}/<ImageDir>/")
    notes += conflict_note(per_study.filter(pl.col("texts") > 1)["StudyID"].to_list(), "reports")
    patients = per_study.filter(pl.col("patients") > 1)["StudyID"].to_list()
    notes += conflict_note(patients, "PatientID")
    return LayoutListing("padchest", list(studies.values()), stray, notes)
