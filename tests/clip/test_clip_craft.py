"""Training-craft options of the CLIP trainer: precision, EMA, layer-wise lr decay, loss kinds,
spawned data-loader workers, model options (MLP adapter, replicated channels), checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cxr_assets.clip.data import epoch_order
from cxr_assets.clip.model import ClipModelConfig, DualTowerClip, load_clip_model, save_clip_model
from cxr_assets.clip.schedule import param_groups
from cxr_assets.clip.train import train_clip
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


def _run(pairs, seed=0, log_fn=None, **overrides):
    values = {"vision_backbone": "resnet10t", "image_size": 32, "embed_dim": 16, "epochs": 3,
              "batch_size": 8, "lr": 3e-3, "warmup_steps": 1, "threads": 1, "device": "cpu"}
    values.update(overrides)
    return train_clip(*pairs, params=ClipParams(**values), text_encoder_hash="h", seed=seed,
                      progress=False, log_fn=log_fn)


@pytest.mark.parametrize("loss", ["siglip", "reference"])
def test_other_losses_train_and_save(pairs, loss, tmp_path):
    result = _run(pairs, loss=loss)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert all(math.isfinite(r["val_loss"]) for r in result.history)
    save_clip_model(result.model, tmp_path / "m")
    again = load_clip_model(tmp_path / "m")
    assert again.config.loss == loss and hasattr(again, "logit_bias") == (loss == "siglip")
    images = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(again.encode_image(images), result.model.encode_image(images))
    # Retrieval embeddings are unit vectors in every mode, including the raw-scale one.
    assert torch.allclose(again.encode_image(images).norm(dim=-1), torch.ones(2), atol=1e-5)


def test_reference_mode_uses_raw_scale_and_unnormalized_features():
    model = DualTowerClip(ClipModelConfig("resnet10t", 32, TEXT_DIM, 16, 2.0, 4.6, loss="reference"))
    assert model.logit_scale.item() == pytest.approx(math.exp(2.0))
    feats = model.loss_text(torch.randn(3, TEXT_DIM))
    assert not torch.allclose(feats.norm(dim=-1), torch.ones(3))
    with torch.no_grad():
        model.logit_scale.fill_(500.0)
    model.clamp_logit_scale_()
    assert model.logit_scale.item() == pytest.approx(math.exp(4.6), rel=1e-5)


def test_bf16_autocast_trains_on_cpu(pairs):
    fp32 = _run(pairs, epochs=2)
    bf16 = _run(pairs, epochs=2, precision="bf16")
    assert bf16.history[-1]["train_loss"] < bf16.history[0]["train_loss"] + 0.2
    assert all(math.isfinite(r["train_loss"]) for r in bf16.history)
    # bf16 really ran: the losses differ from fp32 (not bit-identical), but stay close.
    assert bf16.history[0]["train_loss"] != fp32.history[0]["train_loss"]
    assert bf16.history[0]["train_loss"] == pytest.approx(fp32.history[0]["train_loss"], rel=0.05)
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        _run(pairs, epochs=1, precision="fp16")


def test_ema_weights_are_returned_and_differ_from_raw(pairs):
    plain = _run(pairs, epochs=2)
    ema = _run(pairs, epochs=2, ema_decay=0.9)
    # Same optimization trajectory; the returned weights are the EMA's, hence different.
    assert ema.history[0]["train_loss"] == pytest.approx(plain.history[0]["train_loss"], rel=1e-6)
    diffs = [not torch.equal(ema.model.state_dict()[k], plain.model.state_dict()[k])
             for k in plain.model.state_dict() if k.endswith("weight")]
    assert any(diffs)


def test_layer_decay_scales_backbone_lr_by_depth():
    model = DualTowerClip(ClipModelConfig("test_vit", 32, TEXT_DIM, 16, 2.0, 4.6))
    groups = param_groups(model, 0.05, layer_decay=0.5)
    names = {id(p): n for n, p in model.named_parameters()}
    scale_of = {names[id(p)]: g["lr_scale"] for g in groups for p in g["params"]}
    assert scale_of["visual_proj.weight"] == 1.0 and scale_of["logit_scale"] == 1.0
    assert scale_of["visual.patch_embed.proj.weight"] < scale_of["visual.blocks.0.attn.qkv.weight"]
    assert scale_of["visual.blocks.0.attn.qkv.weight"] < scale_of["visual.blocks.1.attn.qkv.weight"]
    assert all(g["weight_decay"] in (0.0, 0.05) for g in groups)


def test_mlp_adapter_and_replicated_channels():
    model = DualTowerClip(ClipModelConfig("resnet10t", 32, TEXT_DIM, 16, 2.0, 4.6,
                                          text_adapter="mlp", adapter_blocks=3, in_chans=3))
    assert len(model.text_adapter.blocks) == 3
    first_conv = next(v for v in model.visual.state_dict().values() if v.ndim == 4)
    assert first_conv.shape[1] == 3
    out = model.encode_image(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, 16)


def test_data_order_is_a_permutation_per_epoch():
    a, b = epoch_order(10, 1, 0), epoch_order(10, 1, 1)
    assert sorted(a.tolist()) == list(range(10)) and not torch.equal(a, b)
    assert torch.equal(a, epoch_order(10, 1, 0))


@pytest.mark.slow
def test_spawned_workers_give_the_same_run_and_wait_fraction_is_logged(pairs):
    logged = []
    inline = _run(pairs, epochs=1)
    spawned = _run(pairs, epochs=1, workers=2, log_fn=lambda s, m: logged.append(m))
    for key, value in inline.model.state_dict().items():
        assert torch.equal(value, spawned.model.state_dict()[key]), key
    steps = [m for m in logged if "train_loss" in m]
    assert steps and all(0.0 <= m["data_wait_fraction"] <= 1.0 for m in steps)
    assert 0.0 <= spawned.history[0]["data_wait_fraction"] <= 1.0
