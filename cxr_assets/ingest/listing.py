"""What a dataset-layout adapter hands to the catalog: studies, their images and reports.

An adapter (one module per layout in `cxr_assets.ingest.layouts`) only says which inputs belong
to which study; it reads no pixels and judges nothing. `catalog.catalog_from_listing` then reads
headers, applies the PHI policy, de-duplicates and does the quarantine accounting, the same way
for every layout. An *input* is one image reference or one report reference (a file, or a row of
a CSV / an XML document); each ends in the catalog or in quarantine with a reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, overload

import polars as pl

if TYPE_CHECKING:
    from cxr_assets.config import IngestParams
    from cxr_assets.ingest.dicom import DicomHeader


@dataclass(slots=True)
class ImageRef:
    """One image a layout assigns to a study (nothing read yet)."""

    path: Path
    image_id: str | None = None  # the layout's own id (dicom_id, ImageID); DICOMs use SOPInstanceUID
    view_hint: str | None = None  # view from the layout's metadata CSV, when the file has none
    header: DicomHeader | None = None  # pre-read by layouts that must read headers to group studies


@dataclass(slots=True)
class ReportRef:
    """Where a study's report comes from: a file to read, or text a layout already extracted."""

    origin: str  # file path, or "<csv path>#row=<n>": what a user greps for
    path: Path | None = None
    text: str | None = None


@dataclass(slots=True)
class StudyFiles:
    study_id: str
    patient_id: str
    report: ReportRef | None
    images: list[ImageRef] = field(default_factory=list)
    has_image_folder: bool = True  # False: the layout expected an image folder and found none


@dataclass(slots=True)
class Stray:
    """An input the layout could not place in a study (quarantined as is)."""

    path: str
    study_id: str | None
    reason: str


class LazyStudies(Sequence[StudyFiles]):
    """A listing's studies kept as rows of a Polars frame, each built into a StudyFiles when read.

    A layout that walks a large tree keeps one compact row per study (columnar, no Python
    object per study) instead of N StudyFiles with their ImageRef and Path objects; the catalog
    reads the studies one at a time, so only the study being catalogued exists as objects.
    Indexing and slicing work like a list (a slice is again lazy); every read builds a fresh
    StudyFiles.
    """

    __slots__ = ("_build", "_count_inputs", "_records")

    def __init__(self, records: pl.DataFrame, build: Callable[[tuple], StudyFiles],
                 count_inputs: Callable[[pl.DataFrame], int]) -> None:
        self._records = records
        self._build = build  # row tuple -> StudyFiles
        self._count_inputs = count_inputs  # records -> images + reports they hold

    def __len__(self) -> int:
        return self._records.height

    @overload
    def __getitem__(self, index: int) -> StudyFiles: ...
    @overload
    def __getitem__(self, index: slice) -> LazyStudies: ...
    def __getitem__(self, index):
        if isinstance(index, slice):
            return LazyStudies(self._records[index], self._build, self._count_inputs)
        if not -len(self) <= index < len(self):
            raise IndexError(f"study index {index} out of range")
        return self._build(self._records.row(index))

    def __iter__(self) -> Iterator[StudyFiles]:
        build = self._build
        for row in self._records.iter_rows():
            yield build(row)

    @property
    def n_inputs(self) -> int:
        """Images + reports of these studies, counted from the records (nothing is built)."""
        return self._count_inputs(self._records)


@dataclass
class LayoutListing:
    layout: str
    studies: Sequence[StudyFiles]  # a list, or LazyStudies built one study at a time
    stray: list[Stray] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the adapter found or assumed (shown in the UI)

    @property
    def n_inputs(self) -> int:
        if isinstance(self.studies, LazyStudies):
            return len(self.stray) + self.studies.n_inputs
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
