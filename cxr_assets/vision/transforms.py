"""Image loading and augmentation for cached grayscale CXR PNGs.

Images are kept single-channel end to end (the backbone is built with in_chans=1), normalized
with a fixed (x - 0.5) / 0.25 so that a cached pixel value maps to the same input everywhere.
Augmentation runs on whole batches with one affine resample, which keeps CPU training fast,
and draws every random number from an explicit generator so runs are reproducible.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

MEAN = 0.5
STD = 0.25
CROP_SCALE = (0.9, 1.0)  # area fraction kept by the random resized crop (reference: 0.9-1.0)
CROP_RATIO = (0.95, 1.05)  # aspect ratio jitter, kept near 1 for square CXRs
MAX_ROTATION_DEG = 5.0
BRIGHTNESS = 0.1  # multiplicative factor drawn in [1 - b, 1 + b]
CONTRAST = 0.1


def normalize_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """[0, 1] intensities -> model input."""
    return (pixels - MEAN) / STD


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """Model input -> [0, 1] intensities."""
    return x * STD + MEAN


def _to_unit_array(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                # 16-bit caches (ingest.cache_bits=16) are stored as uint16 PNGs.
                array = np.asarray(image, dtype=np.float32) / 65535.0
            else:
                array = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    except FileNotFoundError:
        raise FileNotFoundError(f"cached image not found: {path}") from None
    except OSError as error:
        raise ValueError(f"cannot read cached image {path}: {error}") from error
    return array


def _fit_square(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """Resize [1, H, W] keeping aspect ratio, then zero-pad (black) to [1, size, size]."""
    _, h, w = pixels.shape
    if h == size and w == size:
        return pixels
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resized = F.interpolate(
        pixels[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=True
    )[0]
    top, left = (size - nh) // 2, (size - nw) // 2
    return F.pad(resized, (left, size - nw - left, top, size - nh - top), value=0.0)


def load_cached_image(path: Path, size: int) -> torch.Tensor:
    """Read a cached grayscale PNG as a normalized float tensor [1, size, size]."""
    if size < 1:
        raise ValueError(f"image size must be positive, got {size}")
    pixels = torch.from_numpy(_to_unit_array(Path(path)))[None]
    return normalize_pixels(_fit_square(pixels, size).clamp_(0.0, 1.0))


def _uniform(generator: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)


def train_augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random resized crop (area 0.9-1.0), rotation (<= 5 deg), brightness/contrast jitter.

    `x` is one normalized image [C, H, W] or a batch [B, C, H, W]; each image gets its own
    parameters, all drawn from `generator` (a CPU generator), so equal seeds give equal output.
    """
    if x.ndim not in (3, 4):
        raise ValueError(f"train_augment expects [C,H,W] or [B,C,H,W], got shape {tuple(x.shape)}")
    single = x.ndim == 3
    batch = x[None] if single else x
    n = batch.shape[0]

    area = _uniform(generator, n, *CROP_SCALE)
    log_ratio = _uniform(generator, n, math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]))
    ratio = torch.exp(log_ratio)
    # Crop half-extents in normalized [-1, 1] coordinates; capped at 1 so the crop stays inside.
    sx = torch.sqrt(area * ratio).clamp(max=1.0)
    sy = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (1.0 - sx) * _uniform(generator, n, -1.0, 1.0)
    cy = (1.0 - sy) * _uniform(generator, n, -1.0, 1.0)
    angle = torch.deg2rad(_uniform(generator, n, -MAX_ROTATION_DEG, MAX_ROTATION_DEG))
    brightness = _uniform(generator, n, 1.0 - BRIGHTNESS, 1.0 + BRIGHTNESS)
    contrast = _uniform(generator, n, 1.0 - CONTRAST, 1.0 + CONTRAST)

    # Output coords -> input coords: rotate, then scale to the crop, then shift to its centre.
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [
            torch.stack([sx * cos, -sx * sin, cx], dim=1),
            torch.stack([sy * sin, sy * cos, cy], dim=1),
        ],
        dim=1,
    ).to(device=batch.device, dtype=batch.dtype)

    # Resample in [0, 1] pixel space so areas uncovered by the rotation fill with black,
    # matching the letterbox padding of the cache.
    pixels = denormalize(batch)
    grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
    pixels = F.grid_sample(pixels, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    b = brightness.to(device=batch.device, dtype=batch.dtype).view(n, 1, 1, 1)
    c = contrast.to(device=batch.device, dtype=batch.dtype).view(n, 1, 1, 1)
    mean = pixels.mean(dim=(1, 2, 3), keepdim=True)
    pixels = ((pixels - mean) * c + mean) * b
    out = normalize_pixels(pixels.clamp(0.0, 1.0))
    return out[0] if single else out
