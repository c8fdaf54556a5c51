"""Sharded study_images: n processes each decode one share of the images into the image cache,
then the ordinary single-process run writes the table from the cache.

Design (the report_embeddings pattern, cxr_assets/embed/sharding.py; a Dagster fan-out):

    raw_studies (images.parquet)
        -> plan: one shard per i in 0..n-1   (n = ingest.decode_shards)
        -> shard i of n: `decode_shard`      (each its own step: own process or pod)
        -> merge: the study_images stage     (writes study_images.parquet + its quarantine)

- Which shard an image belongs to is decided by its cache key (`cache_key`: the file's sha256
  and the preprocessing params; `shard_of`), so shards are disjoint, together cover every
  image, and do not depend on row order or on which process asks. Rows with the same file
  content are one key, decoded once, by one shard.
- A shard writes cache PNGs (each atomically, under its own content key: shards never write the
  same file) and, after each chunk of the catalog, one record file (RECORD_SCHEMA: the keys it
  decoded with their pixel digest, or why they failed) in the run's record folder. A killed
  shard keeps every PNG and every chunk record it finished; run again, it decodes only the
  images that are still not cached (failures recorded before are not tried again).
- The merge is the unchanged single-process run (`cxr stage study_images`): it reads the records
  of its catalog, so images the shards decoded count as decoded by this run (was_cached false,
  as one process would write) and their digests and failures come from the records: it decodes
  and reads no image a shard did, and writes the same rows, in catalog order, and the same
  quarantine (decode failures, then duplicate pixels) that one process would. Anything still
  missing (a shard that never ran) is decoded there, so the merge is always correct, only
  slower. It removes the records it read once the table is written.

The record folder is `<image cache>/shard_records/<sha256 of images.parquet, 16 hex>`: a new
catalog starts a new sharded run, and projects that share an image cache keep theirs apart.

Engines: Dagster runs the shards as mapped steps of the study_images asset
(dags_defs/assets.py): in process in cxr_pipeline, in parallel processes in the
study_images_sharded job, one pod per step with the Kubernetes executor. By hand, or from a
cluster array job: `cxr stage study_images --shard I/N` per shard, then `cxr stage study_images`.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from cxr_assets import sharding
from cxr_assets.failpoints import failpoint
from cxr_assets.hashing import file_sha256
from cxr_assets.ingest import image_cache
from cxr_assets.ingest.image_cache import (
    CHUNK_ROWS,
    RECORD_SCHEMA,
    ImageCacheStream,
    _check_columns,
    _DigestIndex,
    cache_key,
    cache_path_for,
)
from cxr_assets.parquet_io import iter_parquet_chunks, parquet_rows, write_parquet_atomic

SHARDS_SETTING = "ingest.decode_shards"
# Reached after each chunk record a shard has written (fault tests kill the shard here).
CHUNK_DECODED_FAILPOINT = "decode_shard_chunk_decoded"
RECORDS_FOLDER = "shard_records"


def check_shard(shard: int, n_shards: int) -> None:
    """A clear error, naming ingest.decode_shards, for a shard that does not exist."""
    sharding.check_shard(shard, n_shards, SHARDS_SETTING)


def parse_shard(spec: str, n_default: int | None = None) -> tuple[int, int]:
    """'I/N' -> (I, N); 'I' alone takes N from n_default (ingest.decode_shards)."""
    return sharding.parse_shard(spec, n_default, SHARDS_SETTING)


# The shard of an image: its cache key (hex) modulo n_shards.
shard_of = sharding.shard_of


# ------------------------------------------------------------------ the run's records

def records_dir(cache_dir: Path, images_table: Path) -> Path:
    """The record folder of a sharded run over `images_table` (one per catalog content)."""
    return Path(cache_dir) / RECORDS_FOLDER / file_sha256(images_table)[:16]


def load_records(folder: Path) -> tuple[pl.DataFrame | None, list[Path]]:
    """(every record of the run, the record files read); (None, []) when there are none."""
    files = sorted(Path(folder).glob("*.parquet")) if Path(folder).is_dir() else []
    if not files:
        return None, []
    frame = pl.concat([pl.read_parquet(f).cast(RECORD_SCHEMA) for f in files])
    return frame, files


def clear_records(files: list[Path]) -> None:
    """Remove the record files a merge has consumed (and their folder once it is empty)."""
    for file in files:
        file.unlink(missing_ok=True)
    folders = {f.parent for f in files}
    for folder in folders:
        try:
            folder.rmdir()  # only when empty: a shard started meanwhile keeps its records
        except OSError:
            pass


# ------------------------------------------------------------------ one shard

class ShardDecodeStream(ImageCacheStream):
    """The decoding of one shard: iterate it for one frame (RECORD_SCHEMA) per input chunk, the
    images of shard `shard` of `n_shards` this run decoded or failed to decode.

    Only decoding: images already in the cache are not read, and the table, the digests of
    cached images and the duplicate check are left to the merge. Uses the stream's process pool
    and bounded window. `prior` (records of earlier attempts) marks failures as done.
    """

    def __init__(self, images, cache_dir: Path, size: int, bits: int = 8, workers: int = 2,
                 progress: bool = True, *, shard: int, n_shards: int, **kwargs) -> None:
        check_shard(shard, n_shards)
        super().__init__(images, cache_dir, size, bits, workers, progress, **kwargs)
        self.shard, self.n_shards = shard, n_shards
        self.desc = f"study_images shard {shard}/{n_shards}"
        self._seen = _DigestIndex()  # this shard's distinct cache keys (value unused)
        self.n_keys = self.n_decoded = self.n_failed = 0

    def _process(self, chunk: pl.DataFrame, bar) -> pl.DataFrame:
        _check_columns(chunk)
        tasks: dict[str, tuple] = {}
        mine: set[str] = set()
        for sha, image_path in zip(chunk["file_sha256"].to_list(), chunk["image_path"].to_list()):
            key = cache_key(sha, self.size, self.bits)
            if key in mine or shard_of(key, self.n_shards) != self.shard:
                continue
            mine.add(key)
            path = str(cache_path_for(self.cache_dir, key))
            if key in self._failed or os.path.isfile(path):
                continue  # done: by an earlier attempt, another run or an earlier chunk
            # Looked up at call time, as the stream does (tests wrap it to count decodes).
            tasks[key] = (image_cache._cache_one, (image_path, path, self.size, self.bits))
        results = self._run(tasks, bar)
        bar.update(chunk.height - len(tasks))
        self._remember(tasks, results, made=set())

        fresh = [bytes.fromhex(key) for key in mine]
        fresh = [k for k, at in zip(fresh, self._seen.find(fresh).tolist()) if at < 0]
        self._seen.add(fresh, [0] * len(fresh))
        self.n_keys += len(fresh)
        self.n_failed += sum(error is not None for error, _ in results.values())
        self.n_decoded += sum(error is None for error, _ in results.values())
        self.n_input += chunk.height
        return pl.DataFrame({"cache_key": list(results),
                             "pixel_sha256": [digest for _, digest in results.values()],
                             "error": [error for error, _ in results.values()]},
                            schema=RECORD_SCHEMA)


@dataclass
class ShardSummary:
    shard: int
    n_shards: int
    n_images: int  # distinct images (cache keys) assigned to this shard
    n_decoded: int  # decoded into the cache by this run
    n_failed: int  # tried by this run and failed (the merge quarantines them)

    @property
    def n_cached(self) -> int:
        """Done before this run: in the cache, or failed in an earlier attempt."""
        return self.n_images - self.n_decoded - self.n_failed


def decode_shard(
    images_table: Path,
    cache_dir: Path,
    size: int,
    bits: int,
    shard: int,
    n_shards: int,
    workers: int = 2,
    progress: bool = True,
    chunk_rows: int = CHUNK_ROWS,
) -> ShardSummary:
    """Decode into the cache the images of `images_table` that belong to shard `shard` of
    `n_shards`, writing one record file per chunk that decoded anything (a kill loses at most
    the records of one chunk; its PNGs stay in the cache)."""
    check_shard(shard, n_shards)
    folder = records_dir(cache_dir, images_table)
    prior, _ = load_records(folder)
    stream = ShardDecodeStream(
        iter_parquet_chunks(images_table, chunk_rows), cache_dir, size, bits, workers, progress,
        shard=shard, n_shards=n_shards, chunk_rows=chunk_rows, total=parquet_rows(images_table),
        prior=prior)
    for records in stream:
        if records.height:
            name = f"shard-{shard}-of-{n_shards}-{uuid.uuid4().hex[:12]}.parquet"
            write_parquet_atomic(records, folder / name)
            failpoint(CHUNK_DECODED_FAILPOINT)
    return ShardSummary(shard=shard, n_shards=n_shards, n_images=stream.n_keys,
                        n_decoded=stream.n_decoded, n_failed=stream.n_failed)
