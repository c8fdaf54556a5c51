"""DICOM header reading and pixel decoding for chest radiographs.

Headers are read without pixel data so a catalog scan of a large tree stays cheap; pixels are
decoded only by the image cache. Decoding returns display-ready intensities: Modality LUT
(rescale), then VOI LUT / window, normalised to [0, 1] over the range the DICOM standard says
those transforms produce, and MONOCHROME1 inverted so that dense tissue (bone) is bright.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

# Tags without which an image cannot be catalogued or decoded.
REQUIRED_TAGS = (
    "SOPInstanceUID",
    "StudyInstanceUID",
    "PhotometricInterpretation",
    "BitsStored",
    "Rows",
    "Columns",
)
MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
# Larger than any radiograph detector (8192 x 8192). Decoders allocate Rows x Columns before
# they notice the data is short: a corrupt compressed file claiming 65535 x 65535 took 8 GiB.
MAX_PIXELS = 1 << 26
# Projection radiography. "DR" is not a DICOM defined term but some vendors write it.
RADIOGRAPH_MODALITIES = ("CR", "DX", "DR")
# BodyPartExamined values (any language seen in public data) that mean the chest.
CHEST_BODY_PARTS = ("CHEST", "THORAX", "LUNG", "TORAX", "THORAC", "PECHO", "PORT CHEST")
_VIEW_SYNONYMS = {
    "POSTEROANTERIOR": "PA", "POSTERO-ANTERIOR": "PA", "POSTERIOR-ANTERIOR": "PA", "PA": "PA",
    "ANTEROPOSTERIOR": "AP", "ANTERO-POSTERIOR": "AP", "ANTERIOR-POSTERIOR": "AP", "AP": "AP",
    "LATERAL": "LATERAL", "LAT": "LATERAL", "L": "LATERAL",
    "LEFT LATERAL": "LL", "LL": "LL", "RIGHT LATERAL": "RL", "RL": "RL",
    "AP HORIZONTAL": "AP", "AP SUPINE": "AP", "FRONTAL": "FRONTAL", "UNK": "UNKNOWN",
}


class DicomError(ValueError):
    """A DICOM file cannot be read or decoded; the message starts with the file path."""


@dataclass(frozen=True)
class DicomHeader:
    path: Path
    sop_instance_uid: str
    study_instance_uid: str
    patient_id: str | None
    modality: str | None
    view_position: str | None
    photometric: str
    bits_stored: int
    rows: int
    columns: int
    pixel_spacing: str | None
    number_of_frames: int
    body_part: str | None = None
    phi_tags: tuple[str, ...] = ()  # identifying tags holding a value (names only, never values)
    deidentified: bool = False  # PatientIdentityRemoved = YES or a DeidentificationMethod

    def rejection(self) -> str | None:
        """Why this image cannot enter a chest X-ray catalog, or None."""
        if self.number_of_frames != 1:
            return f"multi-frame image ({self.number_of_frames} frames) not supported"
        if self.photometric not in MONOCHROME:
            return f"unsupported PhotometricInterpretation {self.photometric!r}"
        if self.modality and self.modality.upper() not in RADIOGRAPH_MODALITIES:
            return f"not a radiograph (Modality {self.modality})"
        if self.body_part and not any(p in self.body_part.upper() for p in CHEST_BODY_PARTS):
            return f"not a chest image (BodyPartExamined {self.body_part})"
        return None

    def as_row(self) -> dict:
        row = asdict(self)
        row["path"] = str(self.path)
        return row


def _text(value: object) -> str | None:
    """DICOM string value -> stripped str, or None when empty/absent."""
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def read_dataset(path: Path, stop_before_pixels: bool):
    """pydicom Dataset of `path`; DicomError (naming the file) when it is not readable DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    # pydicom's value-validation warnings quote the raw bytes of a broken element, which can be
    # a patient name: they would reach logs and Dagster's captured output. Bad values surface
    # as DicomError reasons instead (which never quote values).
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE

    if not path.is_file():
        raise DicomError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DicomError(f"{path}: empty file (0 bytes)")
    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        pass  # maybe an old file without the 128-byte preamble: retry leniently below
    except Exception as error:  # noqa: BLE001 - pydicom raises many types on corrupt data
        raise DicomError(f"{path}: unreadable DICOM ({type(error).__name__}: {error})") from None
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=True)
    except Exception:  # noqa: BLE001 - any failure here means "not DICOM"
        raise DicomError(f"{path}: not a DICOM file") from None
    # force=True "parses" any bytes; without the core UIDs it was not DICOM at all.
    if "SOPInstanceUID" not in ds and "StudyInstanceUID" not in ds:
        raise DicomError(f"{path}: not a DICOM file")
    return ds


def normalize_view(value: str | None) -> str | None:
    """PA / AP / LATERAL / LL / RL from the many spellings of view positions; others upper-cased."""
    text = _text(value)
    if text is None:
        return None
    key = " ".join(text.upper().replace("_", " ").split())
    return _VIEW_SYNONYMS.get(key, key)


