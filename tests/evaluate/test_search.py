"""The DuckDB vector table and its search: exact and HNSW agree, model version is tagged."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from cxr_assets.embed.search import StudySearch, vss_extension_path, write_vector_table


def _table(n: int, dim: int = 16, seed: int = 0) -> tuple[pl.DataFrame, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    img = rng.normal(size=(n, dim)).astype(np.float32)
    txt = rng.normal(size=(n, dim)).astype(np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    frame = pl.DataFrame({
        "study_id": [f"s{i:05d}" for i in range(n)], "split": ["test"] * n,
        "report_text": [f"report {i}" for i in range(n)],
        "image_embedding": pl.Series(img.tolist(), dtype=pl.Array(pl.Float32, dim)),
        "report_embedding": pl.Series(txt.tolist(), dtype=pl.Array(pl.Float32, dim)),
    })
    return frame, img, txt


class _FixedEncoder:
    version = "3"

    def __init__(self, vector):
        self.vector = vector

    def embed_texts(self, texts):
        return np.stack([self.vector] * len(texts))

    def embed_images(self, paths):
        return np.stack([self.vector] * len(paths))


def test_exact_search_matches_numpy_and_records_the_model(tmp_path):
    frame, img, txt = _table(300)
    info = write_vector_table(frame, tmp_path / "e.duckdb", "cxr", "3", hnsw_min_rows=10_000)
    assert info["hnsw_columns"] == [] and info["dim"] == 16
    query = img[7] + 0.1 * txt[3]
    with StudySearch(tmp_path / "e.duckdb") as search:
        assert (search.info.model_name, search.info.model_version, search.info.n_rows) == ("cxr", "3", 300)
        hits = search.text_to_studies(_FixedEncoder(query), "anything", k=5)
        expected = np.argsort(-(img @ (query / np.linalg.norm(query))))[:5]
        assert hits["study_id"].to_list() == [f"s{i:05d}" for i in expected]
        assert hits["similarity"].to_list() == sorted(hits["similarity"].to_list(), reverse=True)
        assert "report_text" in hits.columns
        reports = search.image_to_reports(_FixedEncoder(txt[11]), "img.png", k=3)
        assert reports["study_id"][0] == "s00011"
        similar = search.similar_reports(study_id="s00011", k=4)
        assert "s00011" not in similar["study_id"].to_list() and similar.height == 4
        with pytest.raises(ValueError, match="dimension"):
            search.nearest("image_embedding", np.ones(5), 3)
        with pytest.raises(LookupError, match="s99999"):
            search.similar_reports(study_id="s99999")


@pytest.mark.skipif(vss_extension_path() is None, reason="duckdb-ext-vss wheel not installed")
def test_hnsw_index_is_built_used_and_agrees_with_exact(tmp_path):
    frame, img, _ = _table(2000, dim=32, seed=1)
    info = write_vector_table(frame, tmp_path / "h.duckdb", "cxr", "1", hnsw_min_rows=1000)
    assert info["hnsw_columns"] == ["image_embedding", "report_embedding"]
    rng = np.random.default_rng(5)
    recalls = []
    with StudySearch(tmp_path / "h.duckdb") as search:
        assert search.uses_hnsw("image_embedding")
        for _ in range(20):
            query = rng.normal(size=32).astype(np.float32)
            exact = set(np.argsort(-(img @ query))[:10].tolist())
            found = {int(s[1:]) for s in search.nearest("image_embedding", query, 10)["study_id"]}
            recalls.append(len(exact & found) / 10)
    assert np.mean(recalls) >= 0.9


def test_missing_table_names_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="study_embeddings"):
        StudySearch(tmp_path / "absent.duckdb")
