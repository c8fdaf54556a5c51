"""Batched pooling equals a naive per-sample loop, for every mode, with left padding."""

from __future__ import annotations

import pytest
import torch

from cxr_assets.text.pooling import POOLING_MODES, pool

# latent_attention has learned parameters: tested against the upstream loop in test_latent_attention.
FIXED_MODES = tuple(m for m in POOLING_MODES if m != "latent_attention")


def _naive(hidden: torch.Tensor, embed_mask: torch.Tensor, mode: str) -> torch.Tensor:
    out = []
    for h, m in zip(hidden, embed_mask):
        rows = h[m.bool()]
        if mode == "mean":
            out.append(rows.mean(0))
        elif mode == "weighted_mean":
            w = torch.arange(1, len(rows) + 1, dtype=torch.float32)
            out.append((w[:, None] * rows).sum(0) / w.sum())
        else:
            out.append(rows[-1])
    return torch.stack(out)


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(4, 9, 5, generator=g)
    mask = torch.zeros(4, 9, dtype=torch.long)
    mask[0, 3:] = 1  # left padding + instruction tokens are zeros on the left
    mask[1, 8:] = 1  # a single embedded token
    mask[2, :] = 1  # no padding
    mask[3, 5:] = 1
    return hidden, mask


@pytest.mark.parametrize("mode", FIXED_MODES)
def test_pool_matches_naive_loop(mode: str) -> None:
    hidden, mask = _batch()
    torch.testing.assert_close(pool(hidden, mask, mode), _naive(hidden, mask, mode))


def test_pool_ignores_masked_positions() -> None:
    hidden, mask = _batch()
    noisy = hidden.clone()
    noisy[~mask.bool()] = 1e6
    for mode in FIXED_MODES:
        torch.testing.assert_close(pool(noisy, mask, mode), pool(hidden, mask, mode))


def test_pool_bf16_returns_float32() -> None:
    hidden, mask = _batch()
    assert pool(hidden.bfloat16(), mask, "mean").dtype == torch.float32


def test_pool_errors() -> None:
    hidden, mask = _batch()
    with pytest.raises(ValueError, match="pooling mode"):
        pool(hidden, mask, "cls")
    with pytest.raises(ValueError, match="expects"):
        pool(hidden, mask[:, :-1], "mean")
    mask[2] = 0
    with pytest.raises(ValueError, match=r"rows \[2\]"):
        pool(hidden, mask, "mean")
