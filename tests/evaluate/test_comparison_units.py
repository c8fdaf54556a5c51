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


def test_clips_trained_side_by_side_equal_the_ones_trained_in_turn(tmp_path) -> None:
    """Worker processes (spawned, clip.threads split between them) train exactly the CLIPs the
    stage would train one by one with that many threads: the towers' rows do not depend on it."""
    from cxr_assets.config import parse_params
    from cxr_assets.evaluate.comparison import train_side_by_side
    from cxr_assets.paths import ProjectPaths
    from tests.clip.conftest import write_pngs
    from tests.helpers import tiny_params

    labels = np.arange(24) % 4
    images = write_pngs(tmp_path / "images", labels, size=32)
    rows = pl.DataFrame({"study_id": [f"s{i}" for i in range(24)],
                         "cache_path": [str(p) for p in images]})
    train, val, held = rows[:14], rows[14:18], rows[18:]
    rng = np.random.default_rng(0)
    towers = [{s: rng.normal(size=12).astype(np.float32) + label
               for s, label in zip(rows["study_id"], labels)} for _ in range(2)]
    jobs = [(train, val, held, emb) for emb in towers]

    def params(threads: int, workers: int):
        raw = tiny_params(tmp_path, tmp_path / "no-llm", clip={
            "threads": threads, "positives": "paired", "image_size": 32, "embed_dim": 8,
            "epochs": 2, "batch_size": 6, "vision_backbone": "resnet10t"})
        raw["evaluation"]["comparison"]["workers"] = workers
        checked = parse_params(raw)
        return checked, ProjectPaths.from_params(checked, tmp_path)

    in_turn = train_side_by_side(*params(1, 1), jobs, workers=1, progress=False)
    side_by_side = train_side_by_side(*params(2, 2), jobs, workers=2, progress=False)
    assert len(side_by_side) == 2
    for (image_a, text_a), (image_b, text_b) in zip(in_turn, side_by_side):
        assert image_a.shape == (6, 8) and text_a.shape == (6, 8)
        np.testing.assert_allclose(image_b, image_a, atol=1e-4)
        np.testing.assert_allclose(text_b, text_a, atol=1e-4)
    # The two towers' inputs differ: so do their CLIPs (the jobs were not mixed up).
    assert not np.allclose(in_turn[0][1], in_turn[1][1])
