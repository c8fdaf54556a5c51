"""Embed cached images and cached report embeddings into the joint CLIP space."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cxr_assets.clip.model import DualTowerClip
from cxr_assets.vision.transforms import load_cached_image


class _ImageFiles(Dataset):
    def __init__(self, paths: list[Path], size: int) -> None:
        self.paths = [Path(p) for p in paths]
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return load_cached_image(self.paths[index], self.size)


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def embed_images(
    model: DualTowerClip, image_paths: list[Path], batch_size: int = 64, progress: bool = True
) -> np.ndarray:
    """L2-normalized float32 image embeddings [N, embed_dim], in `image_paths` order."""
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out = np.zeros((len(image_paths), model.config.embed_dim), dtype=np.float32)
    if not image_paths:
        return out
    was_training = model.training
    model.eval()  # BatchNorm running stats, no dropout: embeddings must not depend on the batch
    device = _device_of(model)
    loader = DataLoader(
        _ImageFiles(image_paths, model.config.image_size), batch_size=batch_size, shuffle=False
    )
    row = 0
    try:
        for images in tqdm(loader, desc="embed images", disable=not progress, leave=False):
            features = model.encode_image(images.to(device)).float().cpu().numpy()
            out[row : row + len(features)] = features
            row += len(features)
    finally:
        model.train(was_training)
    return out


@torch.no_grad()
def embed_texts(
    model: DualTowerClip, text_embeddings: np.ndarray, batch_size: int = 1024
) -> np.ndarray:
    """Project cached report embeddings [N, text_dim] to L2-normalized float32 [N, embed_dim]."""
    if model.text_tower is not None:
        raise ValueError(
            "this CLIP model trained its text tower online (clip.text_tower=lora): cached report "
            "embeddings from the original encoder do not match it; use embed_reports(model, texts)"
        )
    array = np.asarray(text_embeddings)
    if array.ndim != 2 or array.shape[1] != model.config.text_dim:
        raise ValueError(
            f"text_embeddings must be [N, {model.config.text_dim}], got shape {array.shape}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    was_training = model.training
    model.eval()
    device = _device_of(model)
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    parts = []
    try:
        for start in range(0, len(tensor), batch_size):
            chunk = tensor[start : start + batch_size].to(device)
            parts.append(model.encode_text(chunk).float().cpu().numpy())
    finally:
        model.train(was_training)
    if not parts:
        return np.zeros((0, model.config.embed_dim), dtype=np.float32)
    return np.concatenate(parts).astype(np.float32, copy=False)


@torch.no_grad()
def embed_reports(
    model: DualTowerClip, texts: list[str], batch_size: int = 32, progress: bool = True
) -> np.ndarray:
    """Report strings -> L2-normalized float32 [N, embed_dim] through the model's online text
    tower (models trained with clip.text_tower=lora)."""
    from tqdm.auto import tqdm

    if model.text_tower is None:
        raise ValueError("embed_reports needs a model with an online text tower; use embed_texts")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    was_training = model.training
    model.eval()
    parts = []
    try:
        starts = range(0, len(texts), batch_size)
        for start in tqdm(starts, desc="embed reports", disable=not progress, leave=False):
            parts.append(model.encode_reports(list(texts[start : start + batch_size])).float()
                         .cpu().numpy())
    finally:
        model.train(was_training)
    if not parts:
        return np.zeros((0, model.config.embed_dim), dtype=np.float32)
    return np.concatenate(parts).astype(np.float32, copy=False)
