"""Report-level scores of the top-1 retrieved report against the true report (METHOD_NOTES 5.2).

Offline text overlap (ROUGE-L F, BLEU-4 with add-one smoothing, both written here: no
downloads) and label agreement: F1 per observation between the labeler's positives on the
retrieved and on the true report, with micro and macro averages.
"""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np

_TOKEN = re.compile(r"[a-z0-9]+")


def tokenize(text: str) -> list[str]:
    """Lower-cased alphanumeric tokens (punctuation and case do not change clinical content)."""
    return _TOKEN.findall((text or "").lower())


def _lcs_length(a: list[str], b: list[str]) -> int:
    if not a or not b:
        return 0
    previous = [0] * (len(b) + 1)
    for token in a:
        current = [0]
        for j, other in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if token == other else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 (beta = 1) over tokens: longest common subsequence precision and recall."""
    cand, ref = tokenize(candidate), tokenize(reference)
    lcs = _lcs_length(cand, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(cand), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def bleu(candidate: str, reference: str, max_n: int = 4) -> float:
    """Sentence BLEU-max_n with add-one smoothing of the n-gram precisions and a brevity penalty."""
    cand, ref = tokenize(candidate), tokenize(reference)
    if not cand or not ref:
        return 0.0
    log_precision = 0.0
    for n in range(1, max_n + 1):
        grams = Counter(tuple(cand[i:i + n]) for i in range(len(cand) - n + 1))
        ref_grams = Counter(tuple(ref[i:i + n]) for i in range(len(ref) - n + 1))
        matched = sum(min(count, ref_grams[g]) for g, count in grams.items())
        total = max(len(cand) - n + 1, 0)
        # Smoothing keeps short reports from scoring 0 just because no 4-gram exists.
        log_precision += math.log((matched + 1) / (total + 1)) / max_n
    brevity = 1.0 if len(cand) > len(ref) else math.exp(1 - len(ref) / len(cand))
    return brevity * math.exp(log_precision)


def label_f1(predicted: np.ndarray, truth: np.ndarray, observations: list[str]) -> dict[str, float]:
    """F1 per observation (positives of the retrieved vs the true report), micro and macro.

    Observations never positive in either set are left out of the macro average (F1 undefined).
    """
    predicted, truth = np.asarray(predicted, dtype=bool), np.asarray(truth, dtype=bool)
    if predicted.shape != truth.shape or predicted.shape[1] != len(observations):
        raise ValueError(f"label matrices {predicted.shape} / {truth.shape} do not match "
                         f"{len(observations)} observations")
    out: dict[str, float] = {}
    per = []
    tp_all = fp_all = fn_all = 0
    for j, name in enumerate(observations):
        tp = int((predicted[:, j] & truth[:, j]).sum())
        fp = int((predicted[:, j] & ~truth[:, j]).sum())
        fn = int((~predicted[:, j] & truth[:, j]).sum())
        tp_all, fp_all, fn_all = tp_all + tp, fp_all + fp, fn_all + fn
        if tp + fp + fn == 0:
            continue
        value = 2 * tp / (2 * tp + fp + fn)
        out[f"f1/{name}"] = value
        per.append(value)
    denominator = 2 * tp_all + fp_all + fn_all
    out["f1_micro"] = 2 * tp_all / denominator if denominator else float("nan")
    out["f1_macro"] = float(np.mean(per)) if per else float("nan")
    return out


def overlap_scores(retrieved: list[str], reference: list[str]) -> dict[str, np.ndarray]:
    """Per-query ROUGE-L and BLEU-4 of each retrieved report against its reference."""
    if len(retrieved) != len(reference):
        raise ValueError(f"{len(retrieved)} retrieved reports for {len(reference)} references")
    return {"rouge_l": np.array([rouge_l(c, r) for c, r in zip(retrieved, reference)]),
            "bleu4": np.array([bleu(c, r) for c, r in zip(retrieved, reference)])}
