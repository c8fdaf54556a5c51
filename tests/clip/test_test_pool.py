"""`clip.pairs.test_pool`: the one pool evaluation_report and re-evaluation score."""

from __future__ import annotations

import polars as pl

from cxr_assets.clip import pairs  # (not `import test_pool`: pytest would collect it)
from cxr_assets.config import parse_params
from cxr_assets.paths import ProjectPaths


def _paths(tmp_path) -> ProjectPaths:
    paths = ProjectPaths.from_params(parse_params({}), tmp_path)
    for table in (paths.splits_table, paths.report_texts_table, paths.study_embeddings_table):
        table.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame({"study_id": ["s1", "s2", "s3", "s4"],
                  "split": ["test", "test", "train", "val"]}).write_parquet(paths.splits_table)
    pl.DataFrame({"study_id": ["s2", "s1", "s3", "s4"],
                  "report_for_training": ["two", "one", "three", "four"]}
                 ).write_parquet(paths.report_texts_table)
    return paths


def test_catalogued_images_give_one_frontal_image_per_test_study(tmp_path):
    paths = _paths(tmp_path)
    images = pl.DataFrame({"image_id": ["a", "b", "c", "d", "e"],
                           "study_id": ["s2", "s1", "s1", "s3", "s2"],
                           "view_position": ["LATERAL", "LATERAL", "PA", "PA", "AP"]})
    pool = pairs.test_pool(paths, images)
    assert pool["study_id"].to_list() == ["s1", "s2"]
    assert pool["image_id"].to_list() == ["c", "e"]  # PA, else AP, before a lateral view
    assert pool["report_for_training"].to_list() == ["one", "two"]
    assert pairs.test_pool(paths, images, split="train")["study_id"].to_list() == ["s3"]  # another pool


def test_default_pool_is_the_stored_test_embeddings(tmp_path):
    paths = _paths(tmp_path)
    pl.DataFrame({"study_id": ["s2", "s1", "s3"], "split": ["test", "test", "train"],
                  "image_id": ["b", "a", "c"], "view_position": ["PA", "AP", "PA"],
                  "image_embedding": [[0.0], [1.0], [2.0]]}
                 ).write_parquet(paths.study_embeddings_table)
    pool = pairs.test_pool(paths)
    assert pool["study_id"].to_list() == ["s1", "s2"]
    assert pool["image_embedding"].to_list() == [[1.0], [0.0]]
    assert pool.columns[-1] == "report_for_training"
