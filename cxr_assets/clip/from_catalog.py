"""CLIP training on the project's catalog: the clip_model stage and every torchrun rank call it.

It lives in the library, not in the stage, because the torchrun entry point (`clip.launch`)
runs it in each rank and must not import the adapter layer.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from cxr_assets.clip.pairs import embedding_matrix, image_report_pairs, positive_keys
from cxr_assets.config import Params
from cxr_assets.paths import ProjectPaths, require


def checkpoint_dir(params: Params, paths: ProjectPaths) -> Path:
    """`clip.checkpoint.dir` against the project root; artifacts/clip_checkpoints if unset."""
    folder = params.clip.checkpoint.dir
    if not folder:
        return paths.artifacts_dir / "clip_checkpoints"
    return Path(folder) if Path(folder).is_absolute() else paths.root / folder


def split_pairs(paths: ProjectPaths) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(train, val) image-report pairs of the catalog's split."""
    pairs = image_report_pairs(paths)
    return pairs.filter(pl.col("split") == "train"), pairs.filter(pl.col("split") == "val")


def report_encoder_hash(paths: ProjectPaths) -> str:
    """Hash of the text encoder that computed the cached report embeddings."""
    return pl.read_parquet(paths.report_embeddings_table)["encoder_hash"][0]


def train_from_catalog(params: Params, paths: ProjectPaths, progress: bool = True, log_fn=None):
    """Train on the catalog's train/val pairs in this process (one torchrun rank or alone).

    Returns (ClipTrainResult, train pairs, val pairs, encoder hash).
    """
    from cxr_assets.clip.train import train_clip

    require("clip_model", {
        "study_images": [paths.study_images_table],
        "study_splits": [paths.splits_table],
        "report_embeddings": [paths.report_embeddings_table],
        "text_encoder": [paths.text_encoder_dir / "encoder_config.json"],
    })
    train, val = split_pairs(paths)
    if train.height < 2:
        raise ValueError(f"clip_model: only {train.height} training image-report pairs; need >= 2")
    encoder_hash = report_encoder_hash(paths)

    if params.clip.text_tower == "lora":
        # Online text tower: the report strings themselves, encoded every step with LoRA.
        reports = pl.read_parquet(paths.report_texts_table).select(
            "study_id", pl.col("report_for_training").fill_null("").alias("report"))
        train = train.join(reports, on="study_id", how="left")
        val = val.join(reports, on="study_id", how="left")
        train_text, val_text = train["report"].to_list(), val["report"].to_list()
    else:
        train_text, val_text = embedding_matrix(train), embedding_matrix(val)
    positives = params.clip.positives
    if positives == "same_labels":
        require("clip_model", {"report_texts": [paths.labels_table]})
    elif positives == "same_text":
        require("clip_model", {"report_texts": [paths.report_texts_table]})
    result = train_clip(
        [Path(p) for p in train["cache_path"]], train_text,
        [Path(p) for p in val["cache_path"]], val_text,
        params.clip, text_encoder_hash=encoder_hash, seed=params.project.seed, progress=progress,
        log_fn=log_fn, checkpoint_dir=checkpoint_dir(params, paths),
        text_encoder_dir=paths.text_encoder_dir,
        train_groups=positive_keys(train, positives, paths),
        val_groups=positive_keys(val, positives, paths),
    )
    return result, train, val, encoder_hash
