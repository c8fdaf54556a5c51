"""What a dataset-layout adapter hands to the catalog: studies, their images and reports.

An adapter (one module per layout in `cxr_assets.ingest.layouts`) only says which inputs belong
to which study; it reads no pixels and judges nothing. `catalog.catalog_from_listing` then reads
headers, applies the PHI policy, de-duplicates and does the quarantine accounting, the same way
for every layout. An *input* is one image reference or one report reference (a file, or a row of
a CSV / an XML document); each ends in the catalog or in quarantine with a reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cxr_assets.config import IngestParams
    from cxr_assets.ingest.dicom import DicomHeader


@dataclass
class ImageRef:
    """One image a layout assigns to a study (nothing read yet)."""

    path: Path
    image_id: str | None = None  # the layout's own id (dicom_id, ImageID); DICOMs use SOPInstanceUID
    view_hint: str | None = None  # view from the layout's metadata CSV, when the file has none
    header: DicomHeader | None = None  # pre-read by layouts that must read headers to group studies


@dataclass
class ReportRef:
    """Where a study's report comes from: a file to read, or text a layout already extracted."""

    origin: str  # file path, or "<csv path>#row=<n>": what a user greps for
    path: Path | None = None
    text: str | None = None


@dataclass
class StudyFiles:
    study_id: str
    patient_id: str
    report: ReportRef | None
    images: list[ImageRef] = field(default_factory=list)
    has_image_folder: bool = True  # False: the layout expected an image folder and found none


@dataclass
class Stray:
    """An input the layout could not place in a study (quarantined as is)."""

    path: str
    study_id: str | None
    reason: str


@dataclass
class LayoutListing:
    layout: str
    studies: list[StudyFiles]
    stray: list[Stray] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the adapter found or assumed (shown in the UI)

    @property
    def n_inputs(self) -> int:
        return len(self.stray) + sum(
            len(s.images) + (s.report is not None) for s in self.studies
        )


Lister = Callable[[Path, "IngestParams"], LayoutListing]
# detect(raw_dir) -> a sentence saying why this layout matches, or None.
Detector = Callable[[Path], "str | None"]


@dataclass(frozen=True)
class Layout:
    name: str
    description: str
    list_studies: Lister
    detect: Detector
    public_dataset: bool  # de-identified public data: PHI policy "auto" means "allow"


RASTER_SUFFIXES = (".jpg", ".jpeg", ".png")
