"""Tiny end-to-end CLIP training runs (resnet10t at 32 px): learning, determinism, clamping."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from cxr_assets.clip.data import CachedPairDataset
from cxr_assets.clip.schedule import lr_multiplier, param_groups
from cxr_assets.clip.train import evaluate_loss, train_clip
from cxr_assets.config import ClipParams

N_TRAIN, N_VAL, TEXT_DIM = 16, 8, 24


@pytest.fixture
def pairs(png_factory):
    rng = np.random.default_rng(0)
    labels = np.arange(N_TRAIN + N_VAL) % 4
    paths = png_factory(labels, size=32)
    centres = rng.normal(size=(4, TEXT_DIM))
    texts = (centres[labels] + 0.2 * rng.normal(size=(len(labels), TEXT_DIM))).astype(np.float32)
    return paths[:N_TRAIN], texts[:N_TRAIN], paths[N_TRAIN:], texts[N_TRAIN:]


def _params(**overrides) -> ClipParams:
    values = {
        "vision_backbone": "resnet10t",
        "image_size": 32,
        "embed_dim": 16,
        "epochs": 4,
        "batch_size": 8,
        "lr": 3e-3,
        "warmup_steps": 1,
        "threads": 1,
    }
    values.update(overrides)
    return ClipParams(**values)


def _run(pairs, seed=0, **overrides):
    return train_clip(
        *pairs, params=_params(**overrides), text_encoder_hash="h1", seed=seed, progress=False
    )


def test_training_learns_and_keeps_best_validation_weights(pairs):
    logged = []
    result = train_clip(
        *pairs,
        params=_params(),
        text_encoder_hash="h1",
        seed=0,
        progress=False,
        log_fn=lambda step, metrics: logged.append((step, metrics)),
    )
    history = result.history
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert result.steps == 4 * (N_TRAIN // 8)
    for row in history:
        assert set(row) >= {
            "epoch",
            "train_loss",
            "val_loss",
            "logit_scale",
            "seconds",
            "data_wait_fraction",
        }
        assert 0.0 <= row["data_wait_fraction"] <= 1.0
    val_losses = [row["val_loss"] for row in history]
    assert result.best_val_loss == pytest.approx(min(val_losses))
    assert result.best_epoch == 1 + int(np.argmin(val_losses))
    # The returned model carries the best epoch's weights, not the last epoch's.
    loader = DataLoader(CachedPairDataset(pairs[2], pairs[3], 32), batch_size=8)
    assert evaluate_loss(result.model, loader, torch.device("cpu")) == pytest.approx(
        result.best_val_loss, rel=1e-5
    )
    assert result.model.config.text_encoder_hash == "h1"
    assert result.model.config.text_dim == TEXT_DIM
    assert not result.model.training
    steps = [step for step, metrics in logged if "train_loss" in metrics]
    assert steps == list(range(1, result.steps + 1))
    assert any("epoch_val_loss" in metrics for _, metrics in logged)


def test_same_seed_gives_identical_weights(pairs):
    first = _run(pairs, seed=11, epochs=2).model.state_dict()
    second = _run(pairs, seed=11, epochs=2).model.state_dict()
    other = _run(pairs, seed=12, epochs=2).model.state_dict()
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key
    assert any(not torch.equal(first[k], other[k]) for k in first if first[k].is_floating_point())


def test_logit_scale_stays_clamped(pairs, monkeypatch):
    # From a random init the loss pushes the scale down; starting at the floor (0) it must be
    # clamped back every step.
    settings = {"epochs": 2, "lr": 0.05, "init_logit_scale": 0.0, "max_logit_scale": 1.0}
    result = _run(pairs, **settings)
    assert all(0.0 <= row["logit_scale"] <= 1.0 for row in result.history)
    assert 0.0 <= result.model.logit_scale.item() <= 1.0
    # Without the clamp the same run leaves [0, max]: the check above can fail.
    from cxr_assets.clip.model import DualTowerClip

    monkeypatch.setattr(DualTowerClip, "clamp_logit_scale_", lambda self: None)
    unclamped = _run(pairs, **settings)
    assert min(row["logit_scale"] for row in unclamped.history) < 0.0


def test_no_validation_falls_back_to_training_loss(pairs):
    result = train_clip(
        pairs[0],
        pairs[1],
        [],
        np.zeros((0, TEXT_DIM), np.float32),
        params=_params(epochs=1),
        text_encoder_hash="",
        seed=0,
        progress=False,
    )
    assert math.isnan(result.best_val_loss) and result.best_epoch == 1


def test_bad_inputs_are_named(pairs):
    train_paths, train_text, val_paths, val_text = pairs
    with pytest.raises(ValueError, match="train_images has 16 paths but train_text_emb has 15"):
        train_clip(train_paths, train_text[:15], val_paths, val_text, _params(), "", 0, False)
    with pytest.raises(ValueError, match="val_text_emb dim"):
        train_clip(train_paths, train_text, val_paths, val_text[:, :5], _params(), "", 0, False)


def test_schedule_and_parameter_groups():
    assert lr_multiplier(0, 4, 20) == pytest.approx(0.25)
    assert lr_multiplier(3, 4, 20) == pytest.approx(1.0)
    assert lr_multiplier(4, 4, 20) == pytest.approx(1.0)
    assert lr_multiplier(12, 4, 20) == pytest.approx(0.5)
    assert lr_multiplier(20, 4, 20) == pytest.approx(0.0)

    from cxr_assets.clip.model import ClipModelConfig, DualTowerClip

    model = DualTowerClip(ClipModelConfig("resnet10t", 32, 8, 4, 2.0, 4.0))
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert "logit_scale" in no_decay_names
    assert "text_adapter.norm.weight" in no_decay_names and "visual_proj.bias" in no_decay_names
    assert all(p.ndim >= 2 for p in decay["params"]) and decay["weight_decay"] == 0.05
    assert no_decay["weight_decay"] == 0.0