def view_from_dataset(ds) -> str | None:
    """ViewPosition, else the view code's meaning, else a PA/AP/LAT token in the series text."""
    view = normalize_view(ds.get("ViewPosition"))
    if view:
        return view
    codes = ds.get("ViewCodeSequence")
    if codes:
        view = normalize_view(codes[0].get("CodeMeaning"))
        if view:
            return view
    for keyword in ("SeriesDescription", "ProtocolName", "AcquisitionDeviceProcessingDescription"):
        words = (_text(ds.get(keyword)) or "").upper().replace("_", " ").split()
        for token in ("PA", "AP", "LATERAL", "LAT", "LL", "RL"):
            if token in words:
                return normalize_view(token)
    return None


def _spacing(ds) -> str | None:
    """Row\\column spacing in mm; zero or negative values (seen in test objects) mean unknown."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        values = ds.get(keyword)
        if values and all(float(v) > 0 for v in values):
            return "\\".join(str(v) for v in values)
    return None


def header_from_dataset(path: Path, ds) -> DicomHeader:
    """DicomHeader of an already read Dataset (one read serves layouts that need the dataset)."""
    from cxr_assets.ingest.phi import dicom_phi_tags, is_deidentified

    try:
        missing = [tag for tag in REQUIRED_TAGS if _text(ds.get(tag)) is None]
    except Exception as error:  # noqa: BLE001 - lazy element parsing fails in many ways
        raise DicomError(f"{path}: corrupt header ({type(error).__name__}: {error})") from None
    if missing:
        if len(missing) == len(REQUIRED_TAGS) and not any(tag.group > 0x0002 for tag in ds.keys()):  # noqa: SIM118 - tags, not elements
            raise DicomError(f"{path}: empty data set after the file meta header (truncated file?)")
        try:
            modality = _text(ds.get("Modality"))
        except Exception:  # noqa: BLE001 - a corrupt Modality: report the missing tags instead
            modality = None
        if modality and {"Rows", "Columns"} & set(missing):
            raise DicomError(f"{path}: not an image (Modality {modality})")
        raise DicomError(f"{path}: missing required tag(s) {', '.join(missing)}")
    try:
        pixel_spacing = _spacing(ds)
        frames = int(ds.get("NumberOfFrames") or 1)
        return DicomHeader(
            path=path,
            sop_instance_uid=str(ds.SOPInstanceUID).strip(),
            study_instance_uid=str(ds.StudyInstanceUID).strip(),
            patient_id=_text(ds.get("PatientID")),
            modality=_text(ds.get("Modality")),
            view_position=view_from_dataset(ds),
            photometric=str(ds.PhotometricInterpretation).strip(),
            bits_stored=int(ds.BitsStored),
            rows=int(ds.Rows),
            columns=int(ds.Columns),
            pixel_spacing=pixel_spacing,
            number_of_frames=frames,
            body_part=_text(ds.get("BodyPartExamined")),
            phi_tags=tuple(dicom_phi_tags(ds)),
            deidentified=is_deidentified(ds),
        )
    except (TypeError, ValueError) as error:
        raise DicomError(f"{path}: bad header value ({error})") from None
    except Exception as error:  # noqa: BLE001 - lazy element parsing fails in many ways
        raise DicomError(f"{path}: corrupt header ({type(error).__name__}: {error})") from None


def read_header(path: Path) -> DicomHeader:
    """Read the header only (no pixel data). Raise DicomError on corrupt files or missing tags."""
    path = Path(path)
    return header_from_dataset(path, read_dataset(path, stop_before_pixels=True))


def _stored_range(ds) -> tuple[float, float]:
    bits = int(ds.BitsStored)
    if int(ds.get("PixelRepresentation", 0)) == 0:
        return 0.0, float(2**bits - 1)
    return float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)


def _lut_range(item) -> tuple[float, float]:
    bits = int(item.LUTDescriptor[2])
    return 0.0, float(2**bits - 1)


def _modality_range(ds) -> tuple[float, float]:
    """Output range of the Modality LUT stage (same rule pydicom's windowing uses)."""
    if ds.get("ModalityLUTSequence"):
        return _lut_range(ds.ModalityLUTSequence[0])
    lo, hi = _stored_range(ds)
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        lo, hi = sorted((lo * slope + intercept, hi * slope + intercept))
    return lo, hi


JPEG2000_SYNTAXES = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91")


def _j2k_half_resolution(ds, target_size: int | None) -> np.ndarray | None:
    """Stored values of a JPEG 2000 image decoded at half resolution, or None.

    A JPEG 2000 codestream holds its image as wavelet levels: decoding one level less costs a
    quarter of the work (3-4x faster on a 2k radiograph) and loses nothing once the image is
    resized to `target_size`, as long as the half-size image is still >= 2x that size. Only
    unsigned single-component images; anything unexpected returns None (full decode instead).
    """
    if not target_size or ds.file_meta.get("TransferSyntaxUID") not in JPEG2000_SYNTAXES:
        return None
    if int(ds.get("PixelRepresentation", 0)) != 0 or max(int(ds.Rows), int(ds.Columns)) < 4 * target_size:
        return None
    try:
        import io

        import openjpeg
        from PIL import Image
        from pydicom.encaps import generate_frames

        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        info = openjpeg.get_parameters(frame)
        if info["is_signed"] or info["samples_per_pixel"] != 1 or info["precision"] > 16:
            return None
        with Image.open(io.BytesIO(frame)) as image:
            image.reduce = 1  # Pillow's JPEG 2000 reduction; deeper levels mis-size odd widths
            image.load()
            values = np.asarray(image)
        if image.mode.startswith("I;16"):
            # Pillow scales stored precision up to 16 bits: shift back to the stored values.
            values = values >> (16 - info["precision"])
        return values.astype(np.uint16 if info["precision"] > 8 else np.uint8)
    except Exception:  # noqa: BLE001 - any surprise: the standard full decode decides
        return None


def decode_pixels(path: Path, target_size: int | None = None) -> np.ndarray:
    """Decode a single-frame monochrome DICOM to float32 in [0, 1], bright = dense.

    Applies Modality LUT (rescale) and the first VOI LUT or window, masks values to BitsStored
    and inverts MONOCHROME1. Raises DicomError for multi-frame, colour or undecodable files.
    `target_size` (the side the caller will resize to) lets large JPEG 2000 images decode at
    half resolution.
    """
    path = Path(path)
    ds = read_dataset(path, stop_before_pixels=False)
    header = header_from_dataset(path, ds)
    if (why := header.rejection()) is not None:
        raise DicomError(f"{path}: {why}")
    if header.rows * header.columns > MAX_PIXELS:
        raise DicomError(f"{path}: implausible image size {header.rows} x {header.columns}")
    if "PixelData" not in ds:
        raise DicomError(f"{path}: no pixel data")
    try:
        raw = _j2k_half_resolution(ds, target_size)
        if raw is None:
            raw = ds.pixel_array
    except Exception as error:  # noqa: BLE001 - decoder plugins raise their own types
        raise DicomError(
            f"{path}: cannot decode pixels ({type(error).__name__}: {error})"
        ) from None
    if raw.ndim != 2:
        raise DicomError(f"{path}: expected a 2-D image, got shape {raw.shape}")
    lookup = _TABLE_INDEX.get(raw.dtype)
    if lookup is not None:
        # Every step below is elementwise on the stored value, so run it once on each possible
        # value (256 or 65,536 of them) and index that table: the same float32 values as the
        # whole-image computation, several times faster on a large radiograph. Should the table
        # fail, the whole-image path runs and reports (or not) exactly as it always did.
        domain = np.arange(1 << (8 * raw.dtype.itemsize), dtype=lookup).view(raw.dtype)
        try:
            with np.errstate(all="ignore"):  # the table spans values this image may not hold
                table = _display_values(path, ds, header, domain)
        except Exception:  # noqa: BLE001 - the whole-image path below decides what to raise
            table = None
        if table is not None and table.shape == domain.shape:
            return np.take(table, raw.view(lookup))
    return _display_values(path, ds, header, raw)


# Integer pixel dtypes small enough to transform through a table of every possible value,
# mapped to the unsigned dtype whose view indexes that table.
_TABLE_INDEX = {
    np.dtype(np.uint8): np.uint8,
    np.dtype(np.int8): np.uint8,
    np.dtype(np.uint16): np.uint16,
    np.dtype(np.int16): np.uint16,
}


def _display_values(path: Path, ds, header: DicomHeader, raw: np.ndarray) -> np.ndarray:
    """Stored values -> [0, 1] float32, bright = dense: mask to BitsStored, Modality LUT, VOI
    LUT or window, normalise over the standard's output range, invert MONOCHROME1."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    if raw.dtype.kind == "u" and header.bits_stored < raw.dtype.itemsize * 8:
        # Bits above BitsStored may hold overlays or garbage in some files.
        raw = raw & np.array((1 << header.bits_stored) - 1, dtype=raw.dtype)

    try:
        values = apply_modality_lut(raw, ds)
        lo, hi = _modality_range(ds)
        voi = ds.get("VOILUTSequence")
        has_voi_lut = bool(voi) and None not in (voi[0].get("LUTDescriptor"), voi[0].get("LUTData"))
        has_window = ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None
        if has_voi_lut or has_window:
            values = apply_voi_lut(values, ds, index=0, prefer_lut=True)
            if has_voi_lut:
                lo, hi = _lut_range(voi[0])
            # Windowing maps into the modality output range, so (lo, hi) stays valid.
    except Exception as error:  # noqa: BLE001 - bad LUT/window values surface in many ways
        raise DicomError(
            f"{path}: cannot apply LUT/window ({type(error).__name__}: {error})"
        ) from None

    values = np.asarray(values, dtype=np.float64)
    if hi <= lo:
        raise DicomError(f"{path}: degenerate intensity range [{lo}, {hi}]")
    image = np.clip((values - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    if header.photometric == "MONOCHROME1":
        image = 1.0 - image
    return image
