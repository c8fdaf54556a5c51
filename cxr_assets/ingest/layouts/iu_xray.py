"""IU X-ray, Kaggle layout: indiana_reports.csv + indiana_projections.csv + images_normalized/.

indiana_reports.csv has one row per uid (indication, comparison, findings, impression);
indiana_projections.csv one row per image (uid, filename, projection Frontal/Lateral). IU has
one study per patient id, so study_id = patient_id = "CXR<uid>" (the OpenI id). Images are
images_root/<filename> (images_root default raw_dir/images_normalized). `ingest.metadata_csv`
replaces the projections CSV, `ingest.reports_csv` the reports CSV.

`read_reports_csv` is the project's one reader of the IU reports CSV: the text-encoder corpus
and evaluation (`text.evaluation.load_iu_reports`) read it through here too.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from cxr_assets.ingest.layouts._csv import (
    NUL_PATH,
    ROW,
    blank,
    csv_header,
    has_nul,
    option_path,
    origin,
    read_csv,
    require_columns,
)
from cxr_assets.ingest.listing import ImageRef, LayoutListing, ReportRef, Stray, StudyFiles
from cxr_assets.reports.sections import text_from_columns

REPORTS = "indiana_reports.csv"
PROJECTIONS = "indiana_projections.csv"
IMAGES = "images_normalized"
SECTIONS = ("indication", "comparison", "findings", "impression")
REPORT_COLUMNS = ("uid", "findings", "impression")  # required; indication, comparison optional


def read_reports_csv(path: Path, what: str = "IU reports CSV") -> pl.DataFrame:
    """The IU reports CSV as read: every cell a string (blank cells null), plus its row number
    (`_csv.ROW`). ValueError naming the file when uid, findings or impression is missing or the
    CSV is malformed; FileNotFoundError when it does not exist."""
    path = Path(path)
    require_columns(path, csv_header(path) if path.is_file() else [],
                    {c: "IU Kaggle column" for c in REPORT_COLUMNS})
    return read_csv(path, what)


def detect(raw_dir: Path) -> str | None:
    if (raw_dir / REPORTS).is_file() and (raw_dir / PROJECTIONS).is_file():
        return f"{raw_dir} holds {REPORTS} and {PROJECTIONS} (IU X-ray Kaggle layout)"
    return None


def list_studies(raw_dir: Path, options) -> LayoutListing:
    raw_dir = Path(raw_dir)
    reports_csv = option_path(raw_dir, options.reports_csv, raw_dir / REPORTS)
    projections_csv = option_path(raw_dir, options.metadata_csv, raw_dir / PROJECTIONS)
    root = option_path(raw_dir, options.images_root, raw_dir / IMAGES)
    reports = read_reports_csv(reports_csv, "IU reports CSV (ingest.reports_csv)")
    require_columns(projections_csv, csv_header(projections_csv) if projections_csv.is_file() else [],
                    {c: "IU Kaggle column" for c in ("uid", "filename", "projection")})
    projections = read_csv(projections_csv, "IU projections CSV (ingest.metadata_csv)")

    studies: dict[str, StudyFiles] = {}
    stray: list[Stray] = []

    def study(uid: str) -> StudyFiles:
        sid = f"CXR{uid}"
        if sid not in studies:
            studies[sid] = StudyFiles(sid, sid, None)
        return studies[sid]

    # Reports: one row per uid. The text is handed over as is (even empty): the catalog judges it.
    sections = [s for s in SECTIONS if s in reports.columns]
    for row, uid, *bodies in reports.select(ROW, "uid", *sections).iter_rows():
        uid = (uid or "").strip()
        if not uid:
            stray.append(Stray(origin(reports_csv, row), None, "report row without uid"))
            continue
        target = study(uid)
        if target.report is not None:  # a second row for the same uid is an input of its own
            stray.append(Stray(origin(reports_csv, row), target.study_id,
                               f"second report row for uid {uid} ({target.report.origin} used)"))
            continue
        text = text_from_columns(**dict(zip(sections, bodies, strict=True)))
        target.report = ReportRef(origin(reports_csv, row), text=text)

    for row, uid, filename, projection in projections.select(
            ROW, "uid", "filename", "projection").iter_rows():
        uid = (uid or "").strip()
        if not uid or blank(filename) or has_nul(filename):
            why = ("projection row without uid" if not uid else "projection row without filename"
                   if blank(filename) else NUL_PATH)
            stray.append(Stray(origin(projections_csv, row), f"CXR{uid}" if uid else None, why))
            continue
        filename = filename.strip()
        study(uid).images.append(ImageRef(root / filename, image_id=Path(filename).stem,
                                          view_hint=projection))

    notes = [f"IU X-ray: {reports.height} report rows, {projections.height} projection rows; "
             f"images under {root}" + ("" if root.is_dir() else " (folder absent)")]
    return LayoutListing("iu_xray", list(studies.values()), stray, notes)
