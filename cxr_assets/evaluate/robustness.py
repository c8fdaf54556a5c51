"""Robustness: metrics by report style, bootstrap confidence intervals, 5x200-style subsets.

Style groups come from report_profile (impression-only vs full report, abbreviation-heavy vs
light, one group per source/institution). A group's retrieval metrics use the ranks each of its
queries got in the *full* test pool, so groups are comparable with each other and with the
headline numbers (a small group is not made easier by a smaller candidate pool).
"""

from __future__ import annotations

import numpy as np
import polars as pl


def style_groups(study_ids: list[str], profile: pl.DataFrame | None, abbreviation_heavy: float,
                 min_size: int = 1) -> dict[str, np.ndarray]:
    """Boolean masks over `study_ids`, one per report-style group with at least `min_size` studies."""
    if profile is None:
        return {}
    frame = pl.DataFrame({"study_id": study_ids}).join(profile, on="study_id", how="left")
    groups: dict[str, np.ndarray] = {}
    if "impression_only" in frame.columns:
        only = frame["impression_only"].fill_null(False).to_numpy().astype(bool)
        groups["impression_only"], groups["full_report"] = only, ~only
    if "abbreviation_density" in frame.columns:
        density = frame["abbreviation_density"].fill_null(0.0).to_numpy()
        groups["abbreviation_heavy"] = density >= abbreviation_heavy
        groups["abbreviation_light"] = density < abbreviation_heavy
    for column in ("source", "institution"):
        if column in frame.columns:
            values = frame[column].fill_null("unknown").cast(pl.Utf8).to_numpy()
            for value in sorted(set(values.tolist())):
                groups[f"{column}={value}"] = values == value
    return {name: mask for name, mask in groups.items() if int(mask.sum()) >= min_size}


def per_query_hits(i2t: np.ndarray, t2i: np.ndarray, ks: list[int]) -> dict[str, np.ndarray]:
    """Per-query indicators whose means are the recall metrics (and mean_recall)."""
    columns = {f"{name}_R@{k}": (ranks <= k).astype(float)
               for name, ranks in (("i2t", i2t), ("t2i", t2i)) for k in ks}
    columns["mean_recall"] = np.mean(np.stack(list(columns.values())), axis=0)
    return columns


def group_breakdown(columns: dict[str, np.ndarray], groups: dict[str, np.ndarray]) -> pl.DataFrame:
    """One row per group: its size and the mean of every per-query column."""
    rows = []
    for name, mask in groups.items():
        row = {"group": name, "n": int(mask.sum())}
        row |= {key: float(values[mask].mean()) for key, values in columns.items()}
        rows.append(row)
    return pl.DataFrame(rows) if rows else pl.DataFrame({"group": [], "n": []})


def bootstrap_ci(columns: dict[str, np.ndarray], samples: int, seed: int,
                 level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap CI of the mean of each per-query column (queries resampled jointly)."""
    if samples <= 0 or not columns:
        return {}
    n = len(next(iter(columns.values())))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(samples, n))
    alpha = (1 - level) / 2
    out = {}
    for key, values in columns.items():
        means = np.asarray(values, dtype=float)[idx].mean(axis=1)
        out[key] = (float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha)))
    return out


def five_by_n_subset(labels: np.ndarray, observations: list[str], findings: list[str],
                     per_finding: int, seed: int) -> tuple[np.ndarray, dict[str, int]]:
    """CheXpert-5x200-style subset: per finding, up to `per_finding` studies positive for that
    finding and for none of the other listed findings, drawn with a fixed seed.

    Returns (sorted row indices, studies drawn per finding). Findings the labeler does not know
    raise, because a silently smaller subset would not be the one asked for.
    """
    unknown = [f for f in findings if f not in observations]
    if unknown:
        raise ValueError(f"subset findings {unknown} are not labeler observations {observations}")
    positive = np.nan_to_num(labels[:, [observations.index(f) for f in findings]], nan=0.0) == 1.0
    exclusive = positive & (positive.sum(axis=1, keepdims=True) == 1)
    rng = np.random.default_rng(seed)
    chosen, counts = [], {}
    for j, finding in enumerate(findings):
        candidates = np.flatnonzero(exclusive[:, j])
        take = min(per_finding, len(candidates))
        picked = rng.choice(candidates, size=take, replace=False) if take else np.array([], dtype=int)
        chosen.append(picked)
        counts[finding] = int(take)
    return np.sort(np.concatenate(chosen).astype(int)), counts
