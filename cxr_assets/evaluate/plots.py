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


def plot_roc_curves(roc: dict[str, tuple[np.ndarray, np.ndarray]], auc: dict[str, float],
                    out_png: Path) -> Path:
    """Zero-shot ROC per observation (prompt ensemble), AUC in the legend."""
    if not roc:
        raise ValueError("plot_roc_curves needs at least one observation")
    figure = _new_figure(width=6.4, height=5.2)
    axes = figure.add_subplot()
    for name, (fpr, tpr) in roc.items():
        axes.plot(fpr, tpr, label=f"{name} (AUC {auc.get(name, math.nan):.2f})")
    axes.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="chance")
    axes.set_xlabel("false positive rate")
    axes.set_ylabel("true positive rate")
    axes.set_title("Zero-shot classification: ROC per observation")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize=7)
    return _save(figure, out_png)


def plot_group_bars(groups: list[str], values: dict[str, list[float]], out_png: Path,
                    ylabel: str = "score", title: str = "Metrics by report style") -> Path:
    """Grouped bars: one group of bars per report style, one bar per metric."""
    if not groups or not values:
        raise ValueError("plot_group_bars needs groups and at least one metric")
    figure = _new_figure(width=max(6.4, 1.1 * len(groups) + 2), height=4.4)
    axes = figure.add_subplot()
    width = 0.8 / len(values)
    x = np.arange(len(groups))
    for i, (metric, series) in enumerate(values.items()):
        if len(series) != len(groups):
            raise ValueError(f"metric {metric!r} has {len(series)} values for {len(groups)} groups")
        axes.bar(x + i * width - 0.4 + width / 2, series, width=width, label=metric)
    axes.set_xticks(x, groups, rotation=20, ha="right", fontsize=8)
    axes.set_ylabel(ylabel)
    axes.set_ylim(0.0, 1.02)
    axes.set_title(title)
    axes.grid(alpha=0.3, axis="y")
    axes.legend(fontsize=8)
    return _save(figure, out_png)


def plot_prompt_sensitivity(auc: dict[str, dict[str, float]], out_png: Path) -> Path:
    """AUC per prompt style for each observation: the vertical spread is the prompt sensitivity."""
    if not auc:
        raise ValueError("plot_prompt_sensitivity needs AUCs for at least one observation")
    observations = list(auc)
    styles = sorted({s for per in auc.values() for s in per if s != "ensemble"})
    figure = _new_figure(width=max(6.4, 0.9 * len(observations) + 2), height=4.4)
    axes = figure.add_subplot()
    x = np.arange(len(observations))
    for i, style in enumerate(styles):
        values = [auc[o].get(style, math.nan) for o in observations]
        axes.scatter(x + (i - len(styles) / 2) * 0.08, values, label=style, s=22)
    axes.scatter(x, [auc[o].get("ensemble", math.nan) for o in observations], marker="_", s=300,
                 color="black", label="ensemble")
    axes.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    axes.set_xticks(x, observations, rotation=25, ha="right", fontsize=8)
    axes.set_ylabel("zero-shot AUC")
    axes.set_ylim(0.0, 1.02)
    axes.set_title("Prompt sensitivity: AUC per prompt style")
    axes.grid(alpha=0.3, axis="y")
    axes.legend(fontsize=7, loc="lower right")
    return _save(figure, out_png)


def plot_placeholder(message: str, out_png: Path) -> Path:
    """A figure that says why a plot is unavailable (DVC expects every declared plot file)."""
    figure = _new_figure(width=6.4, height=2.0)
    axes = figure.add_subplot()
    axes.axis("off")
    axes.text(0.5, 0.5, message, ha="center", va="center", wrap=True, fontsize=10)
    return _save(figure, out_png)
