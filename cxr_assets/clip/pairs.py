"""Joins the catalog tables into (image, report embedding, split) rows for CLIP stages.

CLIP training (`clip.from_catalog`), the study embeddings and the evaluations all pair images
with reports this way, so the pairing lives with the model rather than in one stage.
"""

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


def test_pool(paths: ProjectPaths, images: pl.DataFrame | None = None,
              split: str = "test") -> pl.DataFrame:
    """The pairs a model is scored on: one image per study of `split` (`one_image_per_study`)
    with the study's report_for_training, sorted by study_id.

    `images` are the candidate image rows (study_id, image_id, view_position, ...); by default
    the stored study_embeddings (one image per study, both embeddings, what evaluation_report
    scores). Re-evaluation passes the catalogued study_images instead, to embed them again with
    the champion; any other table or split scores another pool the same way.
    """
    if images is None:
        images = pl.read_parquet(paths.study_embeddings_table)
    if "split" in images.columns:
        images = images.filter(pl.col("split") == split)
    else:
        chosen = pl.read_parquet(paths.splits_table).filter(pl.col("split") == split)
        images = images.join(chosen.select("study_id"), on="study_id", how="semi")
    reports = pl.read_parquet(paths.report_texts_table).select("study_id", "report_for_training")
    return one_image_per_study(images).join(reports, on="study_id", how="inner").sort("study_id")


def positive_keys(pairs: pl.DataFrame, positives: str, paths: ProjectPaths) -> list | None:
    """One key per pair for `clip.positives` (equal keys = in-batch positives); None if paired.

    same_text: the report text the embeddings were computed from (`report_for_training`), so
    the views of one study and word-for-word identical reports share a key. same_labels: the
    labeler's findings (observations labelled positive or uncertain, with that value;
    negative and unmentioned ones do not count). A pair without report text or labels keys on
    its study alone.
    """
    if positives == "paired":
        return None
    study = pairs.select("study_id")
    if positives == "same_text":
        texts = pl.read_parquet(paths.report_texts_table).select("study_id", "report_for_training")
        joined = study.join(texts, on="study_id", how="left", maintain_order="left")
        return [("text", t) if t else ("study", s)
                for s, t in zip(joined["study_id"], joined["report_for_training"])]
    if positives == "same_labels":
        labels = pl.read_parquet(paths.labels_table)
        observations = [c for c in labels.columns if c != "study_id"]
        joined = study.join(labels, on="study_id", how="left", maintain_order="left")
        found = set(labels["study_id"].to_list())
        keys = []
        for row in joined.iter_rows(named=True):
            if row["study_id"] not in found:
                keys.append(("study", row["study_id"]))
                continue
            keys.append(("labels", tuple((o, row[o]) for o in observations
                                         if row[o] is not None and row[o] != 0)))
        return keys
    raise ValueError(f"clip.positives must be paired, same_text or same_labels, got {positives!r}")


def embedding_matrix(frame: pl.DataFrame, column: str = "embedding") -> np.ndarray:
    return np.asarray(frame[column].to_list(), dtype=np.float32)
