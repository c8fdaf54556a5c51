"""study_images: decode each catalogued DICOM once into the content-keyed image cache.

Pixels are decoded (MONOCHROME1 inverted, modality and VOI LUTs applied), resized with the aspect
kept and padded to `ingest.image_size`. The cache key is (file hash, preprocessing params), so
unchanged inputs are never decoded twice. Images that fail to decode are quarantined.
"""

from __future__ import annotations

import polars as pl

from cxr_assets.config import Params
from cxr_assets.paths import ProjectPaths
from cxr_assets.stages.base import CheckOutcome, StageResult, TablePreview, require, write_parquet


def run(params: Params, paths: ProjectPaths, progress: bool = True) -> StageResult:
    from cxr_assets.ingest.image_cache import cache_images

    require("study_images", {"raw_studies": [paths.images_table]})
    images = pl.read_parquet(paths.images_table)
    cached, quarantine = cache_images(
        images, paths.image_cache_dir, size=params.ingest.image_size,
        bits=params.ingest.cache_bits, workers=params.ingest.workers, progress=progress,
    )
    write_parquet(cached, paths.study_images_table)
    quarantine_path = paths.catalog_dir / "study_images_quarantine.parquet"
    write_parquet(quarantine, quarantine_path)

    n_reused = int(cached["was_cached"].sum()) if cached.height else 0
    balanced = cached.height + quarantine.height == images.height
    return StageResult(
        "study_images",
        {"study_images": paths.study_images_table, "quarantine": quarantine_path},
        {
            "n_images": cached.height,
            "n_decoded": cached.height - n_reused,
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
            metadata={"catalogued": images.height, "cached": cached.height,
                      "quarantined": quarantine.height},
        )],
    )
