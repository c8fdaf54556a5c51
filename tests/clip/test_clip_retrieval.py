"""Retrieval metrics: diagonal protocol with ties in the query's favour, and the grp_ protocol."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_assets.evaluate import retrieval
from cxr_assets.evaluate.retrieval import per_query_ranks, retrieval_metrics


def _from_similarity(sim: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings whose dot-product matrix is exactly `sim` (image = identity, text = sim.T)."""
    return np.eye(sim.shape[0], dtype=np.float32), np.ascontiguousarray(sim.T, dtype=np.float32)


def test_identity_embeddings_are_perfect():
    eye = np.eye(6, dtype=np.float32)
    metrics = retrieval_metrics(eye, eye)
    for key in ("i2t_R@1", "t2i_R@1", "i2t_R@10", "mean_recall"):
        assert metrics[key] == 1.0
    assert metrics["i2t_mean_rank"] == 1.0 and metrics["t2i_median_rank"] == 1.0
    assert metrics["n_pairs"] == 6.0


def test_hand_made_matrix_gives_exact_ranks_with_ties_in_favour():
    sim = np.array(
        [
            [0.9, 0.1, 0.95],
            [0.2, 0.5, 0.5],  # tie with the correct item counts in the query's favour
            [0.3, 0.8, 0.1],
        ]
    )
    image, text = _from_similarity(sim)
    i2t, t2i = per_query_ranks(image, text)
    np.testing.assert_array_equal(i2t, [2, 1, 3])
    np.testing.assert_array_equal(t2i, [1, 2, 3])
    metrics = retrieval_metrics(image, text, ks=(1, 2, 3))
    assert metrics["i2t_R@1"] == pytest.approx(1 / 3)
    assert metrics["i2t_R@2"] == pytest.approx(2 / 3)
    assert metrics["t2i_R@3"] == 1.0
    assert metrics["i2t_mean_rank"] == 2.0 and metrics["t2i_median_rank"] == 2.0
    assert metrics["mean_recall"] == pytest.approx(2 / 3)


def test_known_permutation():
    image = np.eye(5, dtype=np.float32)
    perm = np.array([1, 2, 0, 3, 4])
    text = image[perm]  # report j really describes image perm[j]
    i2t, t2i = per_query_ranks(image, text)
    # Pairs 3 and 4 are intact; 0..2 each lose to exactly one wrong candidate.
    np.testing.assert_array_equal(i2t, [2, 2, 2, 1, 1])
    np.testing.assert_array_equal(t2i, [2, 2, 2, 1, 1])
    assert retrieval_metrics(image, text, ks=(1,))["i2t_R@1"] == pytest.approx(0.4)


def test_ranks_match_brute_force_and_block_path(monkeypatch):
    rng = np.random.default_rng(3)
    image = rng.normal(size=(40, 6)).astype(np.float32)
    text = rng.normal(size=(40, 6)).astype(np.float32)
    sim = image @ text.T
    expect_i2t = 1 + (sim > np.diag(sim)[:, None]).sum(axis=1)
    expect_t2i = 1 + (sim > np.diag(sim)[None, :]).sum(axis=0)
    i2t, t2i = per_query_ranks(image, text)
    np.testing.assert_array_equal(i2t, expect_i2t)
    np.testing.assert_array_equal(t2i, expect_t2i)
    groups = rng.integers(0, 8, 40)
    whole = retrieval_metrics(image, text, text_groups=groups)
    monkeypatch.setattr(retrieval, "_BLOCK_ELEMENTS", 40 * 7)  # 7-row blocks
    assert retrieval_metrics(image, text, text_groups=groups) == whole
    np.testing.assert_array_equal(per_query_ranks(image, text)[1], expect_t2i)


def test_grp_protocol_counts_identical_reports():
    # Reports 0 and 1 are the same text (group "a"); a retrieval of either is clinically right.
    sim = np.array(
        [[0.5, 0.9, 0.1, 0.2], [0.8, 0.6, 0.3, 0.7], [0.1, 0.2, 0.9, 0.3], [0.0, 0.1, 0.95, 0.4]]
    )
    image, text = _from_similarity(sim)
    metrics = retrieval_metrics(image, text, ks=(1,), text_groups=np.array(["a", "a", "b", "c"]))
    # Diagonal: i2t ranks [2, 3, 1, 2], t2i ranks [2, 2, 2, 2].
    assert metrics["i2t_R@1"] == pytest.approx(0.25)
    assert metrics["i2t_mean_rank"] == pytest.approx(2.0)
    assert metrics["t2i_R@1"] == 0.0
    # Any identical text: i2t ranks [1, 1, 1, 2], t2i ranks [1, 1, 2, 2].
    assert metrics["grp_i2t_R@1"] == pytest.approx(0.75)
    assert metrics["grp_i2t_mean_rank"] == pytest.approx(1.25)
    assert metrics["grp_t2i_R@1"] == pytest.approx(0.5)
    assert metrics["grp_t2i_median_rank"] == pytest.approx(1.5)
    assert metrics["grp_mean_recall"] == pytest.approx(0.625)
    # Unique groups reduce the grp_ protocol to the diagonal one.
    unique = retrieval_metrics(image, text, ks=(1,), text_groups=np.arange(4))
    assert unique["grp_i2t_R@1"] == unique["i2t_R@1"]
    assert unique["grp_t2i_mean_rank"] == unique["t2i_mean_rank"]


def test_bad_inputs_are_named():
    eye = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="same shape"):
        retrieval_metrics(eye, np.eye(4, dtype=np.float32)[:3, :4])
    with pytest.raises(ValueError, match="text_groups"):
        retrieval_metrics(eye, eye, text_groups=np.array([0, 1]))
    with pytest.raises(ValueError, match="ks"):
        retrieval_metrics(eye, eye, ks=(0,))
    bad = eye.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(bad, eye)
