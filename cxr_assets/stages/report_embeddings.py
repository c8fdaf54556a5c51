"""report_embeddings: every report encoded once by the adapted text encoder.

Embeddings are cached by (text hash, encoder hash): unchanged reports are never re-encoded.
"""

from __future__ import annotations

import polars as pl

from cxr_assets.config import Params
from cxr_assets.paths import ProjectPaths
from cxr_assets.stages.base import StageResult, require, write_parquet


def run(params: Params, paths: ProjectPaths, progress: bool = True) -> StageResult:
    from cxr_assets.embed.text_cache import encode_with_cache
    from cxr_assets.text.encoder import TextEncoder

    require("report_embeddings", {"text_encoder": [paths.text_encoder_dir / "encoder_config.json"],
                                  "report_texts": [paths.report_texts_table]})
    reports = pl.read_parquet(paths.report_texts_table).sort("study_id")
    encoder = TextEncoder.from_pretrained(paths.text_encoder_dir, threads=params.clip.threads)
    texts = reports["report_for_training"].fill_null("").to_list()
    vectors, n_computed = encode_with_cache(
        encoder, texts, encoder.instruction or None, paths.embedding_cache_dir,
        batch_size=params.text_encoder.embed_batch_size, progress=progress,
    )
    table = reports.select("study_id", "patient_id").with_columns(
        pl.Series("embedding", vectors.tolist(), dtype=pl.Array(pl.Float32, vectors.shape[1])),
        pl.lit(encoder.content_hash).alias("encoder_hash"),
    )
    write_parquet(table, paths.report_embeddings_table)
    return StageResult(
        "report_embeddings",
        {"report_embeddings": paths.report_embeddings_table},
        {
            "n_reports": table.height,
            "n_encoded_now": n_computed,
            "n_from_cache": table.height - n_computed,
            "dim": int(vectors.shape[1]),
            "encoder_hash": encoder.content_hash,
        },
    )
