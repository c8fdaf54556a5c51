"""Tiny DICOM fixtures written with pydicom, and a small MIMIC-like tree with known defects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHARED_DICOM = Path(__file__).resolve().parents[3] / "shared" / "data" / "dicom"
RG1_UNCR = SHARED_DICOM / "pydicom_data_wg04" / "RG1_UNCR.dcm"
RG1_J2KR = SHARED_DICOM / "pydicom_data_wg04" / "RG1_J2KR.dcm"
SIIM_ORIGINAL = (
    SHARED_DICOM / "siim_acr" / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
)
SIIM_FAKE_MONO1 = SHARED_DICOM / "siim_acr" / "Fake_MONOHR1.dcm"


def needs_shared(*paths: Path):
    return pytest.mark.skipif(
        not all(p.is_file() for p in paths), reason="shared DICOM data not available"
    )


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    window: tuple[float, float] | None = None,
    rescale: tuple[float, float] | None = None,
    frames: int = 1,
    sop_uid: str | None = None,
    study_uid: str | None = None,
    view: str | None = "PA",
    drop: tuple[str, ...] = (),
    truncate_pixels: bool = False,
) -> Path:
    """Write a minimal single- or multi-frame grey-scale DICOM file."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    pixels = np.ascontiguousarray(pixels)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "anon"
    ds.Modality = "CR"
    if view is not None:
        ds.ViewPosition = view
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [0.139, 0.139]
    if frames > 1:
        ds.NumberOfFrames = frames
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    data = pixels.tobytes()
    ds.PixelData = data[: len(data) // 2] if truncate_pixels else data
    for tag in drop:
        delattr(ds, tag)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def gradient(rows: int, cols: int, max_value: int, dtype) -> np.ndarray:
    """A left-to-right ramp from 0 to max_value."""
    ramp = np.linspace(0, max_value, cols).round().astype(dtype)
    return np.tile(ramp, (rows, 1))


@pytest.fixture
def dicom_writer():
    return write_dicom


@pytest.fixture
def mimic_tree(tmp_path) -> Path:
    """A MIMIC-like tree: 2 good studies and every kind of defect the scan must quarantine.

    good:  p10000001/s50000001 (8-bit MONOCHROME2 + 12-bit MONOCHROME1, report)
           p10000002/s50000002 (16-bit MONOCHROME2, report)
    bad:   p10000002/s50000003 zero-byte .dcm + a text file named .dcm, with a report
           p11000003/s50000004 valid image, no report
           p11000003/s50000005.txt report without image folder
           files/README.txt stray file
    """
    raw = tmp_path / "raw"
    files = raw / "files"
    p1 = files / "p10" / "p10000001"
    p2 = files / "p10" / "p10000002"
    p3 = files / "p11" / "p11000003"
    write_dicom(p1 / "s50000001" / "a8.dcm", gradient(24, 32, 255, np.uint8))
    write_dicom(
        p1 / "s50000001" / "b12.dcm",
        gradient(32, 24, 4095, np.uint16),
        "MONOCHROME1",
        12,
        view="LL",
    )
    (p1 / "s50000001.txt").write_text("FINDINGS: Lungs are clear.\nIMPRESSION: No acute process.\n")
    write_dicom(
        p2 / "s50000002" / "c16.dcm", gradient(16, 16, 65535, np.uint16), bits_stored=16, view="AP"
    )
    (p2 / "s50000002.txt").write_text("IMPRESSION: Stable cardiomegaly.\n")
    (p2 / "s50000003").mkdir(parents=True)
    (p2 / "s50000003" / "empty.dcm").write_bytes(b"")
    (p2 / "s50000003" / "notes.dcm").write_text("this is not a DICOM file\n" * 20)
    (p2 / "s50000003.txt").write_text("IMPRESSION: Normal.\n")
    write_dicom(p3 / "s50000004" / "d.dcm", gradient(8, 8, 255, np.uint8))
    p3.mkdir(parents=True, exist_ok=True)
    (p3 / "s50000005.txt").write_text("IMPRESSION: Normal.\n")
    (files / "README.txt").write_text("not part of the layout\n")
    return raw
