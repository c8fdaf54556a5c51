"""study_embeddings: image and report embeddings in the shared CLIP space for every study.

One representative image per study (PA, else AP, else another view) and the study's report,
both projected by the trained dual tower, tagged with the registered model version.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from cxr_assets.config import Params
from cxr_assets.paths import ProjectPaths
from cxr_assets.stages.base import StageResult, require, write_parquet
from cxr_assets.stages.training_data import embedding_matrix, image_report_pairs, one_image_per_study


def run(params: Params, paths: ProjectPaths, progress: bool = True) -> StageResult:
    from cxr_assets.clip.model import load_clip_model
    from cxr_assets.embed.images import embed_images, embed_texts

    require("study_embeddings", {"clip_model": [paths.clip_model_dir / "registry.json"],
                                 "report_embeddings": [paths.report_embeddings_table]})
    registry = json.loads((paths.clip_model_dir / "registry.json").read_text())
    model = load_clip_model(paths.clip_model_dir)
    studies = one_image_per_study(image_report_pairs(paths))
    image_emb = embed_images(model, [Path(p) for p in studies["cache_path"]], progress=progress)
    text_emb = embed_texts(model, embedding_matrix(studies))
    dim = image_emb.shape[1]
    table = studies.select("study_id", "patient_id", "split", "image_id", "view_position").with_columns(
        pl.Series("image_embedding", image_emb.tolist(), dtype=pl.Array(pl.Float32, dim)),
        pl.Series("report_embedding", text_emb.tolist(), dtype=pl.Array(pl.Float32, dim)),
        pl.lit(registry["model_name"]).alias("model_name"),
        pl.lit(str(registry["version"])).alias("model_version"),
    )
    write_parquet(table, paths.study_embeddings_table)
    return StageResult(
        "study_embeddings",
        {"study_embeddings": paths.study_embeddings_table},
        {"n_studies": table.height, "dim": dim,
         "model_version": f"{registry['model_name']} v{registry['version']}",
         **{f"n_{s}": int((table["split"] == s).sum()) for s in ("train", "val", "test")}},
    )
