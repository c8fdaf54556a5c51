"""MIMIC-CXR (DICOM) and MIMIC-CXR-JPG: files/pXX/pNNNNNNNN/sNNNNNNNN/*.dcm|*.jpg + sNNNNNNNN.txt.

Every regular file under files/ is an input: files in a study folder are images (DICOM whatever
their extension, or JPG/PNG), `sNNNNNNNN.txt` beside the folder is the report, anything else is
stray. For MIMIC-CXR-JPG, the view comes from mimic-cxr-2.0.0-metadata.csv(.gz) when present.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cxr_assets.ingest.listing import ImageRef, LayoutListing, ReportRef, Stray, StudyFiles

_GROUP = re.compile(r"^p\d{2}$")
_PATIENT = re.compile(r"^p\d+$")
_STUDY = re.compile(r"^s\d+$")
METADATA_NAMES = ("mimic-cxr-2.0.0-metadata.csv", "mimic-cxr-2.0.0-metadata.csv.gz")


def detect(raw_dir: Path) -> str | None:
    files = raw_dir / "files"
    if files.is_dir() and any(_GROUP.match(p.name) for p in files.iterdir() if p.is_dir()):
        return f"{files} holds pXX patient-group folders (MIMIC-CXR layout)"
    return None


def _view_hints(raw_dir: Path) -> dict[str, str]:
    """dicom_id -> ViewPosition from the MIMIC-CXR-JPG metadata CSV (empty when absent)."""
    import polars as pl

    for name in METADATA_NAMES:
        path = raw_dir / name
        if path.is_file():
            table = pl.read_csv(path, columns=["dicom_id", "ViewPosition"], infer_schema=False)
            return {d: v for d, v in table.iter_rows() if v}
    return {}


def _is_study_folder(parts: tuple[str, ...]) -> bool:
    return (
        len(parts) == 3
        and bool(_GROUP.match(parts[0]))
        and bool(_PATIENT.match(parts[1]))
        and bool(_STUDY.match(parts[2]))
    )


def list_studies(raw_dir: Path, options=None) -> LayoutListing:
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise FileNotFoundError(f"{raw_dir}: raw data folder not found")
    files_dir = raw_dir / "files"
    if not files_dir.is_dir():
        raise FileNotFoundError(
            f"{raw_dir}: no 'files' folder (expected files/pXX/pNNNNNNNN/sNNNNNNNN/*.dcm)"
        )
    views = _view_hints(raw_dir)
    studies: dict[tuple[str, str], StudyFiles] = {}
    stray: list[Stray] = []

    def study(patient: str, study_id: str) -> StudyFiles:
        key = (patient, study_id)
        if key not in studies:
            studies[key] = StudyFiles(study_id, patient, None, [], has_image_folder=False)
        return studies[key]

    for dirpath, dirnames, filenames in os.walk(files_dir):
        dirnames.sort()  # deterministic walk order
        here = Path(dirpath)
        parts = here.relative_to(files_dir).parts
        if _is_study_folder(parts):
            study(parts[1], parts[2]).has_image_folder = True
        for name in sorted(filenames):
            path = here / name
            if not path.is_file():
                stray.append(Stray(str(path), None, "not a regular file"))
            elif _is_study_folder(parts):
                stem = path.stem
                study(parts[1], parts[2]).images.append(
                    ImageRef(path, image_id=None, view_hint=views.get(stem))
                )
            elif (
                len(parts) == 2
                and _GROUP.match(parts[0])
                and _PATIENT.match(parts[1])
                and name.endswith(".txt")
                and _STUDY.match(name[:-4])
            ):
                study(parts[1], name[:-4]).report = ReportRef(str(path), path=path)
            else:
                study_id = next((p for p in parts if _STUDY.match(p)), None)
                stray.append(Stray(
                    str(path), study_id,
                    "unexpected location (not files/pXX/pNNNNNNNN/sNNNNNNNN/<image> or sNNNNNNNN.txt)",
                ))
    ordered = [studies[key] for key in sorted(studies, key=lambda k: (k[1], k[0]))]
    notes = [f"view positions for {len(views)} images from the MIMIC-CXR-JPG metadata CSV"] if views else []
    return LayoutListing("mimic_cxr", ordered, stray, notes)
