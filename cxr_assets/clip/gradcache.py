"""One training step's gradients: the plain global-batch step, or GradCache for large batches.

- without GradCache (`micro_batch_size` unset): both towers run on the local batch, features
  are gathered from all processes *with* gradient, each process computes the loss of its own
  rows against all columns ("local loss"), and gradients are averaged across processes;
- with GradCache (Gao et al. 2021): features of each micro-batch are computed without a graph,
  gathered, the full global loss is differentiated with respect to the features only, then each
  micro-batch is re-run with a graph and back-propagated with its cached feature gradient.
  Memory is set by the micro-batch; the gradient equals the full-batch loss's (exactly for
  per-sample towers; BatchNorm sees micro-batch statistics, as it sees per-GPU ones under DDP).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

from cxr_assets.clip import checkpoint as ckpt
from cxr_assets.clip.distributed import all_reduce_mean, trainable_grads
from cxr_assets.clip.loss import gather_features, model_loss
from cxr_assets.clip.model import DualTowerClip


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


@contextlib.contextmanager
def _restored_rng(state: dict):
    """Replay the RNG of the first pass so dropout/drop-path masks match on recompute."""
    saved = ckpt.rng_state()
    ckpt.set_rng_state(state)
    try:
        yield
    finally:
        ckpt.set_rng_state(saved)


def compute_gradients(
    model: DualTowerClip,
    images: torch.Tensor,
    texts: torch.Tensor,
    micro_batch: int | None,
    rank: int = 0,
    world: int = 1,
    autocast: Callable[[], Any] = contextlib.nullcontext,
    scale_loss: Callable[[torch.Tensor], torch.Tensor] = lambda loss: loss,
    groups: torch.Tensor | None = None,
) -> float:
    """Fill `.grad` with the gradient of the global-batch loss; return the global loss.

    `images`/`texts` are this process's local batch; the global batch is the concatenation of
    all processes' local batches in rank order. `groups` (this process's positive-group ids,
    None = paired) are gathered the same way, so the positive mask covers the global batch.
    """
    n = images.shape[0]
    offset = rank * n
    if groups is not None:
        if groups.shape != (n,):
            raise ValueError(f"groups must have shape ({n},), got {tuple(groups.shape)}")
        groups = gather_features(groups.to(images.device), with_grad=False)
    if micro_batch is None or micro_batch >= n:
        with autocast():
            img_f = model.loss_image(images)
            txt_f = model.loss_text(texts)
        img_all, txt_all = gather_features(img_f), gather_features(txt_f)
        loss = model_loss(model, img_f, txt_f, img_all, txt_all, offset, groups)
        scale_loss(loss).backward()
        all_reduce_mean(trainable_grads(model), world)
        value = loss.detach().clone()
        all_reduce_mean([value], world)
        return float(value)

    if n % micro_batch:
        raise ValueError(f"local batch {n} is not a multiple of micro_batch_size {micro_batch}")
    if isinstance(texts, dict):  # tokenized reports for the online tower: split every field
        fields = {k: v.split(micro_batch) for k, v in texts.items()}
        text_chunks = [{k: v[i] for k, v in fields.items()} for i in range(len(fields["input_ids"]))]
    else:
        text_chunks = list(texts.split(micro_batch))
    chunks = list(zip(images.split(micro_batch), text_chunks))
    # Pass 1: features without a graph. BatchNorm running stats must move once per step, as
    # in pass 2, so they are restored afterwards.
    buffers = {k: b.detach().clone() for k, b in model.named_buffers()}
    rng_states, img_parts, txt_parts = [], [], []
    with torch.no_grad():
        for chunk_images, chunk_texts in chunks:
            rng_states.append(ckpt.rng_state())
            with autocast():
                img_parts.append(_at_least_fp32(model.loss_image(chunk_images)))
                txt_parts.append(_at_least_fp32(model.loss_text(chunk_texts)))
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            buffer.copy_(buffers[name])
    img_all = gather_features(torch.cat(img_parts), with_grad=False).requires_grad_(True)
    txt_all = gather_features(torch.cat(txt_parts), with_grad=False).requires_grad_(True)
    # The full global loss on every process: its gradient w.r.t. logit_scale/bias is complete
    # here, and w.r.t. the features it is exact for every row, including other ranks'.
    loss = model_loss(model, img_all, txt_all, img_all, txt_all, 0, groups)
    scale_loss(loss).backward()
    img_grad = img_all.grad[offset : offset + n]
    txt_grad = txt_all.grad[offset : offset + n]
    # Pass 2: re-run each chunk with a graph and push the cached feature gradients through.
    # Tower gradients are this process's share of the global loss; they are multiplied by the
    # world size so that the cross-process *mean* below sums them (temperature grads are
    # already complete on every process and must be averaged, not summed).
    for i, (chunk_images, chunk_texts) in enumerate(chunks):
        rows = slice(i * micro_batch, (i + 1) * micro_batch)
        with _restored_rng(rng_states[i]):
            with autocast():
                img_f = _at_least_fp32(model.loss_image(chunk_images))
                txt_f = _at_least_fp32(model.loss_text(chunk_texts))
            surrogate = (img_f * img_grad[rows]).sum() + (txt_f * txt_grad[rows]).sum()
            (surrogate * world).backward()
    grads = trainable_grads(model)
    if world > 1:
        all_reduce_mean(grads, world)
    return float(loss.detach())
