"""text_encoder: adapt the base LLM into a bidirectional report encoder (LLM2Vec recipe).

Bidirectional attention, LoRA (peft) masked next-token prediction on the training split's reports,
then supervised contrastive training on (findings, impression) pairs; LoRA is merged and the
encoder saved as one folder (safetensors, tokenizer, encoder config with a content hash).
"""

from __future__ import annotations

import polars as pl

from cxr_assets.config import Params
from cxr_assets.paths import ProjectPaths
from cxr_assets.stages.base import StageResult, require


def training_texts(paths: ProjectPaths) -> tuple[list[str], list[tuple[str, str]]]:
    """Reports of the training split, and contrastive pairs drawn from them only."""
    reports = pl.read_parquet(paths.report_texts_table)
    splits = pl.read_parquet(paths.splits_table)
    train = reports.join(splits.filter(pl.col("split") == "train").select("study_id"), on="study_id")
    train = train.sort("study_id")
    texts = [t for t in train["report_for_training"].to_list() if t]
    pairs = [
        (f, i) for f, i in zip(train["findings"].to_list(), train["impression"].to_list()) if f and i
    ]
    return texts, pairs


def run(params: Params, paths: ProjectPaths, progress: bool = True) -> StageResult:
    from cxr_assets.text.adapt import adapt_text_encoder

    require("text_encoder", {"report_texts": [paths.report_texts_table],
                             "study_splits": [paths.splits_table]})
    texts, pairs = training_texts(paths)
    if not texts:
        raise ValueError("text_encoder: the training split has no report text to adapt on")
    losses: list[tuple[str, int, float]] = []
    result = adapt_text_encoder(
        texts, pairs, params.text_encoder, paths.base_model_cache, paths.text_encoder_dir,
        seed=params.project.seed, progress=progress,
        log_fn=lambda stage, step, loss: losses.append((stage, step, loss)),
    )

    def first_last(values: list[float]) -> str:
        return f"{values[0]:.3f} -> {values[-1]:.3f}" if values else "skipped"

    return StageResult(
        "text_encoder",
        {"text_encoder": result.encoder_dir},
        {
            "base_model": params.text_encoder.base_model,
            "encoder_hash": result.content_hash,
            "n_train_reports": result.n_train_reports,
            "n_pairs": result.n_pairs,
            "mntp_loss": first_last(result.mntp_losses),
            "contrastive_loss": first_last(result.contrastive_losses),
            "lora_r": params.text_encoder.lora.r,
            "pooling": params.text_encoder.pooling,
            "seconds": round(result.seconds, 1),
        },
    )
