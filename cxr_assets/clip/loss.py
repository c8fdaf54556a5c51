"""Contrastive losses for the dual tower (METHOD_NOTES 3, Stage D) and a gather-with-grad.

Three kinds share one signature so the trainer, GradCache and DDP never special-case them:

- ``infonce``: symmetric CLIP InfoNCE on L2-normalized features with ``s = exp(logit_scale)``,
  the learnable log temperature clamped to [0, max_logit_scale] by the model.
- ``siglip``: the sigmoid pairwise loss (Zhai et al. 2023), ``-1/B sum_ij log sigmoid(z_ij (s
  x_i.y_j + b))`` with ``z_ij = +1`` on the diagonal and -1 elsewhere, learnable bias ``b``.
- ``reference``: "reference-compatible" mode. The published LLM2CLIP4CXR code multiplies raw,
  *unnormalized* projected features by the ``logit_scale`` parameter itself (no ``exp``) before
  the symmetric cross entropy. The model then skips L2 normalization in ``forward`` (retrieval
  embeddings are still normalized) and ``logit_scale`` is used as a plain multiplier. Use it to
  reproduce reference numbers; prefer ``infonce`` otherwise (the raw scale is badly conditioned).

Every loss takes "row" features (the ones this process owns) and "column" features (the whole
global batch, gathered across processes); ``row_offset`` says where the rows sit in the
columns. Single-process training passes the same tensors twice with offset 0. Each loss is a
mean over its rows, so averaging the per-process gradients gives the global-batch gradient.

Positives (`clip.positives`): by default only pair i's own image and report match ("paired",
one positive per row). With `groups` (one integer id per column of the global batch; equal
ids = interchangeable reports, e.g. two views of one study, identical report text or identical
labeler findings) every column of the row's group is a positive: InfoNCE and the reference mode
become multi-positive cross entropy with targets normalized per row (SupCon's L_out, MedCLIP's
semantic matching), SigLIP labels every same-group pair +1. All-distinct ids give exactly the
paired loss; `groups=None` runs the paired code path itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSS_KINDS = ("infonce", "siglip", "reference")
POSITIVE_KINDS = ("paired", "same_text", "same_labels")


def _check(image: torch.Tensor, text: torch.Tensor, what: str) -> None:
    if image.ndim != 2 or image.shape != text.shape:
        raise ValueError(
            f"{what} needs two [B, D] tensors of the same shape, got "
            f"{tuple(image.shape)} and {tuple(text.shape)}"
        )


def clip_loss(
    image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor | float
) -> torch.Tensor:
    """L = 1/2 [CE(s I T^T, diag) + CE(s T I^T, diag)] with s = exp(logit_scale).

    Features are expected L2-normalized (as `DualTowerClip.encode_*` return them) and
    `logit_scale` is the log temperature parameter, not its exponential. Pair i is
    (image_emb[i], text_emb[i]); every other row of the batch is a negative.
    """
    _check(image_emb, text_emb, "clip_loss")
    return contrastive_loss(image_emb, text_emb, image_emb, text_emb, 0, logit_scale)


def contrastive_loss(
    image_rows: torch.Tensor,
    text_rows: torch.Tensor,
    image_cols: torch.Tensor,
    text_cols: torch.Tensor,
    row_offset: int,
    logit_scale: torch.Tensor | float,
    logit_bias: torch.Tensor | float = 0.0,
    kind: str = "infonce",
    groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """Loss of `rows` (pairs row_offset .. row_offset+n-1 of the global batch) against `cols`.

    `groups`: None (pair i's only positive is column i) or an integer id per column of the
    *global* batch; row i's positives are the columns with its id (see the module docstring).
    Computed in float32 whatever the autocast dtype: the B x B logits are the numerically
    sensitive part and cost little next to the towers.
    """
    _check(image_rows, text_rows, "contrastive_loss rows")
    _check(image_cols, text_cols, "contrastive_loss columns")
    if kind not in LOSS_KINDS:
        raise ValueError(f"unknown loss kind {kind!r}; choose one of {LOSS_KINDS}")
    n, total = image_rows.shape[0], image_cols.shape[0]
    if not 0 <= row_offset <= total - n:
        raise ValueError(f"row_offset {row_offset} does not fit {n} rows in {total} columns")
    mask = None
    if groups is not None:
        mask = positive_mask(torch.as_tensor(groups, device=image_rows.device), row_offset, n, total)
    # At least float32 (bf16/fp16 autocast outputs are upcast; float64 stays float64).
    dtype = torch.promote_types(image_rows.dtype, torch.float32)
    image_rows, text_rows = image_rows.to(dtype), text_rows.to(dtype)
    image_cols, text_cols = image_cols.to(dtype), text_cols.to(dtype)
    raw = torch.as_tensor(logit_scale, device=image_rows.device).to(dtype)
    scale = raw if kind == "reference" else raw.exp()
    logits_i = scale * image_rows @ text_cols.t()  # [n, total]
    if kind == "siglip":
        bias = torch.as_tensor(logit_bias, device=image_rows.device).to(dtype)
        if mask is None:
            labels = -torch.ones_like(logits_i)
            idx = torch.arange(n, device=image_rows.device)
            labels[idx, idx + row_offset] = 1.0
        else:
            labels = mask.to(dtype) * 2.0 - 1.0
        return -F.logsigmoid(labels * (logits_i + bias)).sum() / n
    logits_t = scale * text_rows @ image_cols.t()
    if mask is None:
        targets = torch.arange(n, device=image_rows.device) + row_offset
    else:
        # Same-group relation is symmetric: report i's positive images are image i's positive
        # reports. Each row's targets sum to 1 (the mean of -log p over its positives).
        weights = mask.to(dtype)
        targets = weights / weights.sum(dim=1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits_i, targets) + F.cross_entropy(logits_t, targets))


def model_loss(model, image_rows: torch.Tensor, text_rows: torch.Tensor,
               image_cols: torch.Tensor, text_cols: torch.Tensor, row_offset: int,
               groups: torch.Tensor | None = None) -> torch.Tensor:
    """`contrastive_loss` with a DualTowerClip's temperature, bias and loss kind, so the
    training step, GradCache and validation cannot disagree on them."""
    return contrastive_loss(
        image_rows, text_rows, image_cols, text_cols, row_offset,
        model.logit_scale, model.logit_bias_value(), model.config.loss, groups,
    )


def positive_mask(groups: torch.Tensor, row_offset: int, n: int, total: int) -> torch.Tensor:
    """[n, total] bool: row i (global pair row_offset + i) and column j share a group id."""
    groups = torch.as_tensor(groups)
    if groups.ndim != 1 or groups.shape[0] != total:
        raise ValueError(
            f"groups must hold one id per column of the global batch ({total}), got shape "
            f"{tuple(groups.shape)}"
        )
    if groups.is_floating_point() or groups.is_complex():
        raise ValueError(f"groups must be integer ids, got dtype {groups.dtype}")
    return groups[row_offset : row_offset + n, None] == groups[None, :]


def group_ids(keys) -> torch.Tensor:
    """Hashable keys (report text, label tuple, ...) -> int64 ids, equal keys -> equal ids,
    numbered by first appearance."""
    seen: dict = {}
    return torch.tensor([seen.setdefault(key, len(seen)) for key in keys], dtype=torch.int64)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every process's gradient for this process's slice."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        import torch.distributed as dist

        world = dist.get_world_size()
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor.contiguous())
        ctx.rank, ctx.n = dist.get_rank(), tensor.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # each process's loss touched every slice
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def gather_features(tensor: torch.Tensor, with_grad: bool = True) -> torch.Tensor:
    """Concatenate `tensor` from all processes in rank order (identity without a process group).

    All processes must pass the same shape (the trainer's equal local batches guarantee it).
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    if with_grad:
        return _GatherWithGrad.apply(tensor)
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.detach().contiguous())
    return torch.cat(parts)
