"""CLIP loss against a naive reference; model towers, logit-scale clamp, save/load round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cxr_assets.clip.loss import clip_loss
from cxr_assets.clip.model import (
    ClipModelConfig,
    DualTowerClip,
    load_clip_model,
    save_clip_model,
)
from cxr_assets.embed.images import embed_images, embed_texts


def _naive_loss(img: torch.Tensor, txt: torch.Tensor, log_scale: float) -> float:
    s = math.exp(log_scale)
    n = img.shape[0]
    sim = [[s * float(img[i] @ txt[j]) for j in range(n)] for i in range(n)]
    rows = [-(sim[i][i] - math.log(sum(math.exp(v) for v in sim[i]))) for i in range(n)]
    cols = [-(sim[j][j] - math.log(sum(math.exp(sim[i][j]) for i in range(n)))) for j in range(n)]
    return 0.5 * (sum(rows) / n + sum(cols) / n)


def _config(**overrides) -> ClipModelConfig:
    values = {
        "vision_backbone": "resnet10t",
        "image_size": 32,
        "text_dim": 16,
        "embed_dim": 8,
        "init_logit_scale": 2.6592,
        "max_logit_scale": 4.6052,
        "text_encoder_hash": "abc123",
    }
    values.update(overrides)
    return ClipModelConfig(**values)


def test_clip_loss_matches_naive_reference_and_is_symmetric():
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(5, 7, generator=g, dtype=torch.float64), dim=-1)
    txt = F.normalize(torch.randn(5, 7, generator=g, dtype=torch.float64), dim=-1)
    scale = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    loss = clip_loss(img, txt, scale)
    assert loss.item() == pytest.approx(_naive_loss(img, txt, 1.3), rel=1e-10)
    assert clip_loss(txt, img, scale).item() == pytest.approx(loss.item(), rel=1e-12)
    loss.backward()
    assert scale.grad is not None and scale.grad.item() != 0.0


def test_clip_loss_rewards_matching_pairs_and_checks_shapes():
    eye = torch.eye(4)
    assert clip_loss(eye, eye, 4.0) < clip_loss(eye, eye.roll(1, dims=0), 4.0)
    with pytest.raises(ValueError, match="same shape"):
        clip_loss(torch.zeros(3, 4), torch.zeros(2, 4), 1.0)


def test_config_validation():
    with pytest.raises(ValueError, match="init_logit_scale"):
        _config(init_logit_scale=5.0, max_logit_scale=4.0)
    with pytest.raises(ValueError, match="embed_dim"):
        _config(embed_dim=0)


def test_towers_are_normalized_and_logit_scale_is_clamped():
    torch.manual_seed(0)
    model = DualTowerClip(_config()).eval()
    with torch.no_grad():
        image_f, text_f, scale = model(torch.randn(3, 1, 32, 32), torch.randn(3, 16))
    assert image_f.shape == (3, 8) and text_f.shape == (3, 8)
    torch.testing.assert_close(image_f.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(text_f.norm(dim=-1), torch.ones(3))
    assert scale.item() == pytest.approx(2.6592)
    with torch.no_grad():
        model.logit_scale.fill_(9.0)
    model.clamp_logit_scale_()
    assert model.logit_scale.item() == pytest.approx(4.6052)
    with torch.no_grad():
        model.logit_scale.fill_(-1.0)
    model.clamp_logit_scale_()
    assert model.logit_scale.item() == 0.0
    with pytest.raises(ValueError, match=r"\[B, 16\]"):
        model.encode_text(torch.zeros(2, 15))
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        model.encode_image(torch.zeros(2, 3, 32, 32))


def test_save_load_round_trip_reproduces_embeddings(tmp_path, png_factory):
    torch.manual_seed(0)
    model = DualTowerClip(_config())
    # Move BatchNorm running statistics away from their init so the round trip must carry them.
    model.train()
    with torch.no_grad():
        model.encode_image(torch.randn(4, 1, 32, 32) * 3 + 1)
        model.logit_scale.fill_(3.1)
    paths = png_factory([0, 1, 2, 3, 1])
    texts = np.random.default_rng(0).normal(size=(5, 16)).astype(np.float32)
    before_img = embed_images(model, paths, batch_size=2, progress=False)
    before_txt = embed_texts(model, texts, batch_size=3)

    save_clip_model(model, tmp_path / "clip")
    assert (tmp_path / "clip" / "model.safetensors").is_file()
    assert (tmp_path / "clip" / "clip_config.json").is_file()
    loaded = load_clip_model(tmp_path / "clip")
    assert not loaded.training
    assert loaded.config == model.config and loaded.config.text_encoder_hash == "abc123"
    assert loaded.logit_scale.item() == pytest.approx(3.1)
    after_img = embed_images(loaded, paths, batch_size=2, progress=False)
    np.testing.assert_array_equal(after_img, before_img)
    np.testing.assert_array_equal(embed_texts(loaded, texts, batch_size=3), before_txt)
    assert before_img.dtype == np.float32 and before_img.shape == (5, 8)
    np.testing.assert_allclose(np.linalg.norm(before_img, axis=1), 1.0, rtol=1e-5)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="clip_config.json"):
        load_clip_model(tmp_path)
