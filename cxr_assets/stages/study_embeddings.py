"""study_embeddings: image and report embeddings in the shared CLIP space for every study.

One representative image per study (PA, else AP, else another view) and the study's report,
both projected by the trained dual tower, tagged with the registered model version. Written as
Parquet and as a DuckDB table of FLOAT[dim] arrays (HNSW-indexed once large) that `cxr search`
queries.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from cxr_assets.clip.pairs import (
    embedding_matrix,
    image_report_pairs,
    one_image_per_study,
)
from cxr_assets.config import Params
from cxr_assets.paths import ProjectPaths
from cxr_assets.stages.base import StageResult, require, write_parquet


def run(params: Params, paths: ProjectPaths, progress: bool = True) -> StageResult:
    from cxr_assets.clip.model import load_clip_model
    from cxr_assets.embed.images import embed_images, embed_reports, embed_texts
    from cxr_assets.embed.search import vector_db_path, write_vector_table

    require("study_embeddings", {"clip_model": [paths.clip_model_dir / "registry.json"],
                                 "report_embeddings": [paths.report_embeddings_table],
                                 "report_texts": [paths.report_texts_table]})
    registry = json.loads((paths.clip_model_dir / "registry.json").read_text())
    model = load_clip_model(paths.clip_model_dir)
    reports = pl.read_parquet(paths.report_texts_table).select(
        "study_id", pl.col("report_for_training").fill_null("").alias("report_text"))
    studies = one_image_per_study(image_report_pairs(paths)).join(reports, on="study_id", how="left")
    image_emb = embed_images(model, [Path(p) for p in studies["cache_path"]], progress=progress)
    if model.text_tower is None:
        text_emb = embed_texts(model, embedding_matrix(studies))
    else:  # clip.text_tower: lora: the tuned tower re-encodes the report text itself
        text_emb = embed_reports(model, studies["report_text"].to_list(), progress=progress)
    dim = image_emb.shape[1]
    table = studies.select("study_id", "patient_id", "split", "image_id", "view_position", "cache_path",
                           "report_text").with_columns(
        pl.Series("image_embedding", image_emb.tolist(), dtype=pl.Array(pl.Float32, dim)),
        pl.Series("report_embedding", text_emb.tolist(), dtype=pl.Array(pl.Float32, dim)),
        pl.lit(registry["model_name"]).alias("model_name"),
        pl.lit(str(registry["version"])).alias("model_version"),
    )
    write_parquet(table, paths.study_embeddings_table)
    vectors = write_vector_table(table, vector_db_path(paths), registry["model_name"], str(registry["version"]),
                                 hnsw_min_rows=params.evaluation.search_hnsw_min_rows)
    return StageResult(
        "study_embeddings",
        {"study_embeddings": paths.study_embeddings_table, "vector_table": vectors["path"]},
        {"n_studies": table.height, "dim": dim, "duckdb_table": vectors["path"],
         "hnsw_index": ", ".join(vectors["hnsw_columns"]) or
         f"none (exact search below {params.evaluation.search_hnsw_min_rows} rows)",
         "model_version": f"{registry['model_name']} v{registry['version']}",
         **{f"n_{s}": int((table["split"] == s).sum()) for s in ("train", "val", "test")}},
    )
