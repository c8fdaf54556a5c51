"""Content-keyed cache of decoded, resized and padded images (PNG).

The key is sha256(file_sha256 + preprocessing params), so an unchanged DICOM is decoded once
per preprocessing setting, whatever its path; changing the size or bit depth makes new keys.
Decoding runs in a spawn-based process pool (safe next to torch threads and in Dagster).
"""

from __future__ import annotations

import errno
import hashlib
import multiprocessing
import os
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from cxr_assets.ingest.catalog import QUARANTINE_SCHEMA

STAGE = "study_images"
# Bump when the decoding or resizing code changes what a cached PNG contains.
# 2: integer pre-reduction before Lanczos (REDUCING_GAP); PNG compress level 1 (pixels unchanged).
# 3: large JPEG 2000 images decoded at half resolution (dicom._j2k_half_resolution).
PREPROCESS_VERSION = "3"
RESAMPLE = "lanczos"
PAD = "center-black"
# Pillow's resize(reducing_gap=...): box-reduce by an integer factor while the remaining scale
# stays >= 3x, then Lanczos. Pillow documents 3.0 as indistinguishable from a full Lanczos; on
# a 1955x1841 radiograph -> 224 it is ~2x faster and moves 2% of 8-bit pixels, almost all by 1.
REDUCING_GAP = 3.0
# zlib level 1: ~4x faster than Pillow's default 6 on 224x224 images, ~15% larger files;
# the decoded pixels are identical.
PNG_COMPRESS_LEVEL = 1


def cache_key(file_sha256: str, size: int, bits: int) -> str:
    params = f"v={PREPROCESS_VERSION}|size={size}|bits={bits}|resample={RESAMPLE}|pad={PAD}"
    return hashlib.sha256(f"{file_sha256}|{params}".encode()).hexdigest()


