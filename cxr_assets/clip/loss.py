"""Symmetric CLIP InfoNCE loss (METHOD_NOTES 3, Stage D)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def clip_loss(
    image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor | float
) -> torch.Tensor:
    """L = 1/2 [CE(s I T^T, diag) + CE(s T I^T, diag)] with s = exp(logit_scale).

    Features are expected L2-normalized (as `DualTowerClip.encode_*` return them) and
    `logit_scale` is the log temperature parameter, not its exponential. Pair i is
    (image_emb[i], text_emb[i]); every other row of the batch is a negative.
    """
    if image_emb.ndim != 2 or image_emb.shape != text_emb.shape:
        raise ValueError(
            f"clip_loss needs two [B, D] tensors of the same shape, got "
            f"{tuple(image_emb.shape)} and {tuple(text_emb.shape)}"
        )
    scale = torch.as_tensor(logit_scale, dtype=image_emb.dtype, device=image_emb.device).exp()
    logits = scale * image_emb @ text_emb.t()
    targets = torch.arange(image_emb.shape[0], device=image_emb.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets))
