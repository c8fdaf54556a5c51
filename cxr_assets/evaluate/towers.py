"""Report embeddings of the studies under each text tower that model_comparison compares.

`adapted` is this run's report encoder (its stored report_embeddings); the others are baseline
encoders, encoded through the report-embedding cache so a rerun encodes only new reports
(tfidf is fitted on the training reports and is not cached).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import polars as pl

from cxr_assets.config import Params
from cxr_assets.paths import ProjectPaths


def cached_encode(encoder, cache_key: str, texts: list[str], instruction: str | None,
                  paths: ProjectPaths, batch_size: int, progress: bool) -> np.ndarray:
    """Encode through the report-embedding cache, so a rerun encodes only new reports."""
    from cxr_assets.embed.text_cache import EmbeddingCache, encode_missing, text_hash

    cache = EmbeddingCache(paths.embedding_cache_dir, cache_key)
    keys = [text_hash(t, instruction) for t in texts]
    encode_missing(encoder, cache, keys, texts, instruction, batch_size, progress)
    return cache.get(keys)


def tower_embeddings(name: str, params: Params, paths: ProjectPaths, studies: pl.DataFrame,
                     progress: bool, training: Callable[[], Any]) -> np.ndarray:
    """Report embeddings of `studies` (study_id, report, split) under text tower `name`:
    `adapted` or a baseline of `text.baselines.BASELINES`.

    `training()` gives the adapted encoder's contrastive training data (pairs, hard negatives,
    tasks), which minilm_finetuned is fine-tuned on; it is called only for that tower.
    """
    from cxr_assets.text.base_model import resolve_base_model
    from cxr_assets.text.baselines import BaselineSetup, build_baseline

    te = params.text_encoder
    texts = [t if t.strip() else "(empty report)" for t in studies["report"].to_list()]
    if name == "adapted":
        return _stored_embeddings(paths, studies)
    if name == "minilm_finetuned":  # cached by its training inputs: fine-tuned only on a miss
        return _finetuned_minilm_embeddings(params, paths, texts, progress, training)
    train_texts = [t for t, s in zip(texts, studies["split"].to_list()) if s == "train"]
    encoder = build_baseline(name, BaselineSetup(
        base_model=lambda: resolve_base_model(te.base_model, paths.base_model_cache),
        max_length=te.max_length, dtype=te.dtype,
        fit_corpus=train_texts,  # tfidf: vocabulary from the training reports only
        seed=params.project.seed, progress=progress))
    if name == "tfidf":  # fitted on this very data: nothing worth caching
        return encoder.encode(texts)
    # MiniLM is symmetric (no instruction); the raw LLM is keyed by what it computes and, like
    # the adapted encoder, given the stored instruction.
    key, instruction = (("baseline-minilm-l6-v2", None) if name == "minilm" else
                        (f"baseline-raw-{encoder.content_hash}", te.instruction or None))
    return cached_encode(encoder, key, texts, instruction, paths, te.embed_batch_size, progress)


def _stored_embeddings(paths: ProjectPaths, studies: pl.DataFrame) -> np.ndarray:
    """The adapted tower: this run's report_embeddings, in the order of `studies`."""
    stored = pl.read_parquet(paths.report_embeddings_table).select("study_id", "embedding")
    joined = studies.select("study_id").join(stored, on="study_id", how="left", maintain_order="left")
    if joined["embedding"].null_count():
        raise ValueError("model_comparison: report_embeddings lacks studies; re-materialize it")
    return np.asarray(joined["embedding"].to_list(), dtype=np.float32)


def _finetuned_minilm_embeddings(params: Params, paths: ProjectPaths, texts: list[str],
                                 progress: bool, training: Callable[[], Any]) -> np.ndarray:
    """all-MiniLM-L6-v2 fine-tuned on the pipeline's training pairs with the adapted encoder's
    contrastive budget (the release's, when the encoder starts from one), cached by both."""
    import hashlib
    import json

    from cxr_assets.config import ContrastiveParams
    from cxr_assets.embed.text_cache import EmbeddingCache, text_hash
    from cxr_assets.text.baselines import BaselineSetup, build_baseline

    te = params.text_encoder
    budget = te.contrastive
    if te.init_from:
        stored_training = paths.at(te.init_from) / "training.json"
        if stored_training.is_file():
            stored = json.loads(stored_training.read_text())["params"]["contrastive"]
            budget = ContrastiveParams(**stored)
    if budget.steps == 0:
        raise ValueError("model_comparison: minilm_finetuned needs a contrastive budget > 0 steps")
    data = training()
    digest = hashlib.sha256(json.dumps([data.pairs, data.hard_negatives, data.tasks,
                                        budget.model_dump(), params.project.seed]).encode())
    key = f"baseline-minilm-ft-{digest.hexdigest()[:16]}"
    cache = EmbeddingCache(paths.embedding_cache_dir, key)
    keys = [text_hash(t, None) for t in texts]
    if cache.missing(keys):
        encoder = build_baseline("minilm_finetuned", BaselineSetup(
            training=data, contrastive=budget, seed=params.project.seed, progress=progress))
        return cached_encode(encoder, key, texts, None, paths, te.embed_batch_size, progress)
    return cache.get(keys)
