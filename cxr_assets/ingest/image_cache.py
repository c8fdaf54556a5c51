"""Content-keyed cache of decoded, resized and padded images (PNG).

The key is sha256(file_sha256 + preprocessing params), so an unchanged DICOM is decoded once
per preprocessing setting, whatever its path; changing the size or bit depth makes new keys.
Decoding runs in a spawn-based process pool (safe next to torch threads and in Dagster), chunk by
chunk with a bounded number of tasks in flight (ImageCacheStream), so memory does not grow with
the number of images beyond a few compact per-image indexes.
"""

from __future__ import annotations

import bisect
import errno
import hashlib
import itertools
import multiprocessing
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from cxr_assets.fileio import atomic_path
from cxr_assets.schemas import QUARANTINE_SCHEMA

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
    _save_png_atomic(_quantise(image, bits), path)


def _quantise(image: np.ndarray, bits: int):
    """A [0, 1] image as an 8-bit ("L") or 16-bit ("I;16") PIL image."""
    from PIL import Image

    if bits == 8:
        return Image.fromarray(np.round(image * 255.0).astype(np.uint8))
    if bits == 16:
        return Image.fromarray(np.round(image * 65535.0).astype(np.uint16))
    raise ValueError(f"cache bits must be 8 or 16, got {bits}")


def _save_png_atomic(pil, path: Path) -> None:
    # No fsync per PNG: the cache holds thousands of small files rebuilt from the DICOMs, and a
    # flush each would dominate the stage (the rename still keeps half-written files invisible).
    with atomic_path(path, fsync=False) as tmp:
        pil.save(tmp, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


# Errors of the cache's file system, not of the image: quarantining the image would drop a
# good input from training, so the stage stops instead (a rerun continues where it stopped).
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})


def _disk_full_error(error: OSError, out_path: str) -> OSError:
    cache_dir = Path(out_path).parent.parent
    todo = ("raise the file size limit (ulimit -f)" if error.errno == errno.EFBIG
            else "free space (or quota) on the file system")
    return OSError(error.errno, f"image cache {cache_dir} cannot be written ({error.strerror}): "
                   f"{todo}, then rerun; cached entries are kept", out_path)


def _cache_one(image_path: str, out_path: str, size: int, bits: int) -> tuple[str | None, str | None]:
    """Worker (top level so spawn can pickle it): decode, resize, write, digest.

    Returns (error, None) for an image that cannot be cached, else (None, pixel_sha256): the
    digest of the cached pixels, exactly what _pixel_digest gives for the written PNG (8-bit:
    from the pixels in memory, "L" reads back byte for byte; 16-bit: read back, as the PNG
    reader's mode for it differs between Pillow versions). Raises OSError when the cache itself
    is full (disk, quota or file size limit).
    """
    from cxr_assets.ingest.dicom import DicomError
    from cxr_assets.ingest.images import ImageError, decode_image

    try:
        image = decode_image(Path(image_path), target_size=size)
        pil = _quantise(resize_and_pad(image, size), bits)
        _save_png_atomic(pil, Path(out_path))
    except (DicomError, ImageError) as error:
        return str(error).removeprefix(f"{image_path}: "), None
    except OSError as error:
        if error.errno in DISK_FULL_ERRNOS:
            raise _disk_full_error(error, out_path) from None
        return f"cannot cache image ({type(error).__name__}: {error})", None
    except Exception as error:  # noqa: BLE001 - one bad image must not stop the run: it is quarantined
        return f"cannot cache image ({type(error).__name__}: {error})", None
    if bits == 8:
        return None, hashlib.sha256(pil.tobytes()).hexdigest()
    return None, _pixel_digest(out_path)


# Rows per chunk: the unit in which rows are keyed, decoded, checked for duplicates and handed
# on. The parent holds about one chunk of rows (plus the compact indexes of _DigestIndex), however
# many images there are.
CHUNK_ROWS = 2048
# In-flight tasks per pool worker: enough to keep every worker busy (each has its next task
# queued), few enough that the parent never holds more than workers * this many futures.
WINDOW_PER_WORKER = 8
# Images per pool task: amortises the pickling and queue round trip of a task (~0.3 ms) over a
# few decodes, and keeps the end-of-chunk wait short.
IMAGES_PER_TASK = 4
_REQUIRED_COLUMNS = ("image_id", "study_id", "image_path", "file_sha256")
_ADDED_SCHEMA: dict[str, pl.DataType] = {
    "cache_path": pl.String, "cache_key": pl.String, "was_cached": pl.Boolean,
    "pixel_sha256": pl.String,
}
# What a run's earlier work (the shards of a sharded run) found for each image it decoded: its
# pixel digest, or why it cannot be cached (error; pixel_sha256 null). One row per cache key.
RECORD_SCHEMA: dict[str, pl.DataType] = {
    "cache_key": pl.String, "pixel_sha256": pl.String, "error": pl.String,
}


