"""Image<->report retrieval metrics (METHOD_NOTES 5.1).

One similarity matrix S[i, j] = image_i . text_j over the whole pool (anchors == candidates).
Image->report ranks use rows, report->image ranks use columns. The reference ("diagonal")
protocol counts only the paired item as correct: rank = 1 + #(S[i, :] > S[i, i]), so ties count
in the query's favour. Because many reports are word-for-word identical (e.g. normal studies),
a second "grp_" protocol also accepts any candidate whose report text is identical.

S is processed in row blocks so memory stays bounded for large pools; both passes see the
same blocks, hence the same float values, for rows and columns.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

_BLOCK_ELEMENTS = 1 << 24  # ~64 MB of float32 similarities per block


def _check_embeddings(image_emb: np.ndarray, text_emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(image_emb, dtype=np.float32)
    text = np.asarray(text_emb, dtype=np.float32)
    if image.ndim != 2 or text.ndim != 2:
        raise ValueError(
            f"image_emb and text_emb must be 2-D, got shapes {image.shape} and {text.shape}"
        )
    if image.shape != text.shape:
        raise ValueError(
            f"image_emb {image.shape} and text_emb {text.shape} must pair row for row (same shape)"
        )
    if image.shape[0] == 0:
        raise ValueError("retrieval needs at least one (image, report) pair, got 0")
    if not (np.isfinite(image).all() and np.isfinite(text).all()):
        raise ValueError("image_emb / text_emb contain NaN or inf")
    return image, text


def _group_ids(text_groups: np.ndarray | None, n: int) -> np.ndarray:
    if text_groups is None:
        return np.arange(n)
    groups = np.asarray(text_groups)
    if groups.shape != (n,):
        raise ValueError(f"text_groups must have shape ({n},), got {groups.shape}")
    # Integer codes make the equality masks cheap whatever the id type (str hashes, ints).
    return np.unique(groups, return_inverse=True)[1].reshape(n)


def _ranks(
    image: np.ndarray, text: np.ndarray, groups: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """1-based ranks of the best correct candidate; correct = same group id (diagonal if arange)."""
    n = image.shape[0]
    rows = max(1, _BLOCK_ELEMENTS // n)
    blocks = [(r0, min(n, r0 + rows)) for r0 in range(0, n, rows)]
    cache: dict[int, np.ndarray] = {}

    def block_sim(r0: int, r1: int) -> np.ndarray:
        if r0 in cache:
            return cache[r0]
        sim = image[r0:r1] @ text.T
        if len(blocks) == 1:
            cache[r0] = sim
        return sim

    row_best = np.empty(n, dtype=np.float32)
    col_best = np.full(n, -np.inf, dtype=np.float32)
    for r0, r1 in blocks:
        sim = block_sim(r0, r1)
        correct = groups[r0:r1, None] == groups[None, :]
        masked = np.where(correct, sim, -np.inf)
        row_best[r0:r1] = masked.max(axis=1)
        np.maximum(col_best, masked.max(axis=0), out=col_best)

    i2t = np.ones(n, dtype=np.int64)
    t2i = np.ones(n, dtype=np.int64)
    for r0, r1 in blocks:
        sim = block_sim(r0, r1)
        wrong = groups[r0:r1, None] != groups[None, :]
        i2t[r0:r1] += ((sim > row_best[r0:r1, None]) & wrong).sum(axis=1)
        t2i += ((sim > col_best[None, :]) & wrong).sum(axis=0)
    return i2t, t2i


def per_query_ranks(image_emb: np.ndarray, text_emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Diagonal-protocol 1-based ranks: (image->report per image, report->image per report)."""
    image, text = _check_embeddings(image_emb, text_emb)
    return _ranks(image, text, np.arange(image.shape[0]))


def _check_ks(ks: Iterable[int]) -> list[int]:
    values = [int(k) for k in ks]
    if not values or any(k < 1 for k in values):
        raise ValueError(f"ks must be a non-empty list of positive ints, got {list(ks)}")
    return values


def _summarize(i2t: np.ndarray, t2i: np.ndarray, ks: list[int], prefix: str) -> dict[str, float]:
    out: dict[str, float] = {}
    recalls = []
    for name, ranks in (("i2t", i2t), ("t2i", t2i)):
        for k in ks:
            value = float(np.mean(ranks <= k))
            out[f"{prefix}{name}_R@{k}"] = value
            recalls.append(value)
        out[f"{prefix}{name}_mean_rank"] = float(np.mean(ranks))
        out[f"{prefix}{name}_median_rank"] = float(np.median(ranks))
    out[f"{prefix}mean_recall"] = float(np.mean(recalls))
    return out


def retrieval_metrics(
    image_emb: np.ndarray,
    text_emb: np.ndarray,
    ks: Iterable[int] = (1, 5, 10),
    text_groups: np.ndarray | None = None,
) -> dict[str, float]:
    """Recall@K, mean and median rank for both directions, plus `mean_recall` over all of them.

    Similarity is the plain dot product, so pass L2-normalized embeddings for cosine.
    With `text_groups` (one id per row; equal ids = identical report text) the same metrics
    under the "any identical text counts" protocol are added with the prefix "grp_".
    """
    image, text = _check_embeddings(image_emb, text_emb)
    k_list = _check_ks(ks)
    n = image.shape[0]
    metrics = {"n_pairs": float(n)}
    metrics |= _summarize(*_ranks(image, text, np.arange(n)), k_list, prefix="")
    if text_groups is not None:
        groups = _group_ids(text_groups, n)
        metrics |= _summarize(*_ranks(image, text, groups), k_list, prefix="grp_")
    return metrics
