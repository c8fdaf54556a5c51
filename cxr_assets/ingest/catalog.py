"""Study catalog: scan a dataset tree (headers only) into studies / images / quarantine tables.

Ingestion is split in two so new dataset layouts plug in without touching the bookkeeping:
a *layout lister* only says which files belong to which study (`LayoutListing`), and
`catalog_from_listing` reads headers, checks them and does the quarantine accounting. Every
input file ends up in exactly one place: the images table, a catalogued study's report, or the
quarantine table with a reason. Register another layout with `register_layout`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
from tqdm.auto import tqdm

from cxr_assets.hashing import file_sha256
from cxr_assets.ingest.dicom import MONOCHROME, DicomError, read_header

STAGE = "raw_studies"

STUDIES_SCHEMA: dict[str, pl.DataType] = {
    "study_id": pl.String,
    "patient_id": pl.String,
    "report_path": pl.String,
    "source": pl.String,
    "n_images": pl.Int64,
}
IMAGES_SCHEMA: dict[str, pl.DataType] = {
    "image_id": pl.String,
    "study_id": pl.String,
    "patient_id": pl.String,
    "dicom_path": pl.String,
    "file_sha256": pl.String,
    "modality": pl.String,
    "view_position": pl.String,
    "photometric": pl.String,
    "bits_stored": pl.Int64,
    "rows": pl.Int64,
    "columns": pl.Int64,
    "pixel_spacing": pl.String,
}
QUARANTINE_SCHEMA: dict[str, pl.DataType] = {
    "path": pl.String,
    "study_id": pl.String,
    "reason": pl.String,
    "stage": pl.String,
}


@dataclass
class StudyFiles:
    """The files a layout assigns to one study (nothing read yet)."""

    study_id: str
    patient_id: str
    report_path: Path | None
    image_paths: list[Path] = field(default_factory=list)
    has_image_folder: bool = True


@dataclass
class LayoutListing:
    """What a layout lister found: studies, plus files it could not place (path, study_id, reason)."""

    studies: list[StudyFiles]
    stray: list[tuple[Path, str | None, str]] = field(default_factory=list)

    @property
    def n_files(self) -> int:
        n = len(self.stray)
        for study in self.studies:
            n += len(study.image_paths) + (study.report_path is not None)
        return n


@dataclass
class IngestResult:
    studies: pl.DataFrame
    images: pl.DataFrame
    quarantine: pl.DataFrame
    n_inputs: int


# --- layouts -----------------------------------------------------------------------------------

_GROUP = re.compile(r"^p\d{2}$")
_PATIENT = re.compile(r"^p\d+$")
_STUDY = re.compile(r"^s\d+$")


def list_mimic_layout(raw_dir: Path) -> LayoutListing:
    """MIMIC-CXR layout: files/pXX/pNNNNNNNN/sNNNNNNNN/*.dcm and files/pXX/pNNNNNNNN/sNNNNNNNN.txt.

    Every regular file under files/ is an input: files in a study folder are expected to be
    DICOM (whatever their extension), `sNNNNNNNN.txt` beside it is the report, anything else is
    stray and gets quarantined with the reason.
    """
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise FileNotFoundError(f"{raw_dir}: raw data folder not found")
    files_dir = raw_dir / "files"
    if not files_dir.is_dir():
        raise FileNotFoundError(
            f"{raw_dir}: no 'files' folder (expected files/pXX/pNNNNNNNN/sNNNNNNNN/*.dcm)"
        )

    studies: dict[tuple[str, str], StudyFiles] = {}
    stray: list[tuple[Path, str | None, str]] = []

    def study(patient: str, study_id: str) -> StudyFiles:
        key = (patient, study_id)
        if key not in studies:
            studies[key] = StudyFiles(study_id, patient, None, [], has_image_folder=False)
        return studies[key]

    for dirpath, dirnames, filenames in os.walk(files_dir):
        dirnames.sort()  # deterministic walk order
        here = Path(dirpath)
        parts = here.relative_to(files_dir).parts
        if (
            len(parts) == 3
            and _GROUP.match(parts[0])
            and _PATIENT.match(parts[1])
            and _STUDY.match(parts[2])
        ):
            study(parts[1], parts[2]).has_image_folder = True
        for name in sorted(filenames):
            path = here / name
            if not path.is_file():
                stray.append((path, None, "not a regular file"))
                continue
            if (
                len(parts) == 3
                and _GROUP.match(parts[0])
                and _PATIENT.match(parts[1])
                and _STUDY.match(parts[2])
            ):
                study(parts[1], parts[2]).image_paths.append(path)
            elif (
                len(parts) == 2
                and _GROUP.match(parts[0])
                and _PATIENT.match(parts[1])
                and name.endswith(".txt")
                and _STUDY.match(name[:-4])
            ):
                study(parts[1], name[:-4]).report_path = path
            else:
                study_id = next((p for p in parts if _STUDY.match(p)), None)
                stray.append(
                    (
                        path,
                        study_id,
                        "unexpected location (not files/pXX/pNNNNNNNN/sNNNNNNNN/*.dcm or sNNNNNNNN.txt)",
                    )
                )
    ordered = [studies[key] for key in sorted(studies, key=lambda k: (k[1], k[0]))]
    return LayoutListing(ordered, stray)


LayoutLister = Callable[[Path], LayoutListing]
LAYOUTS: dict[str, LayoutLister] = {"mimic": list_mimic_layout}


def register_layout(name: str, lister: LayoutLister) -> None:
    """Make a dataset layout available to `scan_layout` under `name`."""
    LAYOUTS[name] = lister


# --- bookkeeping -------------------------------------------------------------------------------


def _reason(error: Exception, path: Path) -> str:
    """Error message without the leading '<path>: ' (the path has its own column)."""
    text = str(error)
    prefix = f"{path}: "
    return text.removeprefix(prefix)


def catalog_from_listing(
    listing: LayoutListing, source: str = "demo", progress: bool = True
) -> IngestResult:
    """Read headers of every listed image and sort files into images / studies / quarantine."""
    image_rows: list[dict] = []
    study_rows: list[dict] = []
    quarantine: list[dict] = []
    seen_uids: dict[str, Path] = {}
    seen_studies: dict[str, str] = {}

    def reject(path: Path, study_id: str | None, reason: str) -> None:
        quarantine.append(
            {"path": str(path), "study_id": study_id, "reason": reason, "stage": STAGE}
        )

    for path, study_id, reason in listing.stray:
        reject(path, study_id, reason)

    for study in tqdm(listing.studies, desc="raw_studies", unit="study", disable=not progress):
        sid = study.study_id
        if sid in seen_studies and seen_studies[sid] != study.patient_id:
            why = f"duplicate study id {sid}: already catalogued under patient {seen_studies[sid]}"
            for path in [*study.image_paths, *([study.report_path] if study.report_path else [])]:
                reject(path, sid, why)
            continue

        valid: list[dict] = []
        study_uids: dict[str, Path] = {}
        for path in study.image_paths:
            try:
                header = read_header(path)
                digest = file_sha256(path)
            except DicomError as error:
                reject(path, sid, _reason(error, path))
                continue
            except OSError as error:
                reject(path, sid, f"cannot read file ({error.strerror or error})")
                continue
            if header.number_of_frames != 1:
                reject(
                    path, sid, f"multi-frame image ({header.number_of_frames} frames) not supported"
                )
                continue
            if header.photometric not in MONOCHROME:
                reject(path, sid, f"unsupported PhotometricInterpretation {header.photometric!r}")
                continue
            uid = header.sop_instance_uid
            first = seen_uids.get(uid) or study_uids.get(uid)
            if first is not None:
                reject(path, sid, f"duplicate SOPInstanceUID {uid} (first seen at {first})")
                continue
            study_uids[uid] = path
            valid.append(
                {
                    "image_id": uid,
                    "study_id": sid,
                    "patient_id": study.patient_id,
                    "dicom_path": str(path),
                    "file_sha256": digest,
                    "modality": header.modality,
                    "view_position": header.view_position.upper() if header.view_position else None,
                    "photometric": header.photometric,
                    "bits_stored": header.bits_stored,
                    "rows": header.rows,
                    "columns": header.columns,
                    "pixel_spacing": header.pixel_spacing,
                }
            )

        if study.report_path is None:
            for row in valid:
                reject(Path(row["dicom_path"]), sid, f"study has no report ({sid}.txt missing)")
            continue
        if not valid:
            why = (
                "study has no valid image"
                if study.has_image_folder
                else "report without image folder"
            )
            reject(study.report_path, sid, why)
            continue
        seen_uids.update(study_uids)
        seen_studies[sid] = study.patient_id
        image_rows.extend(valid)
        study_rows.append(
            {
                "study_id": sid,
                "patient_id": study.patient_id,
                "report_path": str(study.report_path),
                "source": source,
                "n_images": len(valid),
            }
        )

    return IngestResult(
        studies=pl.DataFrame(study_rows, schema=STUDIES_SCHEMA).sort("study_id"),
        images=pl.DataFrame(image_rows, schema=IMAGES_SCHEMA).sort("study_id", "dicom_path"),
        quarantine=pl.DataFrame(quarantine, schema=QUARANTINE_SCHEMA).sort("path"),
        n_inputs=listing.n_files,
    )


def scan_layout(
    raw_dir: Path, layout: str = "mimic", source: str = "demo", progress: bool = True
) -> IngestResult:
    """Header-only scan of `raw_dir` with a registered layout lister."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown dataset layout {layout!r} (known: {', '.join(sorted(LAYOUTS))})")
    return catalog_from_listing(LAYOUTS[layout](Path(raw_dir)), source=source, progress=progress)


def scan_mimic_layout(raw_dir: Path, source: str = "demo", progress: bool = True) -> IngestResult:
    """Header-only scan of a MIMIC-CXR-like tree into studies / images / quarantine."""
    return scan_layout(raw_dir, "mimic", source=source, progress=progress)


def accounting(result: IngestResult) -> dict:
    """inputs == catalogued (images + reports of catalogued studies) + quarantined?"""
    catalogued = (
        result.images.height + result.studies.filter(pl.col("report_path").is_not_null()).height
    )
    quarantined = result.quarantine.height
    return {
        "inputs": result.n_inputs,
        "catalogued": catalogued,
        "quarantined": quarantined,
        "balanced": result.n_inputs == catalogued + quarantined,
    }


# --- writing -----------------------------------------------------------------------------------

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def write_parquet_atomic(df: pl.DataFrame, path: Path) -> Path:
    """Write Parquet to a temporary sibling and rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        df.write_parquet(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_duckdb_tables(db_path: Path, tables: dict[str, pl.DataFrame]) -> Path:
    """Create or replace `tables` in a DuckDB file in one transaction (other tables are kept)."""
    import duckdb

    db_path = Path(db_path)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    for name in tables:
        if not _IDENTIFIER.match(name):
            raise ValueError(f"invalid DuckDB table name {name!r}")
    con = duckdb.connect(str(db_path))
    try:
        con.begin()
        for name, df in tables.items():
            con.register("_incoming", df.to_arrow())
            con.execute(f'CREATE OR REPLACE TABLE "{name}" AS SELECT * FROM _incoming')
            con.unregister("_incoming")
        con.commit()
    except Exception:
        con.rollback()
        raise
    finally:
        con.close()
    return db_path


def write_catalog(result: IngestResult, catalog_dir: Path) -> dict[str, Path]:
    """Write studies/images/quarantine as Parquet and as tables of catalog_dir/catalog.duckdb."""
    catalog_dir = Path(catalog_dir)
    tables = {"studies": result.studies, "images": result.images, "quarantine": result.quarantine}
    paths = {
        name: write_parquet_atomic(df, catalog_dir / f"{name}.parquet")
        for name, df in tables.items()
    }
    paths["duckdb"] = write_duckdb_tables(catalog_dir / "catalog.duckdb", tables)
    return paths
