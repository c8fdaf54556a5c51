"""Study catalog: turn a layout's listing into studies / images / reports / quarantine tables.

Ingestion is split in two so dataset layouts plug in without touching the bookkeeping: a
layout adapter (`cxr_assets.ingest.layouts`) only says which inputs belong to which study, and
`catalog_from_listing` reads headers (never pixels), reads and decodes reports, applies the PHI
policy, de-duplicates and does the accounting. Every input ends up in exactly one place: the
images table, the reports table, or the quarantine table with a reason.

`ingest_sources` catalogues the base folder plus every batch folder of the drop folder as
separate ingest batches; files whose size and mtime are unchanged since the previous catalog
are not read again, and re-ingesting the same files adds nothing.

Memory stays bounded as the number of studies grows: rows are written every CHUNK_ROWS rows as
Parquet chunks to a temporary spool folder, the de-duplication indexes are arrays of hashes and
row numbers (both in `spool.py`), and `write_catalog` sorts the chunks with DuckDB and loads
DuckDB from the Parquet files it just wrote (`catalog_db.py`). The tables of an `IngestResult`
are read back only when asked for.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
from tqdm.auto import tqdm

from cxr_assets.failpoints import failpoint
from cxr_assets.hashing import file_sha256
from cxr_assets.ingest.catalog_db import CatalogWriteLock, copy_file_atomic, write_duckdb_tables
from cxr_assets.ingest.dicom import DicomError, DicomHeader
from cxr_assets.ingest.listing import ImageRef, LayoutListing, ReportRef, StudyFiles
from cxr_assets.ingest.spool import ChunkedTable, RowIndex, SpooledTable, SpoolMaker
from cxr_assets.parquet_io import write_parquet_atomic
from cxr_assets.schemas import QUARANTINE_SCHEMA

STAGE = "raw_studies"
CHUNK_ROWS = 2048
"""Rows of one table held as Python values while cataloguing: every CHUNK_ROWS rows they are
written as a Parquet chunk to a temporary spool folder, so what grows in memory with the number
of studies is only the de-duplication indexes (study ids, image ids, content hashes)."""

STUDIES_SCHEMA: dict[str, pl.DataType] = {
    "study_id": pl.String,
    "patient_id": pl.String,
    "source": pl.String,
    "batch_id": pl.String,
    "report_origin": pl.String,
    "n_images": pl.Int64,
}
IMAGES_SCHEMA: dict[str, pl.DataType] = {
    "image_id": pl.String,
    "study_id": pl.String,
    "patient_id": pl.String,
    "image_path": pl.String,
    "image_format": pl.String,
    "file_sha256": pl.String,
    "file_size": pl.Int64,
    "file_mtime_ns": pl.Int64,
    "modality": pl.String,
    "view_position": pl.String,
    "photometric": pl.String,
    "bits_stored": pl.Int64,
    "rows": pl.Int64,
    "columns": pl.Int64,
    "pixel_spacing": pl.String,
    "batch_id": pl.String,
}
REPORTS_SCHEMA: dict[str, pl.DataType] = {
    "study_id": pl.String,
    "report_origin": pl.String,
    "report_text": pl.String,
    "encoding": pl.String,
    "phi_masked": pl.String,  # kinds masked under phi_policy strip ("" when none)
}
BATCHES_SCHEMA: dict[str, pl.DataType] = {
    "batch_id": pl.String,
    "path": pl.String,
    "layout": pl.String,
    "detected": pl.String,
    "n_inputs": pl.Int64,
    "n_catalogued": pl.Int64,
    "n_quarantined": pl.Int64,
    "n_studies": pl.Int64,
    "n_images": pl.Int64,
    "first_ingested": pl.String,
}
BASE_BATCH = "base"


@dataclass
class PhiPolicy:
    """How identifying data is treated: refuse (quarantine), strip (mask / drop) or allow."""

    mode: str = "allow"

    def __post_init__(self) -> None:
        if self.mode not in ("refuse", "strip", "allow"):
            raise ValueError(f"phi policy must be refuse, strip or allow, got {self.mode!r}")


TABLES = ("studies", "images", "reports", "quarantine")
SORT_KEYS: dict[str, tuple[tuple[str, ...], bool]] = {  # table -> (sort columns, nulls last)
    "studies": (("study_id",), False),
    "images": (("study_id", "image_path"), False),
    "reports": (("study_id",), False),
    "quarantine": (("path",), True),
}


class IngestResult:
    """The catalog tables of one ingest run, with its accounting.

    `studies`, `images`, `reports` and `quarantine` are Polars frames sorted as in the catalog.
    A large run keeps them as Parquet chunks in a temporary spool folder until a frame is first
    read (or `write_catalog` writes it), so a caller that only writes the catalog never holds
    the tables in memory; `height(name)` counts rows without reading them.
    """

    def __init__(self, studies, images, reports, quarantine, n_inputs: int,
                 notes: list[str] | None = None, n_reused: int = 0, n_phi_stripped: int = 0,
                 batches: pl.DataFrame | None = None) -> None:
        self._tables: dict[str, pl.DataFrame | SpooledTable] = {
            "studies": studies, "images": images, "reports": reports, "quarantine": quarantine}
        self.n_inputs = n_inputs
        self.notes = [] if notes is None else notes
        self.n_reused = n_reused  # images whose header and hash came from the previous catalog
        self.n_phi_stripped = n_phi_stripped  # inputs kept after masking / dropping identifying data
        self.batches = pl.DataFrame(schema=BATCHES_SCHEMA) if batches is None else batches

    def table(self, name: str) -> pl.DataFrame:
        """One table as a frame (read from the spool, once, when it is still there)."""
        table = self._tables[name]
        if isinstance(table, SpooledTable):
            table = self._tables[name] = table.load()
        return table

    def height(self, name: str) -> int:
        return self._tables[name].height

    def __repr__(self) -> str:
        sizes = ", ".join(f"{name}={self.height(name)}" for name in TABLES)
        return f"IngestResult({sizes}, n_inputs={self.n_inputs})"

    @property
    def studies(self) -> pl.DataFrame:
        return self.table("studies")

    @studies.setter
    def studies(self, frame: pl.DataFrame) -> None:
        self._tables["studies"] = frame

    @property
    def images(self) -> pl.DataFrame:
        return self.table("images")

    @images.setter
    def images(self, frame: pl.DataFrame) -> None:
        self._tables["images"] = frame

    @property
    def reports(self) -> pl.DataFrame:
        return self.table("reports")

    @reports.setter
    def reports(self, frame: pl.DataFrame) -> None:
        self._tables["reports"] = frame

    @property
    def quarantine(self) -> pl.DataFrame:
        return self.table("quarantine")

    @quarantine.setter
    def quarantine(self, frame: pl.DataFrame) -> None:
        self._tables["quarantine"] = frame


def _reason(error: Exception, path: object) -> str:
    """Error message without the leading '<path>: ' (the path has its own column)."""
    return str(error).removeprefix(f"{path}: ")


def _image_row(ref: ImageRef, header, digest: str, stat: os.stat_result) -> dict:
    from cxr_assets.ingest.dicom import normalize_view
    from cxr_assets.ingest.images import RasterHeader

    row = {
        "image_path": str(ref.path),
        "file_sha256": digest,
        "file_size": stat.st_size,
        "file_mtime_ns": stat.st_mtime_ns,
    }
    if isinstance(header, RasterHeader):
        return row | {
            "image_id": ref.image_id or ref.path.stem,
            "image_format": header.format,
            "modality": None,
            "view_position": normalize_view(ref.view_hint),
            "photometric": "MONOCHROME2",  # decoded to grey-scale, bright = dense, like the files show
            "bits_stored": 16 if header.mode.startswith("I") else 8,
            "rows": header.rows,
            "columns": header.columns,
            "pixel_spacing": None,
        }
    return row | {
        "image_id": header.sop_instance_uid,
        "image_format": "dicom",
        "modality": header.modality,
        "view_position": header.view_position or normalize_view(ref.view_hint),
        "photometric": header.photometric,
        "bits_stored": header.bits_stored,
        "rows": header.rows,
        "columns": header.columns,
        "pixel_spacing": header.pixel_spacing,
    }


PREVIOUS_COLUMNS = tuple(k for k in IMAGES_SCHEMA if k not in ("study_id", "patient_id", "batch_id"))


class _PreviousImages:
    """The previous catalog's images (only the columns reuse needs), looked up by path.

    Kept as one Polars frame sorted by image_path and searched by binary search, so reuse costs
    no Python object per previously catalogued image.
    """

    def __init__(self, previous: pl.DataFrame | None) -> None:
        self.frame = None
        if previous is not None and previous.height:
            self.frame = (previous.select(PREVIOUS_COLUMNS)
                          .filter(pl.col("image_path").is_not_null())
                          .sort("image_path", maintain_order=True))
            self.paths = self.frame["image_path"]

    def get(self, path: str) -> dict | None:
        """The previous row for `path` (the last one when listed twice), or None."""
        if self.frame is None:
            return None
        i = self.paths.search_sorted(path, side="right") - 1
        if i < 0 or self.paths[i] != path:
            return None
        return self.frame.row(i, named=True)


class _Catalogue:
    """Accumulates rows across the batches of one ingest run (shared de-duplication).

    Rows go into `ChunkedTable`s (Parquet chunks in a spool once a table outgrows one chunk);
    what grows in memory with the number of inputs is the de-duplication indexes, which map an
    id or content hash to the row number of the image or study that came first (its path /
    patient is read back from the table when a duplicate needs naming).
    """

    def __init__(self, policy: PhiPolicy, previous: pl.DataFrame | None,
                 chunk_rows: int = CHUNK_ROWS, spool_dir: Path | None = None) -> None:
        self.policy = policy
        spool = SpoolMaker(spool_dir)  # shared by the four tables
        self.studies = ChunkedTable("studies", STUDIES_SCHEMA, chunk_rows, spool,
                                    SORT_KEYS["studies"])
        self.images = ChunkedTable("images", IMAGES_SCHEMA, chunk_rows, spool,
                                   SORT_KEYS["images"])
        self.reports = ChunkedTable("reports", REPORTS_SCHEMA, chunk_rows, spool,
                                    SORT_KEYS["reports"])
        self.quarantine = ChunkedTable("quarantine", QUARANTINE_SCHEMA, chunk_rows, spool,
                                       SORT_KEYS["quarantine"])
        # image_id / file_sha256 / study_id -> the row that has it (its first occurrence)
        self.seen_images = RowIndex(lambda row: self.images.value("image_id", row))
        self.seen_content = RowIndex(lambda row: self.images.value("file_sha256", row))
        self.seen_studies = RowIndex(lambda row: self.studies.value("study_id", row))
        self.previous = _PreviousImages(previous)
        self.n_reused = 0
        self.n_phi_stripped = 0

    def reject(self, path: object, study_id: str | None, reason: str) -> None:
        self.quarantine.append({"path": None if path is None else str(path),
                                "study_id": study_id, "reason": reason, "stage": STAGE})

    def _first_image_path(self, row: int | None) -> str | None:
        return None if row is None else self.images.value("image_path", row)

    # -- images -------------------------------------------------------------------------------
    def _read_image(self, ref: ImageRef) -> tuple[dict | None, str | None]:
        """(catalog row without study columns, None) or (None, quarantine reason)."""
        from cxr_assets.ingest.dicom import normalize_view
        from cxr_assets.ingest.images import ImageError, read_image_header

        path = ref.path
        try:
            stat = path.stat()
        except FileNotFoundError:
            return None, "image file not found"
        except OSError as error:
            return None, f"cannot read file ({error.strerror or error})"
        except ValueError:  # e.g. an embedded NUL byte from a CSV cell
            return None, "invalid file path"
        if not path.is_file():
            return None, "not a regular file"
        before = self.previous.get(str(path))
        if before is not None and (before["file_size"], before["file_mtime_ns"]) == (stat.st_size, stat.st_mtime_ns):
            self.n_reused += 1  # unchanged since the last catalog: it passed every check then
            row = {k: before[k] for k in IMAGES_SCHEMA if k not in ("study_id", "patient_id", "batch_id")}
            if row["image_format"] != "dicom":  # id and view of JPEG/PNG come from the listing
                row["image_id"] = ref.image_id or ref.path.stem
                row["view_position"] = normalize_view(ref.view_hint)
            return row, None
        try:
            header = ref.header or read_image_header(path)
            digest = file_sha256(path)
        except (DicomError, ImageError) as error:
            return None, _reason(error, path)
        except OSError as error:
            return None, f"cannot read file ({error.strerror or error})"
        if isinstance(header, DicomHeader):
            if (why := header.rejection()) is not None:
                return None, why
            if header.phi_tags and not header.deidentified and self.policy.mode == "refuse":
                return None, ("identifying DICOM tags present (" + ", ".join(header.phi_tags)
                              + "); ingest.phi_policy is refuse")
            if header.phi_tags and self.policy.mode == "strip":
                self.n_phi_stripped += 1  # tag values are never copied out of the file anyway
        return _image_row(ref, header, digest, stat), None

    # -- reports ------------------------------------------------------------------------------
    def _read_report(self, ref: ReportRef) -> tuple[dict | None, str | None]:
        from cxr_assets.ingest.phi import mask_text_phi, phi_summary
        from cxr_assets.reports.sections import ReportError, decode_report_bytes, read_report_file

        try:
            if ref.text is not None:
                text, encoding = decode_report_bytes(ref.text.encode("utf-8"), ref.origin)
                encoding = "inline"
            elif ref.path is not None:
                text, encoding = read_report_file(ref.path)
            else:
                return None, "report reference without text or file"
        except ReportError as error:
            return None, _reason(error, ref.origin)
        masked_kinds = ""
        if self.policy.mode != "allow":
            masked, kinds = mask_text_phi(text)
            if kinds and self.policy.mode == "refuse":
                return None, f"{phi_summary(kinds)}; ingest.phi_policy is refuse"
            if kinds:
                text, masked_kinds = masked, ",".join(kinds)
                self.n_phi_stripped += 1
        return {"report_origin": ref.origin, "report_text": text, "encoding": encoding,
                "phi_masked": masked_kinds}, None

    # -- studies ------------------------------------------------------------------------------
    def add_study(self, study: StudyFiles, source: str, batch: str, require_images: bool) -> None:
        sid = study.study_id
        inputs = [ref.path for ref in study.images] + ([study.report.origin] if study.report else [])
        first = self.seen_studies.get(sid)
        if first is not None:
            patient = self.studies.value("patient_id", first)
            first_batch = self.studies.value("batch_id", first)
            why = (f"study {sid} already catalogued from batch {first_batch}" if patient == study.patient_id
                   else f"duplicate study id {sid}: already catalogued under patient {patient}")
            for path in inputs:
                self.reject(path, sid, why)
            return

        valid: list[dict] = []
        local_ids: dict[str, str] = {}
        local_content: dict[str, str] = {}
        for ref in study.images:
            row, why = self._read_image(ref)
            if row is None:
                self.reject(ref.path, sid, why)
                continue
            first = (self._first_image_path(self.seen_images.get(row["image_id"]))
                     or local_ids.get(row["image_id"]))
            if first is not None:
                kind = "SOPInstanceUID" if row["image_format"] == "dicom" else "image id"
                self.reject(ref.path, sid, f"duplicate {kind} {row['image_id']} (first seen at {first})")
                continue
            content = row["file_sha256"]
            twin = self._first_image_path(self.seen_content.get(content)) or local_content.get(content)
            if twin is not None:
                self.reject(ref.path, sid, f"duplicate image: identical content to {twin}")
                continue
            local_ids[row["image_id"]] = local_content[content] = str(ref.path)
            valid.append(row | {"study_id": sid, "patient_id": study.patient_id, "batch_id": batch})

        report, report_error = (None, "study has no report") if study.report is None else self._read_report(study.report)
        if report is None:
            for row in valid:
                self.reject(row["image_path"], sid, report_error if study.report is None
                            else f"study report unusable: {report_error}")
            if study.report is not None:
                self.reject(study.report.origin, sid, report_error)
            return
        if not valid and (require_images or study.images == []):
            why = "study has no valid image" if study.has_image_folder else "report without image folder"
            self.reject(study.report.origin, sid, why)
            return

        for row in valid:
            number = self.images.append(row)
            self.seen_images.add(row["image_id"], number)
            self.seen_content.add(row["file_sha256"], number)
        self.reports.append({"study_id": sid, **report})
        self.seen_studies.add(sid, self.studies.append({
            "study_id": sid, "patient_id": study.patient_id, "source": source, "batch_id": batch,
            "report_origin": study.report.origin, "n_images": len(valid)}))

    def counts(self) -> tuple[int, int, int, int]:
        """Rows so far: (studies, images, reports, quarantine)."""
        return self.studies.height, self.images.height, self.reports.height, self.quarantine.height

    def result(self, n_inputs: int, notes: list[str]) -> IngestResult:
        # The indexes and the previous catalog are done with: free them before the tables are
        # finished (small tables become sorted frames, large ones stay spooled chunks).
        del self.seen_images, self.seen_content, self.seen_studies
        self.previous = _PreviousImages(None)
        return IngestResult(
            studies=self.studies.finish(), images=self.images.finish(),
            reports=self.reports.finish(), quarantine=self.quarantine.finish(),
            n_inputs=n_inputs, notes=notes, n_reused=self.n_reused,
            n_phi_stripped=self.n_phi_stripped,
        )


def _cap(listing: LayoutListing, max_studies: int | None) -> LayoutListing:
    if max_studies is None or len(listing.studies) <= max_studies:
        return listing
    note = (f"ingest.max_studies: catalogued the first {max_studies} of {len(listing.studies)} "
            "listed studies; the others were not read")
    return LayoutListing(listing.layout, listing.studies[:max_studies], listing.stray,
                         [*listing.notes, note])


def _add_listing(book: _Catalogue, listing: LayoutListing, source: str, batch: str,
                 require_images: bool, progress: bool) -> None:
    for stray in listing.stray:
        book.reject(stray.path, stray.study_id, stray.reason)
    for study in tqdm(listing.studies, desc=f"raw_studies[{batch}]", unit="study",
                      disable=not progress, mininterval=1.0):
        book.add_study(study, source, batch, require_images)


def catalog_from_listing(
    listing: LayoutListing, source: str = "demo", progress: bool = True,
    phi_policy: str = "allow", require_images: bool = True, chunk_rows: int = CHUNK_ROWS,
    spool_dir: Path | None = None,
) -> IngestResult:
    """Catalogue one listing (one batch): headers, reports, PHI policy, de-duplication.

    Rows go to disk in chunks of `chunk_rows` (a temporary folder in `spool_dir`, default the
    system temp folder) once a table outgrows one chunk.
    """
    book = _Catalogue(PhiPolicy(phi_policy), previous=None, chunk_rows=chunk_rows,
                      spool_dir=spool_dir)
    _add_listing(book, listing, source, BASE_BATCH, require_images, progress)
    return book.result(listing.n_inputs, list(listing.notes))


def resolve_layout(raw_dir: Path, layout: str) -> tuple[str, str]:
    """(layout name, how it was chosen)."""
    from cxr_assets.ingest.layouts import detect_layout, get_layout

    if layout == "auto":
        name, why = detect_layout(raw_dir)
        return name, f"auto-detected {name}: {why}"
    get_layout(layout)  # unknown names fail here with the list of known ones
    return layout, f"{layout} (set in ingest.layout)"


def resolve_phi_policy(policy: str, layout: str) -> str:
    from cxr_assets.ingest.layouts import get_layout

    if policy != "auto":
        return policy
    return "allow" if get_layout(layout).public_dataset else "refuse"


def scan_layout(raw_dir: Path, layout: str = "mimic_cxr", source: str = "demo",
                progress: bool = True, options=None) -> IngestResult:
    """Header-only scan of one folder with a layout (or "auto"); no batches, no reuse."""
    from cxr_assets.config import IngestParams
    from cxr_assets.ingest.layouts import get_layout

    options = options or IngestParams()
    name, how = resolve_layout(Path(raw_dir), layout)
    listing = _cap(get_layout(name).list_studies(Path(raw_dir), options), options.max_studies)
    result = catalog_from_listing(listing, source=source, progress=progress,
                                  phi_policy=resolve_phi_policy(options.phi_policy, name),
                                  require_images=options.require_images)
    result.notes.insert(0, how)
    return result


def scan_mimic_layout(raw_dir: Path, source: str = "demo", progress: bool = True) -> IngestResult:
    """Header-only scan of a MIMIC-CXR-like tree into studies / images / reports / quarantine."""
    return scan_layout(raw_dir, "mimic_cxr", source=source, progress=progress)


def batch_folders(drop_dir: Path | None) -> list[Path]:
    """Sub-folders of the drop folder, oldest name first; hidden ones (uploads in progress) skipped."""
    if drop_dir is None or not Path(drop_dir).is_dir():
        return []
    return sorted(p for p in Path(drop_dir).iterdir() if p.is_dir() and not p.name.startswith("."))


def _previous_images(path: Path) -> pl.DataFrame | None:
    """The columns of a previous images table that reuse needs (None when it lacks one)."""
    if not path.is_file():
        return None
    if not set(PREVIOUS_COLUMNS) <= set(pl.scan_parquet(path, glob=False).collect_schema()):
        return None  # written by an older version: read every file again
    return pl.read_parquet(path, columns=list(PREVIOUS_COLUMNS), glob=False)


def ingest_sources(
    raw_dir: Path, options, drop_dir: Path | None = None,
    previous_catalog: Path | None = None, progress: bool = True, chunk_rows: int = CHUNK_ROWS,
    spool_dir: Path | None = None,
) -> IngestResult:
    """Catalogue raw_dir (batch "base") and each drop-folder batch, reusing unchanged files.

    `options` is the IngestParams section. Each batch is listed with ingest.layout (or
    detected on its own when "auto") and gets its own accounting row in the batches table.
    Rows are written in Parquet chunks of `chunk_rows` rows to a temporary folder in
    `spool_dir` (default the system temp folder) while the batches are read, so memory holds
    one chunk plus the de-duplication indexes, not the tables.
    """
    from cxr_assets.ingest.layouts import get_layout

    previous_images = previous_batches = None
    if previous_catalog is not None:
        previous_catalog = Path(previous_catalog)
        same_options = _read_state(previous_catalog).get("fingerprint") == _options_fingerprint(options)
        if same_options:
            previous_images = _previous_images(previous_catalog / "images.parquet")
        if (previous_catalog / "ingest_batches.parquet").is_file():
            previous_batches = pl.read_parquet(previous_catalog / "ingest_batches.parquet",
                                               columns=["batch_id", "first_ingested"], glob=False)
    first_seen = {} if previous_batches is None else dict(
        previous_batches.select("batch_id", "first_ingested").iter_rows())

    book = _Catalogue(PhiPolicy("allow"), previous_images, chunk_rows=chunk_rows,
                      spool_dir=spool_dir)
    del previous_images  # the catalogue keeps the sorted copy it searches
    sources = [(BASE_BATCH, Path(raw_dir))] + [(p.name, p) for p in batch_folders(drop_dir)]
    notes: list[str] = []
    batch_rows: list[dict] = []
    n_inputs = 0
    now = datetime.now(UTC).isoformat(timespec="seconds")
    for batch, folder in sources:
        batch_options = options if batch == BASE_BATCH else _batch_options(options)
        name, how = resolve_layout(folder, options.layout)
        book.policy = PhiPolicy(resolve_phi_policy(options.phi_policy, name))
        listing = _cap(get_layout(name).list_studies(folder, batch_options), options.max_studies)
        before = book.counts()
        _add_listing(book, listing, options.source_name, batch, options.require_images, progress)
        notes += [f"[{batch}] {how}; phi_policy {book.policy.mode}"] + [f"[{batch}] {n}" for n in listing.notes]
        studies, images, reports, quarantined = (a - b for a, b in zip(book.counts(), before, strict=True))
        batch_inputs = listing.n_inputs
        del listing  # its records are not needed past the batch
        batch_rows.append({
            "batch_id": batch, "path": str(folder), "layout": name, "detected": how,
            "n_inputs": batch_inputs, "n_catalogued": images + reports,
            "n_quarantined": quarantined, "n_studies": studies, "n_images": images,
            "first_ingested": first_seen.get(batch, now),
        })
        n_inputs += batch_inputs
    result = book.result(n_inputs, notes)
    del book
    result.batches = pl.DataFrame(batch_rows, schema=BATCHES_SCHEMA)
    return result


def _options_fingerprint(options) -> str:
    """What decides whether a previously catalogued, unchanged file may be reused: every option
    that changes how a file is listed or judged (column mapping, CSVs, PHI policy, ...)."""
    ignored = {"image_size", "cache_bits", "workers", "max_studies", "drop_dir"}
    return json.dumps(options.model_dump(exclude=ignored), sort_keys=True, default=str)


def _batch_options(options):
    """Options for a drop-folder batch: absolute CSV/image locations name the base data, so a
    batch uses its own files (the layout's usual names, or paths relative to the batch)."""
    keys = ("metadata_csv", "reports_csv", "images_root")
    absolute = {k: None for k in keys if getattr(options, k) and Path(getattr(options, k)).is_absolute()}
    return options.model_copy(update=absolute) if absolute else options


def _read_state(catalog_dir: Path) -> dict:
    path = Path(catalog_dir) / "ingest_state.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_state(catalog_dir: Path, options) -> Path:
    path = Path(catalog_dir) / "ingest_state.json"
    path.write_text(json.dumps({"fingerprint": _options_fingerprint(options)}, indent=2) + "\n")
    return path


def accounting(result: IngestResult) -> dict:
    """inputs == catalogued (images + reports of catalogued studies) + quarantined?"""
    catalogued = result.height("images") + result.height("reports")
    quarantined = result.height("quarantine")
    return {
        "inputs": result.n_inputs,
        "catalogued": catalogued,
        "quarantined": quarantined,
        "balanced": result.n_inputs == catalogued + quarantined,
    }


def write_catalog(result: IngestResult, catalog_dir: Path) -> dict[str, Path]:
    """Write the catalog tables as Parquet and as tables of catalog_dir/catalog.duckdb.

    Tables still spooled are sorted on disk first (DuckDB, bounded memory) and copied in; the
    DuckDB tables are loaded from the Parquet files just written, all in one transaction.
    """
    catalog_dir = Path(catalog_dir)
    tables = {name: result._tables[name] for name in TABLES} | {"ingest_batches": result.batches}
    for table in tables.values():  # the slow part, before taking the lock
        if isinstance(table, SpooledTable):
            table.write_sorted()
    with CatalogWriteLock(catalog_dir):
        for name in tables:  # temporaries left by a writer that was killed (we hold the lock)
            for stale in catalog_dir.glob(f".{name}.parquet.*.tmp"):
                stale.unlink(missing_ok=True)
        paths = {}
        for name, table in tables.items():
            paths[name] = (copy_file_atomic(table.sorted_path, catalog_dir / f"{name}.parquet")
                           if isinstance(table, SpooledTable)
                           else write_parquet_atomic(table, catalog_dir / f"{name}.parquet"))
            failpoint("catalog.between_parquet_tables")
        # DuckDB loads the Parquet files just written (under the same lock, so they are ours).
        paths["duckdb"] = write_duckdb_tables(catalog_dir / "catalog.duckdb",
                                              {name: paths[name] for name in tables})
    return paths
