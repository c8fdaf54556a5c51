"""MIMIC-CXR (DICOM) and MIMIC-CXR-JPG: files/pXX/pNNNNNNNN/sNNNNNNNN/*.dcm|*.jpg + sNNNNNNNN.txt.

Every regular file under files/ is an input: files in a study folder are images (DICOM whatever
their extension, or JPG/PNG), `sNNNNNNNN.txt` beside the folder is the report, anything else is
stray. For MIMIC-CXR-JPG, the view comes from mimic-cxr-2.0.0-metadata.csv(.gz) when present.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path

import polars as pl

from cxr_assets.ingest.listing import (
    ImageRef,
    LayoutListing,
    LazyStudies,
    ReportRef,
    Stray,
    StudyFiles,
)

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


_IGNORED_ERRNOS = (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP)
_RECORD_SCHEMA = {
    "study_id": pl.String,
    "patient": pl.String,
    "folder": pl.String,  # "pXX/pNNNNNNNN/sNNNNNNNN" of the image folder (None: no folder)
    "report": pl.String,  # pXX group of sNNNNNNNN.txt (None: no report)
    # Image file names joined by NUL (which no name contains); a name outside `folder` (the same
    # study under a second pXX group) is its path below files/. Not a List column: Polars builds
    # those from Python lists at several KiB per row.
    "names": pl.String,
}


def _count_inputs(records: pl.DataFrame) -> int:
    names = pl.col("names")
    images = pl.when(names == "").then(0).otherwise(names.str.count_matches("\x00", literal=True) + 1)
    return int(records.select(images.sum() + pl.col("report").is_not_null().sum()).item())


def _is_file(path: str) -> bool:
    """Path(path).is_file() without a Path: pathlib interns every name it parses, which would
    keep a Python str (and an entry of the interpreter's interned dict) per file alive."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError as error:
        if error.errno not in _IGNORED_ERRNOS:
            raise
        return False
    except ValueError:
        return False


def list_studies(raw_dir: Path, options=None) -> LayoutListing:
    """One walk of files/ (sorted, so deterministic); studies come back lazily, ordered by
    (study id, patient), each kept as a row of names in a Polars frame until it is read."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise FileNotFoundError(f"{raw_dir}: raw data folder not found")
    files_dir = raw_dir / "files"
    if not files_dir.is_dir():
        raise FileNotFoundError(
            f"{raw_dir}: no 'files' folder (expected files/pXX/pNNNNNNNN/sNNNNNNNN/*.dcm)"
        )
    views = _view_hints(raw_dir)
    # (patient, study id) -> [image folder "group/patient/study" first walked (None: no folder),
    #                         report group (None: no report), image names]. An image outside
    # that folder (the same study under a second pXX group) is kept as its path below files/.
    studies: dict[tuple[str, str], list] = {}
    stray: list[Stray] = []
    shared: dict[str, str] = {}  # one str object per distinct group / patient name

    def study(patient: str, study_id: str) -> list:
        key = (patient, study_id)
        entry = studies.get(key)
        if entry is None:
            entry = studies[key] = [None, None, []]
        return entry

    top = str(files_dir)
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()  # deterministic walk order
        parts = tuple(dirpath[len(top) + 1:].split(os.sep)) if dirpath != top else ()
        is_study = _is_study_folder(parts)
        folder = "/".join(parts) if is_study else None
        if is_study:
            entry = study(shared.setdefault(parts[1], parts[1]), parts[2])
            if entry[0] is None:
                entry[0] = folder
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if not _is_file(path):
                stray.append(Stray(path, None, "not a regular file"))
            elif is_study:
                entry[2].append(name if entry[0] == folder else f"{folder}/{name}")
            elif (
                len(parts) == 2
                and _GROUP.match(parts[0])
                and _PATIENT.match(parts[1])
                and name.endswith(".txt")
                and _STUDY.match(name[:-4])
            ):
                group, patient = shared.setdefault(parts[0], parts[0]), shared.setdefault(parts[1], parts[1])
                study(patient, name[:-4])[1] = group
            else:
                study_id = next((p for p in parts if _STUDY.match(p)), None)
                stray.append(Stray(
                    path, study_id,
                    "unexpected location (not files/pXX/pNNNNNNNN/sNNNNNNNN/<image> or sNNNNNNNN.txt)",
                ))
    # One columnar row per study, in the order the catalog reads them: (study id, patient).
    # The walk's Python objects are all freed here, together (so their memory goes back whole).
    # (Sorted here: a Polars sort would leave its garbage resident in Polars' allocator.)
    columns: dict[str, list] = {name: [] for name in _RECORD_SCHEMA}
    study_ids, patients, folders, reports, names = columns.values()
    for patient, study_id in sorted(studies, key=lambda key: (key[1], key[0])):
        folder, report, files = studies[patient, study_id]
        study_ids.append(study_id)
        patients.append(patient)
        folders.append(folder)
        reports.append(report)
        names.append("\0".join(files))
    studies.clear()
    shared.clear()
    records = pl.DataFrame(columns, schema=_RECORD_SCHEMA)
    del columns, study_ids, patients, folders, reports, names

    def build(record: tuple) -> StudyFiles:
        study_id, patient, folder, report_group, names = record
        report = None
        if report_group is not None:
            path = Path(f"{top}/{report_group}/{patient}/{study_id}.txt")
            report = ReportRef(str(path), path=path)
        images = []
        for name in names.split("\0") if names else ():
            path = Path(f"{top}/{name}" if "/" in name else f"{top}/{folder}/{name}")
            images.append(ImageRef(path, image_id=None, view_hint=views.get(path.stem)))
        return StudyFiles(study_id, patient, report, images, has_image_folder=folder is not None)

    notes = [f"view positions for {len(views)} images from the MIMIC-CXR-JPG metadata CSV"] if views else []
    return LayoutListing("mimic_cxr", LazyStudies(records, build, _count_inputs), stray, notes)
