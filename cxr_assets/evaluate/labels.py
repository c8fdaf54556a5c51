"""Access to the report labeler (`cxr_assets.reports.labeler`), imported lazily.

The labeler turns report texts into one Float64 column per CheXpert-style observation
(1 positive, 0 negative, -1 uncertain, null not mentioned). Metrics that need labels (label F1
of retrieved reports, zero-shot AUC, the 5x200 subset) are skipped with a note when it is absent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl


@dataclass(frozen=True)
class Labeler:
    observations: tuple[str, ...]
    label_reports: Callable[[list[str]], pl.DataFrame]

    def matrix(self, texts: list[str]) -> np.ndarray:
        """[N, n_observations] float array: 1 / 0 / -1, NaN where not mentioned."""
        frame = self.label_reports(list(texts))
        missing = [o for o in self.observations if o not in frame.columns]
        if missing:
            raise ValueError(f"labeler output lacks observation columns {missing}")
        if frame.height != len(texts):
            raise ValueError(f"labeler returned {frame.height} rows for {len(texts)} reports")
        return frame.select(self.observations).cast(pl.Float64).fill_null(float("nan")).to_numpy()


def load_labeler() -> tuple[Labeler | None, str]:
    """The project labeler, or None with the reason it is unavailable."""
    try:
        from cxr_assets.reports import labeler as module
    except ImportError as error:
        return None, f"report labeler unavailable ({error}); label-based metrics skipped"
    observations = getattr(module, "CHEXPERT_OBSERVATIONS", None)
    function = getattr(module, "label_reports", None)
    if observations is None or function is None:
        return None, "cxr_assets.reports.labeler lacks CHEXPERT_OBSERVATIONS / label_reports; skipped"
    return Labeler(tuple(observations), function), "cxr_assets.reports.labeler"


def positive_mask(labels: np.ndarray) -> np.ndarray:
    """Positive = labeled 1. Uncertain (-1) counts as not positive (the 'U-zeros' policy)."""
    return np.nan_to_num(labels, nan=0.0) == 1.0
