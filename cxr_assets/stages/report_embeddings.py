"""report_embeddings: every report encoded once by the adapted text encoder.

Embeddings are cached by (text hash, encoder hash): unchanged reports are never re-encoded.
"""

from __future__ import annotations

from cxr_assets.config import Params
from cxr_assets.paths import ProjectPaths
from cxr_assets.stages.base import StageResult, require


def run(params: Params, paths: ProjectPaths, progress: bool = True) -> StageResult:
    from cxr_assets.embed.text_cache import embed_table
    from cxr_assets.text.encoder import TextEncoder

    require("report_embeddings", {"text_encoder": [paths.text_encoder_dir / "encoder_config.json"],
                                  "report_texts": [paths.report_texts_table]})
    encoder = TextEncoder.from_pretrained(paths.text_encoder_dir, threads=params.clip.threads)
    # Streamed: one chunk of reports in memory at a time, rows in report_texts order.
    summary = embed_table(
        encoder, paths.report_texts_table, text_column="report_for_training",
        keep_columns=["study_id", "patient_id"], out_file=paths.report_embeddings_table,
        cache_dir=paths.embedding_cache_dir, instruction=encoder.instruction or None,
        batch_size=params.text_encoder.embed_batch_size, progress=progress,
    )
    return StageResult(
        "report_embeddings",
        {"report_embeddings": paths.report_embeddings_table},
        {
            "n_reports": summary.n_rows,
            "n_encoded_now": summary.n_computed,
            "n_from_cache": summary.n_rows - summary.n_computed,
            "dim": summary.dim,
            "encoder_hash": encoder.content_hash,
        },
    )
