"""OpenI (Indiana University chest X-ray collection), original format: one XML per report.

NLMCXR_reports.tgz unpacks to ecgen-radiology/<n>.xml (also accepted: the XML files directly
in raw_dir). Each <eCitation> holds the report in <AbstractText Label="..."> elements, the
study id in <uId id="CXR<n>"/> (fallback: "CXR" + file name) and its images as
<parentImage id="CXR<n>_IM-...">. NLMCXR_png.tgz holds "<id>.png" (a JPG copy is accepted
too); images_root defaults to raw_dir/NLMCXR_png when that folder exists, else raw_dir.
IU has one study per patient id, so patient_id = study_id.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

from cxr_assets.ingest.layouts._csv import option_path
from cxr_assets.ingest.listing import ImageRef, LayoutListing, ReportRef, Stray, StudyFiles
from cxr_assets.reports.sections import ReportError, openi_xml_text

REPORTS = "ecgen-radiology"
IMAGES = "NLMCXR_png"
SUFFIXES = (".png", ".jpg", ".jpeg")
ROOT_TAGS = (b"<eCitation", b"<MedlineCitation")


def _xml_files(raw_dir: Path) -> list[Path]:
    folder = raw_dir / REPORTS if (raw_dir / REPORTS).is_dir() else raw_dir
    return sorted(p for p in folder.glob("*.xml") if p.is_file())


def detect(raw_dir: Path) -> str | None:
    if (raw_dir / REPORTS).is_dir():
        return f"{raw_dir / REPORTS} folder (OpenI XML reports)"
    for path in sorted(raw_dir.glob("*.xml"))[:3]:  # a peek at the first bytes is enough
        try:
            with path.open("rb") as handle:
                head = handle.read(2048)
        except OSError:
            continue
        if any(tag in head for tag in ROOT_TAGS):
            return f"{path} is an OpenI <eCitation> report"
    return None


def _image_root(raw_dir: Path, options) -> Path:
    if options.images_root:
        return option_path(raw_dir, options.images_root, raw_dir)
    return raw_dir / IMAGES if (raw_dir / IMAGES).is_dir() else raw_dir


def list_studies(raw_dir: Path, options) -> LayoutListing:
    raw_dir = Path(raw_dir)
    files = _xml_files(raw_dir)
    if not files:
        raise FileNotFoundError(f"{raw_dir}: no {REPORTS}/*.xml or *.xml OpenI reports")
    root = _image_root(raw_dir, options)
    # One directory listing instead of a stat per image and suffix.
    present = set(os.listdir(root)) if root.is_dir() else set()

    studies: list[StudyFiles] = []
    stray: list[Stray] = []
    for path in files:
        try:
            data = path.read_bytes()
            tree = ET.fromstring(data)
        except (OSError, ET.ParseError, LookupError) as error:  # LookupError: unknown encoding
            stray.append(Stray(str(path), None, f"not a readable OpenI XML file ({error})"))
            continue
        uid = tree.find("uId")
        sid = (uid.get("id") or "").strip() if uid is not None else ""
        sid = sid or (f"CXR{path.stem}" if path.stem.isdigit() else path.stem)
        study = StudyFiles(sid, sid, None)
        for node in tree.iter("parentImage"):
            image_id = (node.get("id") or "").strip()
            if not image_id:
                stray.append(Stray(str(path), sid, "<parentImage> without id"))
                continue
            name = next((image_id + s for s in SUFFIXES if image_id + s in present),
                        image_id + ".png")
            study.images.append(ImageRef(root / name, image_id=image_id))
        try:
            study.report = ReportRef(str(path), text=openi_xml_text(data, str(path)))
        except ReportError as error:  # images of the study are then quarantined as "no report"
            stray.append(Stray(str(path), sid, str(error).removeprefix(f"{path}: ")))
        studies.append(study)  # a uId seen twice is the catalog's duplicate-study check
    notes = [f"OpenI: {len(files)} XML reports; images under {root}"
             + ("" if root.is_dir() else " (folder absent)")]
    return LayoutListing("openi_xml", studies, stray, notes)
