"""Process-group helpers for the CLIP trainer, which averages gradients itself (one flat
all_reduce after backward, with or without GradCache) rather than through DDP.

Everything here is a no-op in a single process, so the loop never branches on the world size.
"""

from __future__ import annotations

import os

import torch
from torch import nn


def process_group():
    """`torch.distributed` when a process group is up, else None."""
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def init_distributed(backend: str = "auto") -> tuple[int, int, int]:
    """(rank, world, local_rank); joins the torchrun process group when WORLD_SIZE > 1."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    if not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """`clip.device`; "auto" is this rank's GPU (LOCAL_RANK) when CUDA is available."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def all_reduce_mean(tensors: list[torch.Tensor], world: int) -> None:
    """Average tensors across processes in one flat all_reduce (one message, not hundreds)."""
    dist = process_group()
    if dist is None or world == 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


def trainable_grads(model: nn.Module) -> list[torch.Tensor]:
    """`.grad` of every trainable parameter, zeros where backward left none."""
    out = []
    for p in model.parameters():
        if p.requires_grad:
            if p.grad is None:  # every process must send the same layout
                p.grad = torch.zeros_like(p)
            out.append(p.grad)
    return out


def broadcast_buffers(modules, world: int) -> None:
    """Rank 0's buffers (BatchNorm running stats) everywhere, as DDP's broadcast_buffers does."""
    dist = process_group()
    if dist is None or world == 1:
        return
    for module in modules:
        if module is not None:
            for buffer in module.buffers():
                dist.broadcast(buffer, 0)