def cache_path_for(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / key[:2] / f"{key}.png"


def resize_and_pad(image: np.ndarray, size: int) -> np.ndarray:
    """Aspect-preserving Lanczos resize of a [0, 1] float image so the long side is `size`, centred on black."""
    from PIL import Image

    rows, cols = image.shape
    scale = size / max(rows, cols)
    new_rows = max(1, min(size, round(rows * scale)))
    new_cols = max(1, min(size, round(cols * scale)))
    # A float32 array gives a mode "F" image: full precision through the resampling filter.
    resized = Image.fromarray(image.astype(np.float32, copy=False)).resize(
        (new_cols, new_rows), resample=Image.Resampling.LANCZOS, reducing_gap=REDUCING_GAP
    )
    canvas = np.zeros((size, size), dtype=np.float32)
    top, left = (size - new_rows) // 2, (size - new_cols) // 2
    canvas[top : top + new_rows, left : left + new_cols] = np.asarray(resized)
    return np.clip(canvas, 0.0, 1.0)  # Lanczos overshoots at edges


def write_png_atomic(image: np.ndarray, path: Path, bits: int) -> None:
    """Quantise a [0, 1] image to 8 or 16 bit and write it as PNG via tmp + rename."""
    from PIL import Image

    if bits == 8:
        pil = Image.fromarray(np.round(image * 255.0).astype(np.uint8))
    elif bits == 16:
        pil = Image.fromarray(np.round(image * 65535.0).astype(np.uint16))
    else:
        raise ValueError(f"cache bits must be 8 or 16, got {bits}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    try:
        pil.save(tmp, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# Errors of the cache's file system, not of the image: quarantining the image would drop a
# good input from training, so the stage stops instead (a rerun continues where it stopped).
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})


def _disk_full_error(error: OSError, out_path: str) -> OSError:
    cache_dir = Path(out_path).parent.parent
    todo = ("raise the file size limit (ulimit -f)" if error.errno == errno.EFBIG
            else "free space (or quota) on the file system")
    return OSError(error.errno, f"image cache {cache_dir} cannot be written ({error.strerror}): "
                   f"{todo}, then rerun; cached entries are kept", out_path)


def _cache_one(image_path: str, out_path: str, size: int, bits: int) -> str | None:
    """Worker (top level so spawn can pickle it): decode, resize, write. Returns an error or None.

    Raises OSError when the cache itself is full (disk, quota or file size limit).
    """
    from cxr_assets.ingest.dicom import DicomError
    from cxr_assets.ingest.images import ImageError, decode_image

    try:
        image = decode_image(Path(image_path), target_size=size)
        write_png_atomic(resize_and_pad(image, size), Path(out_path), bits)
    except (DicomError, ImageError) as error:
        return str(error).removeprefix(f"{image_path}: ")
    except OSError as error:
        if error.errno in DISK_FULL_ERRNOS:
            raise _disk_full_error(error, out_path) from None
        return f"cannot cache image ({type(error).__name__}: {error})"
    except Exception as error:  # noqa: BLE001 - one bad image must not stop the run: it is quarantined
        return f"cannot cache image ({type(error).__name__}: {error})"
    return None


def cache_images(
    images: pl.DataFrame,
    cache_dir: Path,
    size: int,
    bits: int = 8,
    workers: int = 2,
    progress: bool = True,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Decode every catalogued image into the PNG cache; skip keys already cached.

    Returns (study_images = images + cache_path, cache_key, was_cached, pixel_sha256;
    quarantine rows, stage "study_images", for images that failed to decode and for images whose
    pixels are identical to an earlier one's).
    """
    if bits not in (8, 16):
        raise ValueError(f"cache bits must be 8 or 16, got {bits}")
    if size < 1:
        raise ValueError(f"cache image size must be positive, got {size}")
    missing = {"image_id", "study_id", "image_path", "file_sha256"} - set(images.columns)
    if missing:
        raise ValueError(f"images table lacks column(s) {sorted(missing)}")
    cache_dir = Path(cache_dir)

    keys = [cache_key(sha, size, bits) for sha in images["file_sha256"].to_list()]
    paths = [cache_path_for(cache_dir, key) for key in keys]
    was_cached = [path.is_file() for path in paths]

    # One decode per key, even when several rows share the same file content.
    todo: dict[str, tuple[str, str]] = {}
    for key, path, cached, dicom in zip(keys, paths, was_cached, images["image_path"].to_list()):
        if not cached and key not in todo:
            todo[key] = (dicom, str(path))

    errors: dict[str, str] = {}
    done: set[str] = set()
    bar = tqdm(total=len(todo), desc="study_images", unit="img", disable=not progress)

    def run_serially() -> None:
        for key, (dicom, out) in todo.items():
            if key in done:
                continue
            if (error := _cache_one(dicom, out, size, bits)) is not None:
                errors[key] = error
            done.add(key)
            bar.update()

    if workers <= 1 or len(todo) <= 1:
        run_serially()
    else:
        context = multiprocessing.get_context("spawn")
        try:
            with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                futures = {
                    pool.submit(_cache_one, dicom, out, size, bits): key
                    for key, (dicom, out) in todo.items()
                }
                for future in as_completed(futures):
                    try:
                        error = future.result()
                    except OSError:  # the cache is full: stop now, not after every other image
                        pool.shutdown(wait=True, cancel_futures=True)
                        raise
                    if error is not None:
                        errors[futures[future]] = error
                    done.add(futures[future])
                    bar.update()
        except BrokenProcessPool as error:
            # Workers could not start (e.g. an interactive __main__ spawn cannot re-import) or
            # died: finish in this process rather than fail the whole stage.
            warnings.warn(f"image cache pool broke ({error}); finishing serially", stacklevel=2)
            run_serially()
    bar.close()

    table = images.with_columns(
        pl.Series("cache_path", [str(p) for p in paths], dtype=pl.String),
        pl.Series("cache_key", keys, dtype=pl.String),
        pl.Series("was_cached", was_cached, dtype=pl.Boolean),
    )
    failed = pl.Series(keys).is_in(list(errors))
    reasons = [errors[row["cache_key"]] for row in table.filter(failed).iter_rows(named=True)]
    rejected = table.filter(failed)
    table = table.filter(~failed)

    # Different files can hold the same pixels (a re-encoded or re-exported copy): the catalog
    # only sees different bytes, the cache sees identical images. Keep the first, quarantine the rest.
    table = table.with_columns(
        pl.Series("pixel_sha256", [_pixel_digest(p) for p in table["cache_path"].to_list()],
                  dtype=pl.String))
    first_of = {}
    twin_of: list[str | None] = []
    for digest, path in zip(table["pixel_sha256"].to_list(), table["image_path"].to_list()):
        twin_of.append(first_of.get(digest))
        first_of.setdefault(digest, path)
    twins = pl.Series(twin_of, dtype=pl.String)
    duplicate = twins.is_not_null()
    rejected = pl.concat([rejected.with_columns(pl.lit(None, dtype=pl.String).alias("pixel_sha256")),
                          table.filter(duplicate)])
    reasons += [f"duplicate image: identical pixels to {twin}" for twin in twins.filter(duplicate)]
    quarantine = pl.DataFrame(
        {"path": rejected["image_path"], "study_id": rejected["study_id"],
         "reason": pl.Series(reasons, dtype=pl.String), "stage": [STAGE] * rejected.height},
        schema=QUARANTINE_SCHEMA,
    )
    return table.filter(~duplicate), quarantine


def _pixel_digest(cache_path: str) -> str:
    """sha256 of a cached image's pixels (PNG decode is cheap; the DICOM is not read again)."""
    from PIL import Image

    with Image.open(cache_path) as image:
        return hashlib.sha256(image.tobytes()).hexdigest()
