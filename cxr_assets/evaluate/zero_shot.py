"""Zero-shot classification per observation with deterministic prompt ensembles.

For each observation, positive and negative prompts are written in several report styles
(findings prose, terse impression, abbreviated, hedged), each with a few synonyms. A style's
class embedding is the normalized mean of its prompt embeddings; an image's score is
sim(image, positive) - sim(image, negative). The "ensemble" uses every style's prompts. The
spread of AUC across styles is the prompt sensitivity: a robust text tower keeps it small.
Prompts are fixed lists in a fixed order: the same model always gets the same AUC.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# synonyms (prose) and an abbreviated form, per CheXpert-style observation
TERMS: dict[str, tuple[list[str], str]] = {
    "atelectasis": (["atelectasis", "subsegmental atelectasis"], "atx"),
    "cardiomegaly": (["cardiomegaly", "an enlarged cardiac silhouette"], "CMG"),
    "consolidation": (["consolidation", "airspace consolidation"], "consol"),
    "edema": (["pulmonary edema", "interstitial edema"], "pulm edema"),
    "pleural effusion": (["pleural effusion", "a layering effusion"], "pl eff"),
    "pneumonia": (["pneumonia", "an infectious infiltrate"], "PNA"),
    "pneumothorax": (["pneumothorax", "a pleural air collection"], "PTX"),
    "lung opacity": (["lung opacity", "an airspace opacity"], "opac"),
    "lung lesion": (["a lung nodule", "a pulmonary mass"], "nod"),
    "fracture": (["a rib fracture", "a fracture"], "fx"),
    "enlarged cardiomediastinum": (["an enlarged cardiomediastinum", "a widened mediastinum"], "wide mediast"),
    "pleural other": (["pleural thickening", "pleural scarring"], "pl thickening"),
    "support devices": (["support devices", "an endotracheal tube"], "ETT"),
}
# Observations whose "positive" is the absence of disease: prompts would be contradictory.
SKIPPED = {"no finding"}

STYLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "findings": (("There is {x}.", "{x} is seen."), ("There is no {x}.", "No evidence of {x}.")),
    "impression": (("{x}.", "Findings consistent with {x}."), ("No {x}.", "Negative for {x}.")),
    "abbreviated": (("+{a}", "{a} present"), ("no {a}", "neg {a}")),
    "hedged": (("Possible {x}.", "Findings may represent {x}."), ("{x} is unlikely.", "No definite {x}.")),
}


def _fill(template: str, term: str, abbreviation: str) -> str:
    text = template.format(x=term, a=abbreviation)
    return text[0].upper() + text[1:]


def prompts_for(observation: str, style: str) -> tuple[list[str], list[str]]:
    """(positive prompts, negative prompts) for one observation in one style."""
    if style not in STYLES:
        raise ValueError(f"unknown prompt style {style!r}; styles are {sorted(STYLES)}")
    synonyms, abbreviation = TERMS.get(observation.lower(), ([observation.lower()], observation.lower()))
    positive, negative = STYLES[style]
    terms = synonyms if style != "abbreviated" else [abbreviation]
    return ([_fill(t, s, abbreviation) for t in positive for s in terms],
            [_fill(t, s, abbreviation) for t in negative for s in terms])


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); NaN if one class."""
    scores, positive = np.asarray(scores, dtype=float), np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=float)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at every distinct threshold, from (0, 0)."""
    scores, positive = np.asarray(scores, dtype=float), np.asarray(positive, dtype=bool)
    order = np.argsort(-scores, kind="mergesort")
    tp = np.cumsum(positive[order])
    fp = np.cumsum(~positive[order])
    last = np.r_[np.diff(scores[order]) != 0, True]  # one point per distinct threshold
    tpr = np.r_[0.0, tp[last] / max(int(positive.sum()), 1)]
    fpr = np.r_[0.0, fp[last] / max(int((~positive).sum()), 1)]
    return fpr, tpr


def _class_vector(vectors: np.ndarray) -> np.ndarray:
    mean = vectors.mean(axis=0)
    return mean / max(float(np.linalg.norm(mean)), 1e-12)


def zero_shot(image_emb: np.ndarray, labels: np.ndarray, observations: list[str],
              embed_texts: Callable[[list[str]], np.ndarray]) -> dict:
    """AUC per observation and style (+ ensemble), ROC curves and scores of the ensemble.

    `labels` is the labeler matrix of the true reports ([N, n_obs]; 1 / 0 / -1 / NaN). Uncertain
    (-1) studies are left out of that observation's AUC; not-mentioned counts as negative.
    Returns {"auc": {obs: {style: auc}}, "roc": {obs: (fpr, tpr)}, "n_positive": {obs: n}}.
    """
    image_emb = np.asarray(image_emb, dtype=np.float32)
    wanted = [o for o in observations if o.lower() not in SKIPPED]
    # Embed every prompt once, in a fixed order.
    catalogue: list[str] = []
    for obs in wanted:
        for style in STYLES:
            positive, negative = prompts_for(obs, style)
            catalogue += positive + negative
    unique = list(dict.fromkeys(catalogue))
    vectors = dict(zip(unique, np.asarray(embed_texts(unique), dtype=np.float32))) if unique else {}

    auc: dict[str, dict[str, float]] = {}
    roc: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    n_positive: dict[str, int] = {}
    for obs in wanted:
        column = labels[:, observations.index(obs)]
        keep = column != -1  # NaN != -1 is True: not mentioned = negative
        truth = np.nan_to_num(column[keep], nan=0.0) == 1.0
        n_positive[obs] = int(truth.sum())
        if truth.all() or not truth.any():
            continue
        per_style, all_pos, all_neg = {}, [], []
        for style in STYLES:
            positive, negative = prompts_for(obs, style)
            pos = np.stack([vectors[p] for p in positive])
            neg = np.stack([vectors[p] for p in negative])
            all_pos.append(pos)
            all_neg.append(neg)
            score = image_emb[keep] @ _class_vector(pos) - image_emb[keep] @ _class_vector(neg)
            per_style[style] = roc_auc(score, truth)
        score = (image_emb[keep] @ _class_vector(np.concatenate(all_pos))
                 - image_emb[keep] @ _class_vector(np.concatenate(all_neg)))
        per_style["ensemble"] = roc_auc(score, truth)
        auc[obs] = per_style
        roc[obs] = roc_curve(score, truth)
    return {"auc": auc, "roc": roc, "n_positive": n_positive}
