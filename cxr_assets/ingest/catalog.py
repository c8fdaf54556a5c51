"""Study catalog: turn a layout's listing into studies / images / reports / quarantine tables.

Ingestion is split in two so dataset layouts plug in without touching the bookkeeping: a
layout adapter (`cxr_assets.ingest.layouts`) only says which inputs belong to which study, and
`catalog_from_listing` reads headers (never pixels), reads and decodes reports, applies the PHI
policy, de-duplicates and does the accounting. Every input ends up in exactly one place: the
images table, the reports table, or the quarantine table with a reason.

`ingest_sources` catalogues the base folder plus every batch folder of the drop folder as
separate ingest batches; files whose size and mtime are unchanged since the previous catalog
are not read again, and re-ingesting the same files adds nothing.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
from tqdm.auto import tqdm

from cxr_assets.hashing import file_sha256
from cxr_assets.ingest.dicom import DicomError, DicomHeader
from cxr_assets.ingest.listing import ImageRef, LayoutListing, ReportRef, StudyFiles

STAGE = "raw_studies"

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
QUARANTINE_SCHEMA: dict[str, pl.DataType] = {
    "path": pl.String,
    "study_id": pl.String,
    "reason": pl.String,
    "stage": pl.String,
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


@dataclass
class IngestResult:
    studies: pl.DataFrame
    images: pl.DataFrame
    reports: pl.DataFrame
    quarantine: pl.DataFrame
    n_inputs: int
    notes: list[str] = field(default_factory=list)
    n_reused: int = 0  # images whose header and hash came from the previous catalog
    n_phi_stripped: int = 0  # inputs kept after masking / dropping identifying data
    batches: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=BATCHES_SCHEMA))


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


class _Catalogue:
    """Accumulates rows across the batches of one ingest run (shared de-duplication)."""

    def __init__(self, policy: PhiPolicy, previous: pl.DataFrame | None) -> None:
        self.policy = policy
        self.studies: list[dict] = []
        self.images: list[dict] = []
        self.reports: list[dict] = []
        self.quarantine: list[dict] = []
        self.seen_images: dict[str, str] = {}  # image_id -> path
        self.seen_content: dict[str, str] = {}  # file_sha256 -> path
        self.seen_studies: dict[str, tuple[str, str]] = {}  # study_id -> (patient, batch)
        self.previous = {} if previous is None else {
            row["image_path"]: row for row in previous.iter_rows(named=True)
        }
        self.n_reused = 0
        self.n_phi_stripped = 0

    def reject(self, path: object, study_id: str | None, reason: str) -> None:
        self.quarantine.append({"path": None if path is None else str(path),
                                "study_id": study_id, "reason": reason, "stage": STAGE})

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
        if before and (before["file_size"], before["file_mtime_ns"]) == (stat.st_size, stat.st_mtime_ns):
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
        if sid in self.seen_studies:
            patient, first_batch = self.seen_studies[sid]
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
            first = self.seen_images.get(row["image_id"]) or local_ids.get(row["image_id"])
            if first is not None:
                kind = "SOPInstanceUID" if row["image_format"] == "dicom" else "image id"
                self.reject(ref.path, sid, f"duplicate {kind} {row['image_id']} (first seen at {first})")
                continue
            twin = self.seen_content.get(row["file_sha256"]) or local_content.get(row["file_sha256"])
            if twin is not None:
                self.reject(ref.path, sid, f"duplicate image: identical content to {twin}")
                continue
            local_ids[row["image_id"]] = local_content[row["file_sha256"]] = str(ref.path)
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

        self.seen_images.update(local_ids)
        self.seen_content.update(local_content)
        self.seen_studies[sid] = (study.patient_id, batch)
        self.images.extend(valid)
        self.reports.append({"study_id": sid, **report})
        self.studies.append({"study_id": sid, "patient_id": study.patient_id, "source": source,
                             "batch_id": batch, "report_origin": study.report.origin,
                             "n_images": len(valid)})

    def result(self, n_inputs: int, notes: list[str]) -> IngestResult:
        return IngestResult(
            studies=pl.DataFrame(self.studies, schema=STUDIES_SCHEMA).sort("study_id"),
            images=pl.DataFrame(self.images, schema=IMAGES_SCHEMA).sort("study_id", "image_path"),
            reports=pl.DataFrame(self.reports, schema=REPORTS_SCHEMA).sort("study_id"),
            quarantine=pl.DataFrame(self.quarantine, schema=QUARANTINE_SCHEMA).sort("path", nulls_last=True),
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
    phi_policy: str = "allow", require_images: bool = True,
) -> IngestResult:
    """Catalogue one listing (one batch): headers, reports, PHI policy, de-duplication."""
    book = _Catalogue(PhiPolicy(phi_policy), previous=None)
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


def ingest_sources(
    raw_dir: Path, options, drop_dir: Path | None = None,
    previous_catalog: Path | None = None, progress: bool = True,
) -> IngestResult:
    """Catalogue raw_dir (batch "base") and each drop-folder batch, reusing unchanged files.

    `options` is the IngestParams section. Each batch is listed with ingest.layout (or
    detected on its own when "auto") and gets its own accounting row in the batches table.
    """
    from cxr_assets.ingest.layouts import get_layout

    previous_images = previous_batches = None
    if previous_catalog is not None:
        same_options = _read_state(previous_catalog).get("fingerprint") == _options_fingerprint(options)
        if same_options and (previous_catalog / "images.parquet").is_file():
            previous_images = pl.read_parquet(previous_catalog / "images.parquet")
        if (previous_catalog / "ingest_batches.parquet").is_file():
            previous_batches = pl.read_parquet(previous_catalog / "ingest_batches.parquet")
    first_seen = {} if previous_batches is None else dict(
        previous_batches.select("batch_id", "first_ingested").iter_rows())

    book = _Catalogue(PhiPolicy("allow"), previous_images)
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
        before = (len(book.studies), len(book.images), len(book.reports), len(book.quarantine))
        _add_listing(book, listing, options.source_name, batch, options.require_images, progress)
        notes += [f"[{batch}] {how}; phi_policy {book.policy.mode}"] + [f"[{batch}] {n}" for n in listing.notes]
        n_catalogued = (len(book.images) - before[1]) + (len(book.reports) - before[2])
        batch_rows.append({
            "batch_id": batch, "path": str(folder), "layout": name, "detected": how,
            "n_inputs": listing.n_inputs, "n_catalogued": n_catalogued,
            "n_quarantined": len(book.quarantine) - before[3],
            "n_studies": len(book.studies) - before[0], "n_images": len(book.images) - before[1],
            "first_ingested": first_seen.get(batch, now),
        })
        n_inputs += listing.n_inputs
    result = book.result(n_inputs, notes)
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
    catalogued = result.images.height + result.reports.height
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


WRITE_LOCK = ".write.lock"
WRITE_LOCK_TIMEOUT_S = 600.0


class CatalogWriteLock:
    """Exclusive lock on catalog_dir/.write.lock: one catalog writer at a time.

    Two concurrent raw_studies runs would otherwise interleave their Parquet files and one
    would fail on DuckDB's own file lock ("Could not set lock on file"), leaving Parquet from
    one run and DuckDB from the other. The kernel releases the lock when its holder dies.
    """

    def __init__(self, catalog_dir: Path, timeout_s: float = WRITE_LOCK_TIMEOUT_S) -> None:
        self.path = Path(catalog_dir) / WRITE_LOCK
        self.timeout_s = timeout_s
        self._handle = None

    def __enter__(self):
        import time

        try:
            import fcntl
        except ImportError:  # no flock (Windows): one writer assumed, as before
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "a")  # closed (lock released) in __exit__
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() > deadline:
                    self._handle.close()
                    self._handle = None
                    raise TimeoutError(
                        f"catalog {self.path.parent} is being written by another process: "
                        f"{self.path} still locked after {self.timeout_s:.0f} s") from None
                time.sleep(0.1)

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the descriptor releases the flock
            self._handle = None


def write_catalog(result: IngestResult, catalog_dir: Path) -> dict[str, Path]:
    """Write the catalog tables as Parquet and as tables of catalog_dir/catalog.duckdb."""
    catalog_dir = Path(catalog_dir)
    tables = {"studies": result.studies, "images": result.images, "reports": result.reports,
              "quarantine": result.quarantine, "ingest_batches": result.batches}
    with CatalogWriteLock(catalog_dir):
        for name in tables:  # temporaries left by a writer that was killed (we hold the lock)
            for stale in catalog_dir.glob(f".{name}.parquet.*.tmp"):
                stale.unlink(missing_ok=True)
        paths = {
            name: write_parquet_atomic(df, catalog_dir / f"{name}.parquet")
            for name, df in tables.items()
        }
        paths["duckdb"] = write_duckdb_tables(catalog_dir / "catalog.duckdb", tables)
    return paths
