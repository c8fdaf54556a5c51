"""Shared check: GradCache (micro-batched) gradients equal the full-batch ones."""

from __future__ import annotations

import pytest
import torch

from cxr_assets.clip.gradcache import compute_gradients


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_micro_batches_match(model, images, texts, full: float, reference: dict, label: str,
                               groups=None, micros=(1, 4, 8)) -> None:
    """Loss and every parameter gradient of each micro-batch size match the full batch's."""
    for micro in micros:
        model.zero_grad(set_to_none=True)
        cached = compute_gradients(model, images, texts, micro_batch=micro, groups=groups)
        got = grads(model)
        assert cached == pytest.approx(full, rel=1e-12)
        assert got.keys() == reference.keys()
        for name, expected in reference.items():
            torch.testing.assert_close(got[name], expected, rtol=1e-9, atol=1e-12,
                                       msg=f"{label} micro={micro}: {name}")
