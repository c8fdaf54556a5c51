"""DICOM folder tree of any nesting and file naming (a PACS export), grouped by StudyInstanceUID.

Every non-hidden file is an input, and its header is read once (no pixels). Raw PatientID and
StudyInstanceUID are replaced here by salted pseudonyms (ingest.phi_salt), so they never reach
the catalog. A study's report is the first found of: (a) a sidecar `<StudyInstanceUID>.txt` or
`<AccessionNumber>.txt` anywhere in the tree, (b) a row of ingest.reports_csv (origin
`<csv>#row=<n>`, n counting data rows from 1), (c) a DICOM Structured Report of the study,
(d) an image's ImageComments / TextValue that reads like a report. Unused report files are
quarantined; CSV rows of other studies are not inputs of this tree (only counted in a note).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

# read_dataset + header_from_dataset: one dcmread serves both the header and SR / text-tag reading.
from cxr_assets.ingest.dicom import CHEST_BODY_PARTS, DicomError, header_from_dataset, read_dataset
from cxr_assets.ingest.listing import ImageRef, LayoutListing, ReportRef, Stray, StudyFiles
from cxr_assets.ingest.phi import pseudonymize

DICOMDIR_REASON = "DICOMDIR index file (not an image)"
KEY_COLUMNS = ("StudyInstanceUID", "AccessionNumber")
TEXT_COLUMNS = ("report", "report_text", "text")
# An image text tag is taken as the report only if it has report section headers: comments
# such as "PORTABLE" or operator notes must not become a report.
REPORT_WORDS = ("FINDINGS", "IMPRESSION")


def _files(raw_dir: Path):
    """Non-hidden files under raw_dir, in a deterministic order."""
    for dirpath, dirnames, filenames in os.walk(raw_dir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name


def detect(raw_dir: Path) -> str | None:
    from cxr_assets.ingest.layouts import mimic

    if mimic.detect(raw_dir):
        return None
    for i, path in enumerate(_files(Path(raw_dir))):
        if i == 50:  # a bounded look: a DICOM tree shows DICOM files early
            break
        try:
            with path.open("rb") as handle:
                handle.seek(128)
                if handle.read(4) == b"DICM":
                    return f"{path.relative_to(raw_dir)} is a DICOM file (DICM magic)"
        except OSError:
            continue
    return None


def _text(value) -> str:
    return str(value or "").strip()


def _meaning(item) -> str:
    codes = item.get("ConceptNameCodeSequence")
    return _text(codes[0].get("CodeMeaning")).upper() if codes else ""


def _sr_lines(items, under_header: bool = False) -> list[str]:
    """TEXT values, depth first; a named CONTAINER (e.g. Findings) becomes 'FINDINGS: ...'."""
    lines = []
    for item in items or ():
        name, kind = _meaning(item), item.get("ValueType")
        if kind == "TEXT" and (value := _text(item.get("TextValue"))):
            lines.append(f"{name}: {value}" if name and not under_header else value)
        elif kind == "CONTAINER":
            body = " ".join(_sr_lines(item.get("ContentSequence"), under_header=bool(name)))
            if body:
                lines.append(f"{name}: {body}" if name else body)
    return lines


def _sr_report(ds) -> tuple[str | None, str | None]:
    """(report text, None) of a Structured Report, or (None, why it is not usable)."""
    body_part = _text(ds.get("BodyPartExamined"))
    if body_part and not any(p in body_part.upper() for p in CHEST_BODY_PARTS):
        return None, f"structured report is not a chest report (BodyPartExamined {body_part})"
    text = "\n".join(_sr_lines(ds.get("ContentSequence")))
    return (text, None) if text else (None, "structured report has no text content")


def _image_text(ds) -> tuple[str, str] | None:
    """(tag, text) of a report written into an image header, or None."""
    for tag in ("ImageComments", "TextValue"):
        text = _text(ds.get(tag))
        if any(word in text.upper() for word in REPORT_WORDS):
            return tag, text
    return None


def _csv_reports(csv_path: Path) -> tuple[dict[str, tuple[str, str]], int]:
    """{study key -> (origin, text)} for StudyInstanceUID and AccessionNumber keys; row count."""
    import polars as pl

    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path}: ingest.reports_csv not found")
    table = pl.read_csv(csv_path, infer_schema=False)
    keys = [c for c in KEY_COLUMNS if c in table.columns]
    text = next((c for c in TEXT_COLUMNS if c in table.columns), None)
    if not keys or text is None:
        raise ValueError(
            f"{csv_path}: a reports CSV needs a key column ({' or '.join(KEY_COLUMNS)}) and a "
            f"text column ({', '.join(TEXT_COLUMNS)}); found columns: {', '.join(table.columns)}"
        )
    found: dict[str, tuple[str, str]] = {}
    for n, row in enumerate(table.select(*keys, text).iter_rows(named=True), start=1):
        for key in keys:
            if _text(row[key]) and _text(row[text]):
                found.setdefault(_text(row[key]), (f"{csv_path}#row={n}", row[text]))
    return found, table.height


def _scan(path: Path) -> tuple:
    """One header read: ("sr", uid, text, why) or ("image", header, accession, text tag)."""
    ds = read_dataset(path, stop_before_pixels=True)
    try:
        uid = _text(ds.get("StudyInstanceUID"))
        if uid and _text(ds.get("Modality")).upper() == "SR":
            return ("sr", uid, *_sr_report(ds))
        header = header_from_dataset(path, ds)
        return "image", header, _text(ds.get("AccessionNumber")), _image_text(ds)
    except DicomError:
        raise
    except Exception as error:  # noqa: BLE001 - lazily parsed corrupt elements fail in many ways
        raise DicomError(f"{path}: corrupt header ({type(error).__name__}: {error})") from None


def list_studies(raw_dir: Path, options=None) -> LayoutListing:
    from cxr_assets.config import IngestParams

    options = options or IngestParams()
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise FileNotFoundError(f"{raw_dir}: raw data folder not found")
    salt = options.phi_salt
    csv_path = raw_dir / options.reports_csv if options.reports_csv else None  # absolute stays
    images: dict[str, list[ImageRef]] = {}  # raw study uid -> its images
    patient: dict[str, str | None] = {}  # raw study uid -> raw PatientID of its first image
    keys: dict[str, list[str]] = {}  # raw study uid -> report keys: itself + accession numbers
    accession: dict[str, str] = {}  # raw AccessionNumber -> raw study uid
    texts, srs, tags, stray = [], [], {}, []

    def pseudo(uid: str) -> str:
        return pseudonymize(uid, salt, "study")

    for path in _files(raw_dir):
        if csv_path and path.name == csv_path.name and path.resolve() == csv_path.resolve():
            continue  # the reports CSV is configuration; its rows are the inputs
        if path.name.upper() == "DICOMDIR":
            stray.append(Stray(str(path), None, DICOMDIR_REASON))
            continue
        if path.suffix.lower() == ".txt":  # a sidecar report, matched once all headers are read
            texts.append(path)
            continue
        try:
            kind, *found = _scan(path)
        except DicomError as error:
            stray.append(Stray(str(path), None, str(error).removeprefix(f"{path}: ")))
            continue
        if kind == "sr":
            srs.append((path, *found))
            continue
        header, acc, tag = found
        uid = header.study_instance_uid
        if uid in patient and patient[uid] != header.patient_id:
            why = "PatientID differs from the other images of its study"
            stray.append(Stray(str(path), pseudo(uid), why))
            continue
        patient.setdefault(uid, header.patient_id)
        images.setdefault(uid, []).append(ImageRef(path, header.sop_instance_uid, header=header))
        keys.setdefault(uid, [uid])
        if acc and acc not in accession:
            accession[acc] = uid
            keys[uid].append(acc)
        if tag and uid not in tags:
            tags[uid] = ReportRef(f"{path}#{tag[0]}", text=tag[1])

    reports: dict[str, tuple[ReportRef, str]] = {}  # raw study uid -> (report, where from)
    for path in texts:
        uid = path.stem if path.stem in images else accession.get(path.stem)
        if uid is None:
            stray.append(Stray(str(path), None, "report file matches no study in the tree"))
        elif uid in reports:
            stray.append(Stray(str(path), pseudo(uid), "another report file of its study was used"))
        else:
            reports[uid] = ReportRef(str(path), path=path), "sidecar file"
    notes = []
    if csv_path is not None:
        rows, n_rows = _csv_reports(csv_path)
        used = 0
        for uid in images:
            key = next((k for k in keys[uid] if k in rows), None)
            if key is not None and uid not in reports:
                reports[uid] = ReportRef(rows[key][0], text=rows[key][1]), "reports CSV"
                used += 1
        notes.append(f"{csv_path}: {used} of {n_rows} rows used as reports")
    for path, uid, text, why in srs:
        if uid not in images:
            why = "structured report matches no image study in the tree"
        elif why is None and uid in reports:
            why = f"structured report not used: the study's report comes from its {reports[uid][1]}"
        if why is not None:
            stray.append(Stray(str(path), pseudo(uid), why))
        else:
            reports[uid] = ReportRef(str(path), text=text), "structured report"
    for uid, ref in tags.items():
        reports.setdefault(uid, (ref, "image text tag"))

    studies = sorted(
        (StudyFiles(pseudo(uid), pseudonymize(patient[uid] or f"unknown-{uid}", salt, "pid"),
                    reports[uid][0] if uid in reports else None, refs)
         for uid, refs in images.items()),
        key=lambda s: s.study_id,
    )
    kinds = Counter(kind for _, kind in reports.values())
    found = ", ".join(f"{n} from {kind}" for kind, n in sorted(kinds.items())) or "none"
    notes.insert(0, f"{len(studies)} studies by StudyInstanceUID; reports: {found}; "
                    f"{len(studies) - len(reports)} without a report")
    return LayoutListing("dicom_tree", studies, stray, notes)
