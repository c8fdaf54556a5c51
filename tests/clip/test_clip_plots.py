"""Plots are written as real PNG files."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_assets.evaluate.plots import plot_recall_curve, plot_training_curves

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_recall_curve_png(tmp_path):
    ranks = {"i2t": np.array([1, 2, 5, 40]), "t2i": np.array([1, 1, 3, 9])}
    out = plot_recall_curve(ranks, tmp_path / "plots" / "recall.png", max_k=20)
    assert out == tmp_path / "plots" / "recall.png"
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5_000


def test_training_curves_png(tmp_path):
    history = [
        {"epoch": e, "train_loss": 3.0 / e, "val_loss": 3.2 / e, "logit_scale": 2.6 + 0.1 * e}
        for e in range(1, 5)
    ]
    out = plot_training_curves(history, tmp_path / "curves.png")
    assert out.read_bytes().startswith(PNG_MAGIC)


def test_plot_inputs_are_checked(tmp_path):
    with pytest.raises(ValueError, match="non-empty history"):
        plot_training_curves([], tmp_path / "x.png")
    with pytest.raises(ValueError, match="1-based ranks"):
        plot_recall_curve({"i2t": np.array([0, 1])}, tmp_path / "y.png")
