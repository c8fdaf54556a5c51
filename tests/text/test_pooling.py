"""Batched pooling equals a naive per-sample loop, for every mode, with left padding."""

from __future__ import annotations

import pytest
import torch

from cxr_assets.text.pooling import HEAD_MODES, POOLING_MODES, mean_and_head, pool

# latent_attention has learned parameters: tested against the upstream loop in test_latent_attention.
FIXED_MODES = tuple(m for m in POOLING_MODES if m not in HEAD_MODES)


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


def test_mean_and_head_weights_the_two_cosines() -> None:
    """Raw mean|head output -> one embedding whose cosine is w * cos(means) + (1 - w) *
    cos(heads), the mean post-processed first; the mode's raw output is the mean beside the head."""
    from cxr_assets.text.pooling import make_latent_attention

    hidden, mask = _batch()
    head = make_latent_attention(hidden.shape[-1], 4, 1, seed=0).eval()
    with torch.no_grad():
        raw = pool(hidden, mask, "mean_and_latent_attention", head)
        torch.testing.assert_close(raw[:, :hidden.shape[-1]], pool(hidden, mask, "mean"))
        torch.testing.assert_close(raw[:, hidden.shape[-1]:], head(hidden, mask))
    center, scale = torch.randn(hidden.shape[-1]), torch.rand(hidden.shape[-1]) + 0.5
    out = mean_and_head(raw, 0.3, center, scale)
    unit = torch.nn.functional.normalize
    mean, heads = unit((raw[:, :hidden.shape[-1]] - center) / scale), unit(raw[:, hidden.shape[-1]:])
    torch.testing.assert_close(out @ out.T, 0.3 * mean @ mean.T + 0.7 * heads @ heads.T)
    with pytest.raises(ValueError, match="mean weight"):
        mean_and_head(raw, 1.0)
    with pytest.raises(ValueError, match="needs its pooling head"):
        pool(hidden, mask, "mean_and_latent_attention")


def test_mean_taps_read_other_layers_side_by_side_and_can_skip_the_first_token() -> None:
    """The mean part of 'mean' and 'mean_and_latent_attention' can read other layers' token
    states (one mean each, side by side) and leave each row's first embedded token out (a causal
    LLM's attention sink), except in a row whose only token it is."""
    hidden, mask = _batch()
    other = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(5))
    out = pool(hidden, mask, "mean", mean_states=[other, hidden], skip_first_token=True)
    width = hidden.shape[-1]
    assert out.shape == (4, 2 * width)
    for row, m in enumerate(mask):
        kept = m.bool().nonzero().flatten().tolist()
        kept = kept[1:] if len(kept) > 1 else kept
        for i, states in enumerate((other, hidden)):
            want = states[row, kept].mean(0)
            assert torch.allclose(out[row, i * width:(i + 1) * width], want, atol=1e-6)
    # Without skip_first_token every embedded token counts, as in plain 'mean'.
    assert torch.allclose(pool(hidden, mask, "mean", mean_states=[hidden]),
                          pool(hidden, mask, "mean"), atol=1e-6)
    with pytest.raises(ValueError, match="mean taps apply to the mean part"):
        pool(hidden, mask, "last_token", skip_first_token=True)
    with pytest.raises(ValueError, match="mean states must be"):
        pool(hidden, mask, "mean", mean_states=[hidden[:, :4]])


def test_mean_and_head_splits_a_wider_mean_part_from_the_head() -> None:
    """With a mean read from two layers the raw output is [mean 2D | head D]: the head is the
    last head_width columns, post-processing applies to the mean part alone."""
    g = torch.Generator().manual_seed(1)
    raw = torch.randn(3, 15, generator=g)  # mean 2 x 5, head 5
    center, scale = torch.randn(10, generator=g), torch.rand(10, generator=g) + 0.5
    out = mean_and_head(raw, 0.4, center, scale, head_width=5)
    mean = torch.nn.functional.normalize((raw[:, :10] - center) / scale, dim=-1)
    head = torch.nn.functional.normalize(raw[:, 10:], dim=-1)
    assert torch.allclose(out, torch.cat([mean * 0.4 ** 0.5, head * 0.6 ** 0.5], dim=-1),
                          atol=1e-6)
    with pytest.raises(ValueError, match=r"expected raw mean\|head output"):
        mean_and_head(raw, 0.4, head_width=15)
