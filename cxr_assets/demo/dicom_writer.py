"""Write phantom images as real, deterministic DICOM files (pydicom 3).

Explicit VR little endian, uncompressed. The header varies the way real archives do:
CR or DX, MONOCHROME1 or MONOCHROME2, 8-16 stored bits, optional rescale and window values.
Nothing depends on the wall clock or on pydicom's random UID source, so the same inputs give
byte-identical files.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MODALITIES: tuple[str, ...] = ("CR", "DX")
PHOTOMETRICS: tuple[str, ...] = ("MONOCHROME1", "MONOCHROME2")
BITS_STORED: tuple[int, ...] = (8, 10, 12, 16)
# CR Image Storage and Digital X-Ray Image Storage - For Presentation.
SOP_CLASSES = {"CR": "1.2.840.10008.5.1.4.1.1.1", "DX": "1.2.840.10008.5.1.4.1.1.1.1"}
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"


def deterministic_uid(*parts: object) -> str:
    """A '2.25.<int>' UID (ISO/IEC 9834-8 form) from a hash of `parts`; at most 44 characters."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode("utf-8")).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


IMPLEMENTATION_UID = deterministic_uid("cxr_assets.demo", "implementation")


@dataclass(frozen=True)
class ImageHeader:
    """Per-image header choices; everything the pixel encoding and the tags need."""

    patient_id: str
    patient_name: str
    patient_sex: str
    patient_age: str  # e.g. "063Y"
    study_uid: str
    series_uid: str
    sop_uid: str
    study_id: str
    study_date: str  # YYYYMMDD
    study_time: str  # HHMMSS
    study_description: str
    institution: str
    modality: str  # CR / DX
    view_position: str  # PA / AP / LL / LATERAL
    photometric: str  # MONOCHROME1 / MONOCHROME2
    bits_stored: int  # 8 / 10 / 12 / 16
    pixel_spacing_mm: float
    series_number: int = 1
    instance_number: int = 1
    rescale: tuple[float, float] | None = None  # (slope, intercept)
    window: bool = False
    manufacturer: str = "CXR-ASSETS DEMO"


def _ds(value: float) -> str:
    # DS values are limited to 16 characters; fixed formatting keeps bytes stable.
    return f"{value:.6g}"


def encode_pixels(image: np.ndarray, header: ImageHeader, lo: float, hi: float) -> np.ndarray:
    """Quantise a [0, 1] bright-is-dense image to stored values.

    The image uses the stored range [lo, hi] (fractions of full scale) like a detector that
    does not use its whole dynamic range; MONOCHROME1 stores the inverse (high = dark).
    """
    if header.bits_stored not in BITS_STORED:
        raise ValueError(f"bits_stored {header.bits_stored} is not one of {BITS_STORED}")
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"stored range [{lo}, {hi}] must satisfy 0 <= lo < hi <= 1")
    max_value = (1 << header.bits_stored) - 1
    scaled = np.clip(image, 0.0, 1.0) * (hi - lo) + lo
    if header.photometric == "MONOCHROME1":
        scaled = 1.0 - scaled
    dtype = np.uint8 if header.bits_stored == 8 else np.uint16
    return np.rint(scaled * max_value).astype(dtype)


def write_dicom(path: Path, stored: np.ndarray, header: ImageHeader) -> None:
    """Write `stored` (uint8/uint16 rows x cols) with `header` to `path`."""
    # pydicom is imported here so that importing the demo package stays cheap.
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import UID

    if header.modality not in SOP_CLASSES:
        raise ValueError(f"modality {header.modality!r} is not one of {MODALITIES}")
    if header.photometric not in PHOTOMETRICS:
        raise ValueError(f"photometric {header.photometric!r} is not one of {PHOTOMETRICS}")
    if stored.ndim != 2:
        raise ValueError(f"pixel array for {path} must be 2-D, got shape {stored.shape}")
    bits_allocated = 8 if header.bits_stored == 8 else 16
    expected = np.uint8 if bits_allocated == 8 else np.uint16
    if stored.dtype != expected:
        raise ValueError(f"pixel array for {path} must be {np.dtype(expected)}, got {stored.dtype}")

    sop_class = UID(SOP_CLASSES[header.modality])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = header.sop_uid
    meta.TransferSyntaxUID = UID(EXPLICIT_VR_LITTLE_ENDIAN)
    meta.ImplementationClassUID = IMPLEMENTATION_UID
    meta.ImplementationVersionName = "CXR_DEMO_1"

    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = header.sop_uid
    ds.StudyDate = header.study_date
    ds.SeriesDate = header.study_date
    ds.ContentDate = header.study_date
    ds.StudyTime = header.study_time
    ds.SeriesTime = header.study_time
    ds.ContentTime = header.study_time
    ds.AccessionNumber = ""
    ds.Modality = header.modality
    if header.modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = header.manufacturer
    ds.InstitutionName = header.institution
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = header.study_description
    ds.SeriesDescription = f"CHEST {header.view_position}"
    ds.PatientName = header.patient_name
    ds.PatientID = header.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = header.patient_sex
    ds.PatientAge = header.patient_age
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = header.view_position
    ds.PatientOrientation = ["P", "F"] if header.view_position in ("LL", "LATERAL") else ["L", "F"]
    ds.StudyInstanceUID = header.study_uid
    ds.SeriesInstanceUID = header.series_uid
    ds.StudyID = header.study_id
    ds.SeriesNumber = header.series_number
    ds.InstanceNumber = header.instance_number

    rows, cols = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = header.photometric
    ds.Rows = rows
    ds.Columns = cols
    ds.PixelSpacing = [_ds(header.pixel_spacing_mm), _ds(header.pixel_spacing_mm)]
    if header.modality == "DX":
        ds.ImagerPixelSpacing = [_ds(header.pixel_spacing_mm), _ds(header.pixel_spacing_mm)]
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = header.bits_stored
    ds.HighBit = header.bits_stored - 1
    ds.PixelRepresentation = 0
    if header.rescale is not None:
        slope, intercept = header.rescale
        ds.RescaleIntercept = _ds(intercept)
        ds.RescaleSlope = _ds(slope)
        ds.RescaleType = "US"
    if header.window:
        # Window in output (rescaled) units covering the central part of the stored data.
        slope, intercept = header.rescale or (1.0, 0.0)
        p_lo, p_hi = np.percentile(stored, [2, 98])
        lo, hi = sorted((p_lo * slope + intercept, p_hi * slope + intercept))
        ds.WindowCenter = _ds(round((lo + hi) / 2.0, 1))
        ds.WindowWidth = _ds(round(max(hi - lo, 1.0), 1))
    ds.LossyImageCompression = "00"

    data = np.ascontiguousarray(stored, dtype="<u1" if bits_allocated == 8 else "<u2").tobytes()
    if len(data) % 2:
        data += b"\0"  # DICOM values have even length
    ds.PixelData = data
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
