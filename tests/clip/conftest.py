"""Shared fixtures for the CLIP / vision / retrieval tests: one thread, tiny synthetic PNGs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def write_pngs(directory: Path, labels: np.ndarray, size: int, seed: int = 0) -> list[Path]:
    """Grayscale PNGs whose bright quadrant encodes `labels[i] % 4`, plus noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    half = size // 2
    paths = []
    for i, label in enumerate(labels):
        pixels = rng.integers(0, 60, (size, size)).astype(np.uint8)
        row, col = divmod(int(label) % 4, 2)
        pixels[row * half : (row + 1) * half, col * half : (col + 1) * half] += 150
        path = directory / f"img_{i:03d}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def png_factory(tmp_path):
    def make(labels, size: int = 32, seed: int = 0, name: str = "images") -> list[Path]:
        return write_pngs(tmp_path / name, np.asarray(labels), size, seed)

    return make
