"""CheXpert v1 train.csv / valid.csv, optionally with CheXpert Plus reports.

v1 rows: Path (e.g. CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg), Sex,
Age, Frontal/Lateral, AP/PA, 14 labels. study_id = "patient00001-study1", patient_id =
"patient00001"; the view is AP/PA for frontal images, LATERAL for lateral ones.

Image root: ingest.images_root when set. Otherwise the paths start with the dataset folder's
own name, so when the CSV's folder (raw_dir when ingest.metadata_csv is set) *is* that folder,
the paths are resolved against its parent; else against that folder itself.

CheXpert v1 has no reports: a study's report is None (the catalog quarantines its images with
"study has no report") unless ingest.reports_csv names the CheXpert Plus CSV
(df_chexpert_plus_240401.csv: path_to_image + section_* columns + report), joined by
patient/study. A CheXpert Plus CSV also works alone as ingest.metadata_csv.
"""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl

from cxr_assets.ingest.layouts._csv import (
    NUL_PATH,
    ROW,
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
from cxr_assets.reports.sections import text_from_columns

MAIN_NAMES = ("train.csv", "valid.csv", "train.csv.gz", "valid.csv.gz")
_STUDY = re.compile(r"(patient\d+)/(study\d+)/")
# v1 columns and their CheXpert Plus counterparts: (image path, frontal/lateral, AP/PA)
V1 = ("Path", "Frontal/Lateral", "AP/PA")
PLUS = ("path_to_image", "frontal_lateral", "ap_pa")
PLUS_SECTIONS = ("section_clinical_history", "section_history", "section_comparison",
                 "section_technique", "section_findings", "section_impression")
NO_REPORTS = ("CheXpert v1 has no reports: set ingest.reports_csv to the CheXpert Plus CSV "
              "(df_chexpert_plus_240401.csv)")


def _folders(raw_dir: Path) -> list[Path]:
    return [raw_dir, *sorted(p for p in raw_dir.glob("CheXpert-v1.0*") if p.is_dir())]


def detect(raw_dir: Path) -> str | None:
    for folder in _folders(raw_dir):
        for name in MAIN_NAMES:
            if "Path" in csv_header(folder / name):
                return f"{folder / name} has a 'Path' column (CheXpert)"
    return None


def _main_csvs(raw_dir: Path, options) -> list[Path]:
    if options.metadata_csv:
        return [option_path(raw_dir, options.metadata_csv, raw_dir)]
    for folder in _folders(raw_dir):
        found = [folder / name for name in MAIN_NAMES if (folder / name).is_file()]
        if found:
            return found
    raise FileNotFoundError(
        f"{raw_dir}: no CheXpert train.csv / valid.csv; set ingest.metadata_csv")


def _plus_reports(path: Path) -> tuple[dict[str, ReportRef], list[str]]:
    """study_id -> report from a CheXpert Plus CSV (first row with text), and conflict notes."""
    header = csv_header(path)
    require_columns(path, header, {PLUS[0]: "CheXpert Plus image path column"})
    sections = [c for c in PLUS_SECTIONS if c in header]  # tolerate releases without some
    texts = sections + (["report"] if "report" in header else [])
    if not texts:
        raise ValueError(f"{path}: no section_* or report column (CheXpert Plus CSV expected)")
    frame = read_csv(path, "CheXpert Plus CSV (ingest.reports_csv)", columns=[PLUS[0], *texts])
    filled = pl.any_horizontal([pl.col(c).str.strip_chars().str.len_chars() > 0 for c in texts])
    per_study = (
        frame.with_columns(
            sid=pl.col(PLUS[0]).str.extract(r"(patient\d+/study\d+)/", 1).str.replace("/", "-"),
            filled=filled.fill_null(False),
            joined=pl.concat_str(texts, separator="\x1f", ignore_nulls=True))
        .filter(pl.col("sid").is_not_null())
        .sort("filled", descending=True, maintain_order=True)  # rows with text first, stable
        .group_by("sid", maintain_order=True)
        .agg(pl.col(ROW).first(), *[pl.col(c).first() for c in texts],
             pl.col("joined").filter(pl.col("filled")).n_unique().alias("n_texts"))
    )
    reports = {}
    for sid, row, *bodies in per_study.select("sid", ROW, *texts).iter_rows():
        named = dict(zip(texts, bodies, strict=True))
        text = text_from_columns(**{c: named[c] for c in sections}) or (named.get("report") or "")
        reports[sid] = ReportRef(origin(path, row), text=text)
    conflicts = per_study.filter(pl.col("n_texts") > 1)["sid"].to_list()
    return reports, conflict_note(conflicts, "report texts")


def list_studies(raw_dir: Path, options) -> LayoutListing:
    raw_dir = Path(raw_dir)
    studies: dict[str, StudyFiles] = {}
    stray: list[Stray] = []
    reports: dict[str, ReportRef] = {}
    notes: list[str] = []
    if options.reports_csv:
        reports, conflicts = _plus_reports(option_path(raw_dir, options.reports_csv, raw_dir))
        notes += conflicts
    for path in _main_csvs(raw_dir, options):
        header = csv_header(path)
        names = PLUS if PLUS[0] in header and V1[0] not in header else V1
        require_columns(path, header, {names[0]: "CheXpert Path or CheXpert Plus path_to_image"})
        if names is PLUS and not options.reports_csv:  # CheXpert Plus alone: its own reports
            found, conflicts = _plus_reports(path)
            reports, notes = reports | found, notes + conflicts
        frame = read_csv(path, "CheXpert CSV (ingest.metadata_csv)",
                         columns=[c for c in names if c in header])
        optional = [column_or_null(c if c in header else None).alias(c) for c in names[1:]]
        first = next((p for p in frame[names[0]] if p), "")
        base = raw_dir if options.metadata_csv else path.parent
        default = base.parent if first.split("/")[0] == base.name else base
        root = option_path(raw_dir, options.images_root, default)
        for row, rel, side, ap_pa in frame.select(ROW, names[0], *optional).iter_rows():
            match = _STUDY.search(rel or "")
            if match is None:
                why = (f"image path {rel!r} has no patientNNNNN/studyN folders" if rel
                       else "row without image path")
                stray.append(Stray(origin(path, row), None, why))
                continue
            patient, sid = match[1], f"{match[1]}-{match[2]}"
            if has_nul(rel):
                stray.append(Stray(origin(path, row), sid, NUL_PATH))
                continue
            study = studies.get(sid)
            if study is None:
                study = studies[sid] = StudyFiles(sid, patient, reports.get(sid))
            view = "LATERAL" if (side or "").strip().lower() == "lateral" else (ap_pa or side)
            stem = rel.rsplit("/", 1)[-1].rsplit(".", 1)[0]  # file stems repeat across studies
            study.images.append(ImageRef(root / rel, image_id=f"{sid}-{stem}", view_hint=view))
        notes.append(f"{path.name}: {frame.height} image rows resolved against {root}")
    if not reports:
        notes.append(NO_REPORTS)
    else:
        with_report = sum(s.report is not None for s in studies.values())
        notes.append(f"CheXpert Plus reports for {with_report} of {len(studies)} studies "
                     f"({len(reports) - with_report} report studies have no image row here)")
    return LayoutListing("chexpert", list(studies.values()), stray, notes)
