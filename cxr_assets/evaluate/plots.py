"""Evaluation and training plots, rendered off-screen (Agg canvas, no global backend switch)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

_DIRECTION_LABELS = {"i2t": "image \u2192 report", "t2i": "report \u2192 image"}


def _new_figure(width: float = 6.4, height: float = 4.2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=120, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure, out_png: Path) -> Path:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, format="png")
    return out


def plot_recall_curve(
    ranks_by_direction: dict[str, np.ndarray], out_png: Path, max_k: int = 50
) -> Path:
    """Recall@K for K = 1..max_k, one line per direction (e.g. {"i2t": ranks, "t2i": ranks})."""
    if not ranks_by_direction:
        raise ValueError("plot_recall_curve needs at least one direction of ranks")
    if max_k < 1:
        raise ValueError(f"max_k must be >= 1, got {max_k}")
    figure = _new_figure()
    axes = figure.add_subplot()
    ks = np.arange(1, max_k + 1)
    for name, ranks in ranks_by_direction.items():
        values = np.asarray(ranks)
        if values.ndim != 1 or values.size == 0 or (values < 1).any():
            raise ValueError(f"ranks for {name!r} must be a non-empty 1-D array of 1-based ranks")
        recall = (values[None, :] <= ks[:, None]).mean(axis=1)
        axes.plot(ks, recall, label=f"{_DIRECTION_LABELS.get(name, name)} (n={values.size})")
    axes.set_xlabel("K (candidates retrieved)")
    axes.set_ylabel("Recall@K")
    axes.set_ylim(0.0, 1.02)
    axes.set_xlim(1, max_k)
    axes.set_title("Image\u2013report retrieval: Recall@K")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    return _save(figure, out_png)


def plot_training_curves(history: list[dict], out_png: Path) -> Path:
    """Train/val loss per epoch (left) and the learned logit scale (right)."""
    if not history:
        raise ValueError("plot_training_curves needs a non-empty history")
    missing = [key for key in ("epoch", "train_loss") if key not in history[0]]
    if missing:
        raise ValueError(f"history entries lack keys {missing}")
    epochs = [row["epoch"] for row in history]
    figure = _new_figure(width=9.6, height=4.0)
    loss_axes, scale_axes = figure.subplots(1, 2)
    loss_axes.plot(epochs, [row["train_loss"] for row in history], marker="o", label="train")
    val = [row.get("val_loss", math.nan) for row in history]
    if any(math.isfinite(v) for v in val):
        loss_axes.plot(epochs, val, marker="s", label="validation")
    loss_axes.set_xlabel("epoch")
    loss_axes.set_ylabel("CLIP loss (symmetric InfoNCE)")
    loss_axes.set_title("Contrastive loss")
    loss_axes.grid(alpha=0.3)
    loss_axes.legend()
    if "logit_scale" in history[0]:
        scale = [math.exp(row["logit_scale"]) for row in history]
        scale_axes.plot(epochs, scale, marker="o", color="tab:green")
    scale_axes.set_xlabel("epoch")
    scale_axes.set_ylabel("exp(logit_scale) = 1 / temperature")
    scale_axes.set_title("Learned temperature")
    scale_axes.grid(alpha=0.3)
    figure.suptitle("CLIP training curves")
    return _save(figure, out_png)