def _digest_task(out_path: str) -> tuple[None, str]:
    """Worker: the pixel digest of an image already in the cache."""
    return None, _pixel_digest(out_path)


def _run_batch(tasks: list[tuple[Callable, tuple]]) -> list[tuple[str | None, str | None]]:
    """Worker: a few images per pool task (fewer round trips through the pool's queues)."""
    return [fn(*args) for fn, args in tasks]


def _make_pool(workers: int) -> Executor:
    """The decode pool: spawn-based (safe next to torch threads and inside Dagster)."""
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


class _DigestIndex:
    """Exact index of 32-byte digests (sha256), each with a value, grown chunk by chunk.

    A sorted numpy array: 40 bytes an entry with int64 values, 64 with 32-byte values (a dict of
    hex strings costs ~200), looked up with one vectorised searchsorted and grown with one merge
    per chunk. `value_dtype` "S32" stores a digest per entry (read back with find_digests).
    """

    def __init__(self, value_dtype: str = "int64") -> None:
        self._keys = np.empty(0, dtype="S32")
        self._values = np.empty(0, dtype=value_dtype)

    def __len__(self) -> int:
        return len(self._keys)

    def _lookup(self, digests: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """(position, found) of each digest."""
        query = np.array(digests, dtype="S32")
        if not len(self._keys) or not len(query):
            return np.zeros(len(query), dtype=np.int64), np.zeros(len(query), dtype=bool)
        at = np.minimum(np.searchsorted(self._keys, query), len(self._keys) - 1)
        return at, self._keys[at] == query

    def find(self, digests: list[bytes]) -> np.ndarray:
        """The value stored for each digest, -1 where it is absent (int64 values)."""
        at, found = self._lookup(digests)
        if not len(self._keys):
            return np.full(len(at), -1, dtype=np.int64)
        return np.where(found, self._values[at], -1)

    def find_digests(self, digests: list[bytes]) -> list[str | None]:
        """The digest stored for each digest, as hex, None where it is absent ("S32" values)."""
        at, found = self._lookup(digests)
        if not found.any():
            return [None] * len(at)
        # Raw bytes through a uint8 view: an "S32" scalar would drop trailing zero bytes.
        raw = self._values[at].view(np.uint8).reshape(-1, 32)
        return [row.tobytes().hex() if hit else None for row, hit in zip(raw, found.tolist())]

    def add(self, digests: list[bytes], values: list) -> None:
        """Insert digests that are not in the index yet (and unique among themselves)."""
        if not digests:
            return
        query = np.array(digests, dtype="S32")
        order = np.argsort(query, kind="stable")
        query, values_sorted = query[order], np.asarray(values, dtype=self._values.dtype)[order]
        at = np.searchsorted(self._keys, query)
        self._keys = np.insert(self._keys, at, query)
        self._values = np.insert(self._values, at, values_sorted)


def _as_chunks(images: pl.DataFrame | Iterable[pl.DataFrame], chunk_rows: int) -> Iterator[pl.DataFrame]:
    if isinstance(images, pl.DataFrame):
        if images.height == 0:
            yield images
        for offset in range(0, images.height, chunk_rows):
            yield images.slice(offset, chunk_rows)  # zero-copy
    else:
        yield from images


def _check_params(size: int, bits: int, chunk_rows: int, window: int | None) -> None:
    if bits not in (8, 16):
        raise ValueError(f"cache bits must be 8 or 16, got {bits}")
    if size < 1:
        raise ValueError(f"cache image size must be positive, got {size}")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
    if window is not None and window < 1:
        raise ValueError(f"window must be positive, got {window}")


class ImageCacheStream:
    """cache_images chunk by chunk: iterate it (once) for the study_images rows, one frame per
    input chunk, in input order; `quarantine()` once it is exhausted.

    `images` is the catalog's images table as one frame (cut into `chunk_rows` slices) or as an
    iterable of frames (e.g. slices of a Parquet scan). One pool serves the whole run; at most
    `window` tasks (default workers * WINDOW_PER_WORKER) of `images_per_task` images each are
    submitted and unfinished at any time. The rows, their order and the quarantine do not depend
    on the chunking: a chunked run gives exactly what one chunk gives.

    `prior` (RECORD_SCHEMA) is what the shards of this run decoded (cxr_assets/ingest/
    image_shards.py): those images count as decoded by this run (was_cached false) and their
    digests and failures are taken from it, so the run reads no image a shard has done, and
    writes the rows and quarantine one process decoding everything would.

    What outlives a chunk, and so grows with the number of images: two _DigestIndex (cache keys
    decoded by this run with their pixel digest, pixel digests seen; 40-64 bytes an image), the
    image_path of each output row (to name the first image in a duplicate's reason; Arrow
    strings, shared with the output frames), failed keys and the quarantine rows.
    """

    def __init__(
        self,
        images: pl.DataFrame | Iterable[pl.DataFrame],
        cache_dir: Path,
        size: int,
        bits: int = 8,
        workers: int = 2,
        progress: bool = True,
        *,
        chunk_rows: int = CHUNK_ROWS,
        window: int | None = None,
        images_per_task: int = IMAGES_PER_TASK,
        total: int | None = None,
        prior: pl.DataFrame | None = None,
    ) -> None:
        _check_params(size, bits, chunk_rows, window)
        if images_per_task < 1:
            raise ValueError(f"images_per_task must be positive, got {images_per_task}")
        if isinstance(images, pl.DataFrame):
            _check_columns(images)
            total = images.height if total is None else total
        self.cache_dir = Path(cache_dir)
        self.size, self.bits, self.workers, self.progress = size, bits, workers, progress
        self.window = window or max(1, workers) * WINDOW_PER_WORKER
        self.images_per_task = images_per_task
        self._chunks = _as_chunks(images, chunk_rows)
        self._total = total
        self._made = _DigestIndex("S32")  # cache key decoded by this run -> its pixel digest
        self._failed: dict[str, str] = {}  # cache key -> decode error (failures only: few)
        self._first = _DigestIndex()  # pixel digest -> output row of the first image with it
        self._kept_paths: list[pl.Series] = []  # image_path of the output rows, per chunk
        self._kept_offsets: list[int] = []
        self._failed_parts: list[pl.DataFrame] = []
        self._duplicate_parts: list[pl.DataFrame] = []
        self._pool: Executor | None = None
        self._pool_broken = False
        self._started = self._finished = False
        self.n_input = self.n_output = self.n_reused = 0
        self.desc = STAGE
        if prior is not None:
            self._seed(prior)

    def _seed(self, prior: pl.DataFrame) -> None:
        """Take `prior` (RECORD_SCHEMA) as decoded by this run: digests and failures known."""
        done = prior.filter(pl.col("error").is_null()).unique("cache_key", maintain_order=True)
        self._made.add([bytes.fromhex(k) for k in done["cache_key"].to_list()],
                       [bytes.fromhex(d) for d in done["pixel_sha256"].to_list()])
        failed = prior.filter(pl.col("error").is_not_null()
                              & ~pl.col("cache_key").is_in(done["cache_key"].implode()))
        self._failed.update(zip(failed["cache_key"].to_list(), failed["error"].to_list()))

    # ------------------------------------------------------------------ results
    def __iter__(self) -> Iterator[pl.DataFrame]:
        if self._started:
            raise RuntimeError("an ImageCacheStream can be iterated only once")
        self._started = True
        bar = tqdm(total=self._total, desc=self.desc, unit="img", disable=not self.progress)
        try:
            for chunk in self._chunks:
                yield self._process(chunk, bar)
            self._finished = True
        finally:
            bar.close()
            self._close_pool()

    def quarantine(self) -> pl.DataFrame:
        """Quarantine rows (stage "study_images"): decode failures, then duplicate pixels."""
        if not self._finished:
            raise RuntimeError("the quarantine is known once every chunk has been consumed")
        parts = self._failed_parts + self._duplicate_parts
        return pl.concat(parts) if parts else pl.DataFrame(schema=QUARANTINE_SCHEMA)

    # ------------------------------------------------------------------ one chunk
    def _process(self, chunk: pl.DataFrame, bar) -> pl.DataFrame:
        _check_columns(chunk)
        n = chunk.height
        keys = [cache_key(sha, self.size, self.bits) for sha in chunk["file_sha256"].to_list()]
        paths = [str(cache_path_for(self.cache_dir, key)) for key in keys]
        image_paths = chunk["image_path"].to_list()
        # Decoded earlier in this run (or by its shards): not "was cached" (as when the whole
        # table is one chunk), and the pixel digest is known.
        made = self._made.find_digests([bytes.fromhex(key) for key in keys])
        exists = [os.path.isfile(p) for p in paths]
        was_cached = [m is None and e for m, e in zip(made, exists)]

        # One task per key, even when several rows share the same file content.
        tasks: dict[str, tuple] = {}
        results: dict[str, tuple[str | None, str | None]] = {}
        for key, path, digest, exist, image_path in zip(keys, paths, made, exists, image_paths):
            if key in tasks or key in results or key in self._failed:
                continue
            if digest is not None and exist:
                results[key] = (None, digest)
            elif exist:
                tasks[key] = (_digest_task, (path,))
            else:
                tasks[key] = (_cache_one, (image_path, path, self.size, self.bits))
        results.update(self._run(tasks, bar))
        bar.update(n - len(tasks))  # rows with a known result or a failure: no task of their own
        self._remember(tasks, results, made={k for k, m in zip(keys, made) if m is not None})

        errors = [self._failed.get(key) for key in keys]
        digests = [None if error is not None else results[key][1] for key, error in zip(keys, errors)]
        study_ids = chunk["study_id"].to_list()

        # Different files can hold the same pixels (a re-encoded or re-exported copy): the catalog
        # only sees different bytes, the cache sees identical images. Keep the first, quarantine
        # the rest, also when the first is in an earlier chunk.
        kept = [i for i in range(n) if errors[i] is None]
        kept_digests = [bytes.fromhex(digests[i]) for i in kept]
        earlier = self._first.find(kept_digests).tolist()
        here: dict[bytes, int] = {}  # digest -> row (in this chunk) of its first image
        twin_of: dict[int, str] = {}  # row -> image_path of the first image with its pixels
        new_digests: list[bytes] = []
        new_rows: list[int] = []
        for i, digest, first in zip(kept, kept_digests, earlier):
            if first >= 0:
                twin_of[i] = self._output_path(first)
            elif digest in here:
                twin_of[i] = image_paths[here[digest]]
            else:
                here[digest] = i
                new_digests.append(digest)
                new_rows.append(self.n_output + len(new_rows))
        self._first.add(new_digests, new_rows)

        keep = [errors[i] is None and i not in twin_of for i in range(n)]
        table = chunk.with_columns(
            pl.Series("cache_path", paths, dtype=pl.String),
            pl.Series("cache_key", keys, dtype=pl.String),
            pl.Series("was_cached", was_cached, dtype=pl.Boolean),
            pl.Series("pixel_sha256", digests, dtype=pl.String),
        ).filter(pl.Series(keep, dtype=pl.Boolean))

        failed_rows = [i for i in range(n) if errors[i] is not None]
        if failed_rows:
            self._failed_parts.append(_quarantine_rows(
                [image_paths[i] for i in failed_rows], [study_ids[i] for i in failed_rows],
                [errors[i] for i in failed_rows]))
        if twin_of:
            rows = sorted(twin_of)
            self._duplicate_parts.append(_quarantine_rows(
                [image_paths[i] for i in rows], [study_ids[i] for i in rows],
                [f"duplicate image: identical pixels to {twin_of[i]}" for i in rows]))
        self._kept_offsets.append(self.n_output)
        self._kept_paths.append(table["image_path"])  # shares the table's buffers
        self.n_input += n
        self.n_output += table.height
        self.n_reused += sum(c for c, k in zip(was_cached, keep) if k)
        return table

    def _remember(self, tasks: dict[str, tuple], results: dict, made: set[str]) -> None:
        """Keep the digests of the images the tasks decoded (those not `made` before) and the
        failures."""
        decoded = [key for key, (fn, _) in tasks.items()
                   if fn is _cache_one and results[key][0] is None and key not in made]
        self._made.add([bytes.fromhex(key) for key in decoded],
                       [bytes.fromhex(results[key][1]) for key in decoded])
        for key in tasks:
            if results[key][0] is not None:
                self._failed[key] = results[key][0]

    def _output_path(self, row: int) -> str:
        """image_path of output row `row` (an earlier chunk's)."""
        chunk = bisect.bisect_right(self._kept_offsets, row) - 1
        return self._kept_paths[chunk][row - self._kept_offsets[chunk]]

    # ------------------------------------------------------------------ running tasks
    def _run(self, tasks: dict[str, tuple], bar) -> dict[str, tuple[str | None, str | None]]:
        results: dict[str, tuple[str | None, str | None]] = {}
        if not tasks:
            return results
        if self.workers <= 1 or self._pool_broken or (self._pool is None and len(tasks) <= 1):
            return self._run_serially(tasks, results, bar)
        try:
            if self._pool is None:
                self._pool = _make_pool(self.workers)
            todo = iter(tasks.items())
            pending: dict = {}

            def fill() -> None:
                # Keep at most `window` tasks submitted and unfinished.
                while len(pending) < self.window:
                    batch = list(itertools.islice(todo, self.images_per_task))
                    if not batch:
                        return
                    future = self._pool.submit(_run_batch, [task for _, task in batch])
                    pending[future] = [key for key, _ in batch]

            fill()
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    keys = pending.pop(future)
                    try:
                        results.update(zip(keys, future.result()))
                    except OSError:  # the cache is full: stop now, not after every other image
                        self._close_pool()
                        raise
                    bar.update(len(keys))
                fill()
        except BrokenProcessPool as error:
            # Workers could not start (e.g. an interactive __main__ spawn cannot re-import) or
            # died: finish in this process rather than fail the whole stage.
            warnings.warn(f"image cache pool broke ({error}); finishing serially", stacklevel=3)
            self._pool_broken = True
            self._close_pool()
            return self._run_serially(tasks, results, bar)
        return results

    def _run_serially(self, tasks, results, bar) -> dict[str, tuple[str | None, str | None]]:
        for key, (fn, args) in tasks.items():
            if key not in results:
                results[key] = fn(*args)
                bar.update()
        return results

    def _close_pool(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.shutdown(wait=True, cancel_futures=True)


def _check_columns(images: pl.DataFrame) -> None:
    missing = set(_REQUIRED_COLUMNS) - set(images.columns)
    if missing:
        raise ValueError(f"images table lacks column(s) {sorted(missing)}")


def _quarantine_rows(paths: list[str], study_ids: list[str], reasons: list[str]) -> pl.DataFrame:
    return pl.DataFrame({"path": paths, "study_id": study_ids, "reason": reasons,
                         "stage": [STAGE] * len(paths)}, schema=QUARANTINE_SCHEMA)


def cache_images(
    images: pl.DataFrame | Iterable[pl.DataFrame],
    cache_dir: Path,
    size: int,
    bits: int = 8,
    workers: int = 2,
    progress: bool = True,
    *,
    chunk_rows: int = CHUNK_ROWS,
    window: int | None = None,
    images_per_task: int = IMAGES_PER_TASK,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Decode every catalogued image into the PNG cache; skip keys already cached.

    Returns (study_images = images + cache_path, cache_key, was_cached, pixel_sha256;
    quarantine rows, stage "study_images", for images that failed to decode and for images whose
    pixels are identical to an earlier one's).

    The work runs chunk by chunk (ImageCacheStream) with at most `window` tasks in flight; the
    result is the chunks' rows concatenated without copying. To write them to Parquet without
    holding them all, iterate an ImageCacheStream instead (the study_images stage does).
    """
    stream = ImageCacheStream(images, cache_dir, size, bits, workers, progress,
                              chunk_rows=chunk_rows, window=window,
                              images_per_task=images_per_task)
    parts = list(stream)
    if parts:
        table = pl.concat(parts, how="vertical", rechunk=False)
    else:  # an empty iterable of chunks: no input columns to keep
        table = pl.DataFrame(schema={c: pl.String for c in _REQUIRED_COLUMNS} | _ADDED_SCHEMA)
    return table, stream.quarantine()


def _pixel_digest(cache_path: str) -> str:
    """sha256 of a cached image's pixels (PNG decode is cheap; the DICOM is not read again)."""
    from PIL import Image

    with Image.open(cache_path) as image:
        return hashlib.sha256(image.tobytes()).hexdigest()
