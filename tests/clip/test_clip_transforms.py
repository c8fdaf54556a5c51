"""Cached-image loading and training augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cxr_assets.vision.transforms import load_cached_image, train_augment


def test_load_normalizes_pixel_values(tmp_path):
    pixels = np.zeros((8, 8), dtype=np.uint8)
    pixels[0, 0], pixels[0, 1] = 255, 128
    path = tmp_path / "a.png"
    Image.fromarray(pixels).save(path)
    x = load_cached_image(path, 8)
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32
    assert x[0, 0, 0].item() == pytest.approx(2.0)  # (1 - 0.5) / 0.25
    assert x[0, 0, 1].item() == pytest.approx((128 / 255 - 0.5) / 0.25, abs=1e-6)
    assert x[0, 1, 1].item() == pytest.approx(-2.0)


def test_load_resizes_and_pads_non_square(tmp_path):
    path = tmp_path / "wide.png"
    Image.fromarray(np.full((10, 20), 255, dtype=np.uint8)).save(path)
    x = load_cached_image(path, 16)
    assert x.shape == (1, 16, 16)
    # 20x10 -> 16x8 white band centred vertically, black padding above and below.
    torch.testing.assert_close(x[0, 4:12], torch.full((8, 16), 2.0))
    torch.testing.assert_close(x[0, :4], torch.full((4, 16), -2.0))
    torch.testing.assert_close(x[0, 12:], torch.full((4, 16), -2.0))


def test_load_reports_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="cached image not found"):
        load_cached_image(tmp_path / "missing.png", 8)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read cached image"):
        load_cached_image(bad, 8)


def test_augment_is_deterministic_per_generator_and_keeps_shape():
    x = torch.randn(3, 1, 32, 32).clamp(-2, 2)
    a = train_augment(x, torch.Generator().manual_seed(5))
    b = train_augment(x, torch.Generator().manual_seed(5))
    c = train_augment(x, torch.Generator().manual_seed(6))
    assert a.shape == x.shape
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a, x)
    assert a.min() >= -2.0 - 1e-6 and a.max() <= 2.0 + 1e-6
    single = train_augment(x[0], torch.Generator().manual_seed(5))
    assert single.shape == (1, 32, 32)


def test_augment_is_mild():
    # A smooth image should stay close to itself: crop >= 0.9 area, rotation <= 5 degrees.
    ramp = torch.linspace(-1.5, 1.5, 64)
    x = (ramp[None, :] + ramp[:, None])[None, None] / 2
    out = train_augment(x, torch.Generator().manual_seed(0))
    centre = (slice(None), slice(None), slice(16, 48), slice(16, 48))
    assert (out[centre] - x[centre]).abs().mean() < 0.25


def test_augment_rejects_bad_shape():
    with pytest.raises(ValueError, match="train_augment expects"):
        train_augment(torch.zeros(32, 32), torch.Generator())
