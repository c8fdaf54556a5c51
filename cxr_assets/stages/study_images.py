"""study_images: decode each catalogued DICOM once into the content-keyed image cache.

Pixels are decoded (MONOCHROME1 inverted, modality and VOI LUTs applied), resized with the aspect
kept and padded to `ingest.image_size`. The cache key is (file hash, preprocessing params), so
unchanged inputs are never decoded twice. Images that fail to decode are quarantined.

The stage streams: the catalog's images table is read in record batches, decoded chunk by chunk
with a bounded number of tasks in flight, and written chunk by chunk (tmp + rename), so its memory
does not grow with the number of images. Whole-table figures come from the written Parquet.

With ingest.decode_shards = N > 1 the decoding runs as N shards in parallel (Dagster steps, or
`cxr stage study_images --shard I/N`), which fill the cache and record what they decoded; this
run then writes the table from the cache and the records (cxr_assets/ingest/image_shards.py).
"""

from __future__ import annotations

import polars as pl

from cxr_assets.config import Params
from cxr_assets.parquet_io import iter_parquet_chunks, parquet_rows, write_parquet_chunks
from cxr_assets.paths import ProjectPaths
from cxr_assets.stages.base import CheckOutcome, StageResult, TablePreview, require, write_parquet


def run(params: Params, paths: ProjectPaths, progress: bool = True, *,
        chunk_rows: int | None = None, shard: tuple[int, int] | None = None) -> StageResult:
    """The table (merge: decodes only what no shard has), or with shard=(I, N) one shard."""
    if shard is not None:
        return run_shard(params, paths, *shard, progress=progress, chunk_rows=chunk_rows)
    from cxr_assets.ingest.image_cache import CHUNK_ROWS, ImageCacheStream
    from cxr_assets.ingest.image_shards import clear_records, load_records, records_dir

    require("study_images", {"raw_studies": [paths.images_table]})
    chunk_rows = chunk_rows or CHUNK_ROWS
    n_catalogued = parquet_rows(paths.images_table)
    # What shards of this run decoded (none unless `--shard` runs came first).
    prior, record_files = load_records(records_dir(paths.image_cache_dir, paths.images_table))
    stream = ImageCacheStream(
        iter_parquet_chunks(paths.images_table, chunk_rows), paths.image_cache_dir,
        size=params.ingest.image_size, bits=params.ingest.cache_bits,
        workers=params.ingest.workers, progress=progress, chunk_rows=chunk_rows,
        total=n_catalogued, prior=prior,
    )
    write_parquet_chunks(stream, paths.study_images_table)
    quarantine = stream.quarantine()  # decode failures and duplicates: few rows
    quarantine_path = paths.catalog_dir / "study_images_quarantine.parquet"
    write_parquet(quarantine, quarantine_path)
    clear_records(record_files)  # consumed: a later run counts those images as cached

    # Whole-table figures from the written file (a lazy scan reads one column), not from memory.
    n_images, n_reused = pl.scan_parquet(paths.study_images_table).select(
        pl.len(), pl.col("was_cached").sum().cast(pl.Int64)
    ).collect().row(0)
    balanced = n_images + quarantine.height == n_catalogued == stream.n_input
    return StageResult(
        "study_images",
        {"study_images": paths.study_images_table, "quarantine": quarantine_path},
        {
            "n_images": n_images,
            "n_decoded": n_images - n_reused,
            "n_reused_from_cache": n_reused,
            "n_quarantined": quarantine.height,
            "image_size": params.ingest.image_size,
            "cache_dir": paths.image_cache_dir,
            "quarantine_reasons": TablePreview(
                quarantine.group_by("reason").len().to_dicts() if quarantine.height else []
            ),
        },
        [CheckOutcome(
            "images_accounted", balanced, blocking=True,
            description="every catalogued image is cached or quarantined",
            metadata={"catalogued": n_catalogued, "cached": n_images,
                      "quarantined": quarantine.height},
        )],
    )


def run_shard(params: Params, paths: ProjectPaths, shard: int, n_shards: int,
              progress: bool = True, chunk_rows: int | None = None) -> StageResult:
    """Shard `shard` of `n_shards`: decodes its share of the images into the image cache."""
    from cxr_assets.ingest.image_cache import CHUNK_ROWS
    from cxr_assets.ingest.image_shards import check_shard, decode_shard

    check_shard(shard, n_shards)
    require("study_images", {"raw_studies": [paths.images_table]})
    summary = decode_shard(
        paths.images_table, paths.image_cache_dir, size=params.ingest.image_size,
        bits=params.ingest.cache_bits, shard=shard, n_shards=n_shards,
        workers=params.ingest.workers, progress=progress, chunk_rows=chunk_rows or CHUNK_ROWS,
    )
    return StageResult(
        "study_images",
        {"image_cache": paths.image_cache_dir},
        {
            "shard": f"{shard}/{n_shards}",
            "n_images_in_shard": summary.n_images,
            "n_decoded": summary.n_decoded,
            "n_failed": summary.n_failed,
            "n_reused_from_cache": summary.n_cached,
            "image_size": params.ingest.image_size,
        },
    )
