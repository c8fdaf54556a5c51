"""AdamW parameter groups and the warmup + cosine learning-rate schedule of the CLIP trainer."""

from __future__ import annotations

import math

import torch
from torch import nn

from cxr_assets.config import ClipParams


def _no_decay(name: str, param: nn.Parameter) -> bool:
    return param.ndim < 2 or name in ("logit_scale", "logit_bias") or name.endswith(".bias")


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float = 1.0) -> list[dict]:
    """AdamW groups: decay matrices/kernels only; norms, biases and logit_scale are not decayed.

    With `layer_decay < 1` the vision backbone's layers (timm's group matcher) get lr multiplied
    by layer_decay ** (depth from the top); heads, adapter and temperature keep the full lr.
    Each group carries `lr_scale`, which the scheduler multiplies in.
    """
    layer_of: dict[str, int] = {}
    n_layers = 0
    visual = getattr(model, "visual", None)
    if layer_decay < 1.0 and visual is not None and hasattr(visual, "group_matcher"):
        from timm.models import group_parameters

        groups = group_parameters(visual, visual.group_matcher(coarse=False))
        n_layers = len(groups)
        for layer, names in groups.items():
            for name in names:
                layer_of[f"visual.{name}"] = int(layer)
    buckets: dict[tuple[float, float], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        wd = 0.0 if _no_decay(name, param) else weight_decay
        scale = layer_decay ** (n_layers - layer_of[name]) if name in layer_of else 1.0
        buckets.setdefault((wd, scale), []).append(param)
    ordered = sorted(buckets.items(), key=lambda kv: (-kv[0][0], -kv[0][1]))
    return [{"params": p, "weight_decay": wd, "lr_scale": s} for (wd, s), p in ordered]


def lr_multiplier(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup to 1 over `warmup_steps`, then cosine decay to 0 at `total_steps`."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(
    model: nn.Module, params: ClipParams, total_steps: int
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over `param_groups` and a per-step scheduler that applies each group's lr_scale.

    Both are returned together because checkpoints save and restore them as a pair.
    """
    groups = param_groups(model, params.weight_decay, params.layer_decay)
    optimizer = torch.optim.AdamW(groups, lr=params.lr)
    scales = [g["lr_scale"] for g in groups]
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        [lambda s, k=k: k * lr_multiplier(s, params.warmup_steps, total_steps) for k in scales],
    )
    return optimizer, scheduler
