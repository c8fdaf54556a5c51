"""Unit tests: report scores, zero-shot AUC, robustness breakdowns, subsets, promotion rule."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from cxr_assets.evaluate.report_scores import bleu, label_f1, rouge_l
from cxr_assets.evaluate.robustness import (
    bootstrap_ci,
    five_by_n_subset,
    per_query_hits,
    style_groups,
)
from cxr_assets.evaluate.zero_shot import STYLES, prompts_for, roc_auc, roc_curve, zero_shot


def test_rouge_and_bleu_reward_overlap():
    ref = "Large right pleural effusion with adjacent atelectasis."
    assert rouge_l(ref, ref) == pytest.approx(1.0)
    assert bleu(ref, ref) == pytest.approx(1.0)
    close, far = "Large right pleural effusion.", "Normal heart size. No pneumothorax."
    assert rouge_l(close, ref) > rouge_l(far, ref) >= 0.0
    assert bleu(close, ref) > bleu(far, ref)
    assert rouge_l("", ref) == 0.0 and bleu(ref, "") == 0.0
    # LCS: "a c" in "a b c" -> p=1, r=2/3 -> F=0.8
    assert rouge_l("a c", "a b c") == pytest.approx(0.8)


def test_label_f1_micro_macro():
    truth = np.array([[1, 0], [1, 1], [0, 0]], dtype=bool)
    pred = np.array([[1, 0], [0, 1], [0, 1]], dtype=bool)
    f1 = label_f1(pred, truth, ["A", "B"])
    assert f1["f1/A"] == pytest.approx(2 / 3)   # tp1 fn1
    assert f1["f1/B"] == pytest.approx(2 / 3)   # tp1 fp1
    assert f1["f1_micro"] == pytest.approx(2 / 3) and f1["f1_macro"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        label_f1(pred, truth, ["A"])


def test_roc_auc_matches_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=60), 1)
    labels = rng.random(60) < 0.4
    pos, neg = scores[labels], scores[~labels]
    pairwise = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean()
    assert roc_auc(scores, labels) == pytest.approx(pairwise)
    assert np.isnan(roc_auc(scores, np.zeros(60, bool)))
    fpr, tpr = roc_curve(scores, labels)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == pytest.approx(1) and tpr[-1] == pytest.approx(1)


def test_zero_shot_is_deterministic_and_finds_a_planted_signal():
    observations = ["No Finding", "Pleural Effusion", "Cardiomegaly"]
    rng = np.random.default_rng(1)
    dim = 16
    prompt_vecs: dict[str, np.ndarray] = {}

    def embed(texts):  # positive prompts share one direction per observation, negatives another
        out = []
        for t in texts:
            if t not in prompt_vecs:
                obs = 1 if ("eff" in t.lower()) else 2
                negative = any(w in t.lower() for w in ("no ", "neg", "unlikely", "negative"))
                base = np.zeros(dim)
                base[obs * 2 + int(negative)] = 1.0
                prompt_vecs[t] = base + 0.01 * rng.normal(size=dim)
            out.append(prompt_vecs[t])
        return np.array(out, dtype=np.float32)

    n = 40
    labels = np.full((n, 3), np.nan)
    labels[:20, 1] = 1.0
    labels[20:, 1] = 0.0
    labels[::2, 2] = 1.0
    labels[5, 1] = -1.0  # uncertain: excluded
    images = np.zeros((n, dim), dtype=np.float32)
    images[:20, 2] = 1.0   # effusion studies point at the effusion-positive direction
    images[20:, 3] = 1.0
    images += 0.05 * np.random.default_rng(2).normal(size=images.shape).astype(np.float32)
    first = zero_shot(images, labels, observations, embed)
    second = zero_shot(images, labels, observations, embed)
    assert "No Finding" not in first["auc"]
    assert first["auc"]["Pleural Effusion"]["ensemble"] > 0.95
    assert set(first["auc"]["Pleural Effusion"]) == set(STYLES) | {"ensemble"}
    assert first["auc"] == second["auc"]
    assert first["n_positive"]["Pleural Effusion"] == 19


def test_prompts_cover_every_style():
    for style in STYLES:
        positive, negative = prompts_for("Pleural Effusion", style)
        assert positive and negative and not set(positive) & set(negative)
    with pytest.raises(ValueError, match="unknown prompt style"):
        prompts_for("Edema", "poetry")


def test_style_groups_and_bootstrap():
    profile = pl.DataFrame({"study_id": ["a", "b", "c", "d"], "impression_only": [True, False, True, False],
                            "abbreviation_density": [0.2, 0.0, 0.01, 0.3], "source": ["x", "x", "y", "y"]})
    groups = style_groups(["a", "b", "c", "d"], profile, abbreviation_heavy=0.05, min_size=2)
    assert groups["impression_only"].tolist() == [True, False, True, False]
    assert groups["abbreviation_heavy"].tolist() == [True, False, False, True]
    assert groups["source=y"].tolist() == [False, False, True, True]
    assert style_groups(["a"], None, 0.05) == {}
    hits = per_query_hits(np.array([1, 3, 20, 1]), np.array([2, 1, 1, 50]), [1, 5])
    assert hits["i2t_R@1"].mean() == pytest.approx(0.5)
    assert hits["mean_recall"].mean() == pytest.approx(np.mean([0.5, 0.75, 0.5, 0.75]))
    ci = bootstrap_ci({"m": np.r_[np.ones(50), np.zeros(50)]}, samples=400, seed=0)
    low, high = ci["m"]
    assert 0.35 < low < 0.5 < high < 0.65
    assert bootstrap_ci({"m": np.ones(3)}, samples=0, seed=0) == {}


def test_five_by_n_subset_is_exclusive_and_seeded():
    obs = ["A", "B", "C"]
    labels = np.full((30, 3), np.nan)
    labels[:10, 0] = 1
    labels[10:20, 1] = 1
    labels[15:20, 0] = 1  # positive for two findings: never drawn
    labels[20:, 2] = 0
    idx, counts = five_by_n_subset(labels, obs, ["A", "B"], per_finding=4, seed=3)
    assert counts == {"A": 4, "B": 4}
    assert all(i < 15 for i in idx)
    again, _ = five_by_n_subset(labels, obs, ["A", "B"], per_finding=4, seed=3)
    assert idx.tolist() == again.tolist()
    with pytest.raises(ValueError, match="not labeler observations"):
        five_by_n_subset(labels, obs, ["Edema"], 4, 0)


@pytest.mark.parametrize("challenger, champion, robust_new, robust_old, promote", [
    (0.40, 0.30, {"r": 0.50}, {"r": 0.52}, True),    # small robustness drop within tolerance
    (0.40, 0.30, {"r": 0.30}, {"r": 0.52}, False),   # better on primary, but regresses on style
    (0.25, 0.30, {"r": 0.90}, {"r": 0.52}, False),   # worse on primary
    (0.40, None, {}, {}, True),
])
def test_promotion_rule_with_robustness_tolerance(challenger, champion, robust_new, robust_old, promote):
    from cxr_assets.registry.promotion import decide

    ok, reason = decide(challenger, champion, 0.0, robust_new, robust_old, tolerance=0.05)
    assert ok is promote, reason
    if not ok and challenger > (champion or 0):
        assert "robustness regression" in reason
