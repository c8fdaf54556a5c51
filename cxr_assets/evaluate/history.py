"""Dated re-evaluation reports over time: the latest earlier report and what dropped since.

Re-evaluation writes one folder per day (`<reevaluation_dir>/YYYY-MM-DD/metrics.json`); a
watched metric that fell by more than the tolerance against the latest earlier day is drift.
"""

from __future__ import annotations

import json
from pathlib import Path

WATCHED = ("mean_recall", "i2t_R@1", "t2i_R@1", "i2t_R@5", "t2i_R@5", "report/rouge_l",
           "report/f1_micro", "zeroshot/mean_auc")


def previous_metrics(root: Path, today: str) -> tuple[str, dict] | None:
    """(date, metrics) of the most recent report dated before `today`, if any."""
    earlier = sorted(d for d in root.glob("????-??-??") if d.name < today and (d / "metrics.json").exists())
    if not earlier:
        return None
    return earlier[-1].name, json.loads((earlier[-1] / "metrics.json").read_text())


def drift(current: dict, previous: dict, tolerance: float) -> dict[str, float]:
    """Watched metrics that dropped by more than `tolerance` (absolute): metric -> drop."""
    return {k: round(previous[k] - current[k], 6) for k in WATCHED
            if k in current and k in previous and previous[k] - current[k] > tolerance}
