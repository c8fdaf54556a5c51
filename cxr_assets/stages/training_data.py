"""Joins the catalog tables into (image, report embedding, split) rows for CLIP stages."""

from __future__ import annotations

import numpy as np
import polars as pl

from cxr_assets.paths import ProjectPaths

FRONTAL_ORDER = {"PA": 0, "AP": 1}


def image_report_pairs(paths: ProjectPaths) -> pl.DataFrame:
    """One row per cached image: study, split, view, cache path, report embedding."""
    images = pl.read_parquet(paths.study_images_table).select(
        "image_id", "study_id", "view_position", "cache_path"
    )
    splits = pl.read_parquet(paths.splits_table).select("study_id", "patient_id", "split")
    embeddings = pl.read_parquet(paths.report_embeddings_table).select("study_id", "embedding")
    return (
        images.join(splits, on="study_id", how="inner")
        .join(embeddings, on="study_id", how="inner")
        .sort("study_id", "image_id")
    )


def one_image_per_study(pairs: pl.DataFrame) -> pl.DataFrame:
    """Evaluation pairs each report with one image: PA, else AP, else the first other view."""
    rank = pl.col("view_position").replace_strict(FRONTAL_ORDER, default=9, return_dtype=pl.Int32)
    return (
        pairs.with_columns(rank.alias("_view_rank"))
        .sort("study_id", "_view_rank", "image_id")
        .unique(subset="study_id", keep="first", maintain_order=True)
        .drop("_view_rank")
    )


def embedding_matrix(frame: pl.DataFrame, column: str = "embedding") -> np.ndarray:
    return np.asarray(frame[column].to_list(), dtype=np.float32)
