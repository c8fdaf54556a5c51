"""One entry point for every image format the layouts deliver: DICOM, JPEG and PNG.

`read_image_header` reads only what the catalog needs (no pixels for DICOM; PIL opens JPEG/PNG
lazily, decoding nothing); `decode_image` returns display-ready float32 in [0, 1], bright = dense,
for the image cache. Raster files of public datasets are already windowed and inverted where
needed, so they are only rescaled by their bit depth.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr_assets.ingest.dicom import DicomError, DicomHeader, decode_pixels, read_header
from cxr_assets.ingest.listing import RASTER_SUFFIXES


class ImageError(ValueError):
    """An image cannot be read or decoded; the message starts with the file path."""


@dataclass(frozen=True)
class RasterHeader:
    path: Path
    format: str  # jpeg | png
    mode: str  # PIL mode: L, I;16, RGB, ...
    rows: int
    columns: int


def image_format(path: Path) -> str:
    """'jpeg' / 'png' by extension, else 'dicom' (MIMIC and PACS exports use many extensions)."""
    suffix = Path(path).suffix.lower()
    if suffix in RASTER_SUFFIXES:
        return "png" if suffix == ".png" else "jpeg"
    return "dicom"


def read_raster_header(path: Path) -> RasterHeader:
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: image file not found")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: empty file (0 bytes)")
    try:
        with Image.open(path) as image:
            fmt = (image.format or "").lower()
            mode, (columns, rows) = image.mode, image.size
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not a readable JPEG/PNG image") from None
    except OSError as error:
        raise ImageError(f"{path}: unreadable image ({error})") from None
    if fmt not in ("jpeg", "png"):
        raise ImageError(f"{path}: unsupported image format {fmt or 'unknown'!r} (expected JPEG or PNG)")
    return RasterHeader(path, fmt, mode, rows, columns)


def read_image_header(path: Path) -> DicomHeader | RasterHeader:
    """Header of a DICOM or raster image; ImageError / DicomError name the file and the problem."""
    if image_format(path) == "dicom":
        if not Path(path).is_file():
            raise DicomError(f"{path}: image file not found")
        return read_header(path)
    return read_raster_header(path)


def decode_raster(path: Path) -> np.ndarray:
    """JPEG/PNG -> float32 [0, 1] grayscale; 16-bit PNGs keep their precision."""
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                array = np.asarray(image, dtype=np.float32)
                peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
                return np.clip(array / peak, 0.0, 1.0)
            gray = image.convert("L")  # RGB/RGBA/P exports of grayscale radiographs
            return np.asarray(gray, dtype=np.float32) / 255.0
    except OSError as error:  # truncated or corrupt data surfaces only on load()
        raise ImageError(f"{path}: cannot decode image ({error})") from None


def decode_image(path: Path, target_size: int | None = None) -> np.ndarray:
    """Display-ready float32 [0, 1]; `target_size` allows a cheaper decode for a smaller output."""
    if image_format(path) == "dicom":
        return decode_pixels(Path(path), target_size=target_size)
    return decode_raster(Path(path))
