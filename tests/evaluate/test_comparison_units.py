"""Units of the same-budget comparison: site tables, the cross-site split, the rendered table."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from cxr_assets.evaluate.comparison import (
    comparison_markdown,
    cross_site_split,
    evaluate_cell,
    site_table,
)


def _pairs() -> pl.DataFrame:
    return pl.DataFrame({
        "study_id": ["s1", "s2", "s3", "s4", "s5", "s6"],
        "split": ["train", "val", "test", "train", "test", "train"],
        "cache_path": [f"/c/{i}.png" for i in range(6)],
    })


def test_site_table_from_csv_with_prefix_and_clear_errors(tmp_path) -> None:
    csv = tmp_path / "sites.csv"
    csv.write_text("study_id,institution\n1,A\n2,A\n3,B\n")
    studies = pl.DataFrame({"study_id": ["s1"], "source": ["demo"]})
    sites = site_table(studies, "institution", csv, study_prefix="s")
    assert sites.sort("study_id").rows() == [("s1", "A"), ("s2", "A"), ("s3", "B")]
    assert site_table(studies, "source", None).rows() == [("s1", "demo")]
    with pytest.raises(ValueError, match="no column 'institution'.*sites_csv"):
        site_table(studies, "institution", None)
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        site_table(studies, "institution", tmp_path / "nope.csv")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['site'\]"):
        site_table(studies, "site", csv)


def test_cross_site_split_holds_out_every_study_of_the_site() -> None:
    sites = pl.DataFrame({"study_id": ["s1", "s2", "s3", "s4", "s5", "s6"],
                          "site": ["A", "A", "A", "B", "B", "A"]})
    train, val, held = cross_site_split(_pairs(), sites, "B")
    assert train["study_id"].to_list() == ["s1", "s6"] and val["study_id"].to_list() == ["s2"]
    assert held["study_id"].to_list() == ["s4", "s5"]  # train and test studies of B alike
    with pytest.raises(ValueError, match="site 'C' has no studies; sites are \\['A', 'B'\\]"):
        cross_site_split(_pairs(), sites, "C")
    with pytest.raises(ValueError, match="1 studies have no site"):
        cross_site_split(_pairs(), sites.filter(pl.col("study_id") != "s6"), "B")


def test_cells_carry_chance_and_a_ci_and_the_table_marks_the_best() -> None:
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((20, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    texts = [f"report {i}" for i in range(20)]
    ids = [f"s{i}" for i in range(20)]
    perfect = evaluate_cell("adapted", "in_domain", 50, emb, emb, texts, ids, [1, 5], 200, 0)
    shuffled = evaluate_cell("minilm", "in_domain", 50, emb, emb[::-1].copy(), texts, ids, [1, 5], 200, 0)
    assert perfect.metrics["mean_recall"] == 1.0 and shuffled.metrics["mean_recall"] < 0.5
    assert perfect.metrics["chance_mean_recall"] == pytest.approx((1 / 20 + 5 / 20) / 2)
    low, high = shuffled.ci["mean_recall"]
    assert low <= shuffled.metrics["mean_recall"] <= high
    markdown = comparison_markdown([perfect, shuffled], [1, 5], ["budget note"])
    assert "**1.000 (1.000-1.000)**" in markdown and "- budget note" in markdown
    assert "| minilm | 50 |" in markdown
