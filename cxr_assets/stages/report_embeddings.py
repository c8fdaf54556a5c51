"""report_embeddings: every report encoded once by the adapted text encoder.

Embeddings are cached by (text hash, encoder hash): unchanged reports are never re-encoded.
With text_encoder.embed_shards = N > 1 the encoding runs as N shards in parallel (Dagster steps,
or `cxr stage report_embeddings --shard I/N`), which fill the cache; this run then writes the
table from the cache (cxr_assets/embed/sharding.py).
The forward pass runs on the encode path text_encoder.encode_path names ('auto': the fastest this
CPU/GPU supports within the fidelity bar, probed on the first reports it encodes;
cxr_assets/text/encode_paths.py); the metadata says which path ran and why.
"""

from __future__ import annotations

from cxr_assets.config import Params
from cxr_assets.paths import ProjectPaths
from cxr_assets.stages.base import StageResult, require

TEXT_COLUMN = "report_for_training"


def _encoder(params: Params, paths: ProjectPaths):
    from cxr_assets.text.encoder import TextEncoder

    require("report_embeddings", {"text_encoder": [paths.text_encoder_dir / "encoder_config.json"],
                                  "report_texts": [paths.report_texts_table]})
    encoder = TextEncoder.from_pretrained(paths.text_encoder_dir, threads=params.clip.threads)
    encoder.request_path(params.text_encoder.encode_path, params.text_encoder.embed_batch_size)
    return encoder


def _path_metadata(encoder) -> dict:
    """Which compute path encoded this run's reports, and why (cxr_assets/text/encode_paths.py);
    the probe's speed and fidelity per path shows as JSON in the Dagster UI."""
    choice = encoder.path_choice
    if choice is None:
        return {"encode_path": "none", "encode_path_reason": "nothing needed encoding"}
    return {"encode_path": choice.path, "encode_path_reason": choice.reason,
            "encode_path_probe": choice.probe, "cpu_flags": " ".join(choice.cpu_flags)}


def run(params: Params, paths: ProjectPaths, progress: bool = True,
        shard: tuple[int, int] | None = None) -> StageResult:
    """The table (merge: encodes only what no shard has cached), or with shard=(I, N) one shard."""
    if shard is not None:
        return run_shard(params, paths, *shard, progress=progress)
    from cxr_assets.embed.text_cache import embed_table

    encoder = _encoder(params, paths)
    # Streamed: one chunk of reports in memory at a time, rows in report_texts order.
    summary = embed_table(
        encoder, paths.report_texts_table, text_column=TEXT_COLUMN,
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
            **_path_metadata(encoder),
        },
    )


def run_shard(params: Params, paths: ProjectPaths, shard: int, n_shards: int,
              progress: bool = True) -> StageResult:
    """Shard `shard` of `n_shards`: encodes its share of the reports into the embedding cache."""
    from cxr_assets.embed.sharding import check_shard, embed_shard

    check_shard(shard, n_shards)  # before loading the encoder: a wrong index fails at once
    encoder = _encoder(params, paths)
    summary = embed_shard(
        encoder, paths.report_texts_table, text_column=TEXT_COLUMN,
        cache_dir=paths.embedding_cache_dir, instruction=encoder.instruction or None,
        shard=shard, n_shards=n_shards, batch_size=params.text_encoder.embed_batch_size,
        progress=progress,
    )
    return StageResult(
        "report_embeddings",
        {"embedding_cache": paths.embedding_cache_dir / encoder.document_hash},
        {
            "shard": f"{shard}/{n_shards}",
            "n_texts_in_shard": summary.n_texts,
            "n_encoded_now": summary.n_encoded,
            "n_from_cache": summary.n_cached,
            "encoder_hash": encoder.content_hash,
            **_path_metadata(encoder),
        },
    )
