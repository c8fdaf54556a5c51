"""One CLIP trainer for one process or many (torchrun), with GradCache and exact resumption.

The loop is step-based. The global batch of step `s` is a pure function of (seed, s): a
per-epoch permutation of the training pairs, cut into `batch_size` slices (the last partial
slice is dropped). Under torchrun, rank r takes the r-th contiguous part of that slice, and
every image's augmentation is drawn from a generator seeded by (seed, step, position in the
global batch), so the data seen by the whole job does not depend on the number of processes,
and the step counter is the complete data-loader position for checkpoints.

Per step:
- without GradCache (`micro_batch_size` unset): both towers run on the local batch, features
  are gathered from all processes *with* gradient, each process computes the loss of its own
  rows against all columns ("local loss"), and gradients are averaged across processes;
- with GradCache (Gao et al. 2021): features of each micro-batch are computed without a graph,
  gathered, the full global loss is differentiated with respect to the features only, then each
  micro-batch is re-run with a graph and back-propagated with its cached feature gradient.
  Memory is set by the micro-batch; the gradient equals the full-batch loss's (exactly for
  per-sample towers; BatchNorm sees micro-batch statistics, as it sees per-GPU ones under DDP).
Then: unscale (fp16), clip, AdamW with parameter groups (optional layer-wise lr decay), warmup +
cosine, clamp logit_scale, optional EMA, checkpoint every N steps.

Text side: cached report embeddings + adapter (default), or the report encoder run online with
LoRA on attention (`clip.text_tower: lora`, module `cxr_assets.clip.text_tower`). Text augmentation
(sentence shuffle within sections, p = clip.text_augment_p) needs the online tower; with
cached embeddings it is not possible and is not applied.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cxr_assets.clip import checkpoint as ckpt
from cxr_assets.clip.loss import (
    POSITIVE_KINDS,
    clip_loss,
    contrastive_loss,
    gather_features,
    group_ids,
)
from cxr_assets.clip.model import ClipModelConfig, DualTowerClip
from cxr_assets.config import ClipParams
from cxr_assets.vision.transforms import load_cached_image, train_augment

_log = logging.getLogger(__name__)

LogFn = Callable[[int, dict], None]
__all__ = ["CachedPairDataset", "ClipTrainResult", "clip_loss", "train_clip"]


@dataclass
class ClipTrainResult:
    model: DualTowerClip
    # One dict per epoch: epoch, train_loss, val_loss, logit_scale, lr, seconds, data_wait_fraction.
    history: list[dict]
    best_epoch: int
    best_val_loss: float
    steps: int
    seconds: float
    resumed_from_step: int = 0
    world_size: int = 1


class CachedPairDataset(Dataset):
    """(image tensor [1, S, S], text embedding [D] or report string) pairs; images are read
    from disk per item. With `groups` (positive-group ids, see `clip.loss`) items are
    (image, text, group id) triples."""

    def __init__(self, image_paths: Sequence[Path], text_embeddings: np.ndarray | list[str],
                 image_size: int, groups: torch.Tensor | None = None):
        self.image_paths = [Path(p) for p in image_paths]
        if isinstance(text_embeddings, list):
            self.text_embeddings = text_embeddings  # report strings for the online tower
        else:
            self.text_embeddings = torch.from_numpy(np.ascontiguousarray(text_embeddings))
        self.image_size = image_size
        self.groups = groups

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> tuple:
        image = load_cached_image(self.image_paths[index], self.image_size)
        if self.groups is not None:
            return image, self.text_embeddings[index], self.groups[index]
        return image, self.text_embeddings[index]


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of the n training pairs used in `epoch` (0-based)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


class StepBatches(Dataset):
    """Item i = this process's augmented local batch for global step `first_step + i`.

    Whole batches are the unit so that worker processes (spawn) load and augment in parallel
    with training, and a DataLoader over it can start at any step (resumption).
    """

    def __init__(
        self,
        pairs: CachedPairDataset,
        seed: int,
        global_batch: int,
        rank: int,
        world: int,
        first_step: int,
        last_step: int,
        augment: bool = True,
        text_shuffle_p: float = 0.0,
    ) -> None:
        self.pairs, self.seed, self.global_batch = pairs, seed, global_batch
        self.rank, self.world, self.first_step, self.last_step = rank, world, first_step, last_step
        self.local = global_batch // world
        self.steps_per_epoch = len(pairs) // global_batch
        self.augment = augment
        self.text_shuffle_p = text_shuffle_p

    def __len__(self) -> int:
        return max(0, self.last_step - self.first_step)

    def __getitem__(self, i: int) -> tuple:
        """(images, texts) or, when the pairs carry positive groups, (images, texts, groups)."""
        step = self.first_step + i
        epoch, index = divmod(step, self.steps_per_epoch)
        order = epoch_order(len(self.pairs), self.seed, epoch)
        start = index * self.global_batch + self.rank * self.local
        # Images go straight into one preallocated batch tensor: a list of images plus its
        # stacked copy would hold a large effective batch (GradCache) twice.
        images: torch.Tensor | None = None
        texts, groups = [], []
        for position, item in enumerate(order[start : start + self.local].tolist()):
            image, text, *group = self.pairs[item]
            groups.extend(group)
            if self.augment:
                global_pos = self.rank * self.local + position
                gen = torch.Generator().manual_seed(
                    (self.seed * 1_000_003 + step) * 65_537 + global_pos
                )
                image = train_augment(image, gen)
                if isinstance(text, str) and self.text_shuffle_p > 0:
                    from cxr_assets.clip.text_tower import shuffle_sentences

                    text = shuffle_sentences(text, self.text_shuffle_p, gen)
            if images is None:
                images = torch.empty((self.local, *image.shape), dtype=image.dtype)
            images[position] = image
            texts.append(text)
        batch = (images, texts if isinstance(texts[0], str) else torch.stack(texts))
        return (*batch, torch.stack(groups)) if groups else batch


def _check_reports(name: str, images: Sequence[Path], reports) -> list[str]:
    reports = list(reports)
    if len(images) != len(reports):
        raise ValueError(f"{name}_images has {len(images)} paths but {len(reports)} reports")
    for i, text in enumerate(reports):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{name} report {i} is empty or not a string")
    return reports


def _check_pairs(name: str, images: Sequence[Path], text_emb: np.ndarray) -> np.ndarray:
    array = np.asarray(text_emb)
    if array.ndim != 2:
        raise ValueError(f"{name}_text_emb must be 2-D [N, D], got shape {array.shape}")
    if len(images) != array.shape[0]:
        raise ValueError(
            f"{name}_images has {len(images)} paths but {name}_text_emb has {array.shape[0]} rows"
        )
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{name}_text_emb must be floating point, got {array.dtype}")
    if array.size and not np.isfinite(array).all():
        raise ValueError(f"{name}_text_emb contains NaN or inf")
    return np.ascontiguousarray(array, dtype=np.float32)


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


def _loss(model: DualTowerClip, img_rows, txt_rows, img_cols, txt_cols, offset: int,
          groups: torch.Tensor | None = None):
    return contrastive_loss(
        img_rows, txt_rows, img_cols, txt_cols, offset,
        model.logit_scale, model.logit_bias_value(), model.config.loss, groups,
    )


@torch.no_grad()
def evaluate_loss(model: DualTowerClip, loader: DataLoader, device: torch.device) -> float:
    """Mean in-batch loss (the model's loss kind) over fixed batches, no augmentation.

    Batches of one pair are skipped: their contrastive loss is trivially zero. Batches of
    (images, texts, groups) use the multi-positive loss of those groups.
    """
    return validate(model, loader, device)[0]


VAL_RECALL_AT = (1, 5, 10)


@torch.no_grad()
def validate(model: DualTowerClip, loader: DataLoader, device: torch.device,
             text_ids: torch.Tensor | None = None) -> tuple[float, float]:
    """(evaluate_loss's mean in-batch loss, retrieval mean recall) over the validation pairs.

    Mean recall: R@1/5/10 image->report and report->image over the whole validation pool
    (normalized embeddings, as the evaluation computes them), a candidate counting as correct
    when its `text_ids` entry equals the query's (the same report: other views of a study);
    without `text_ids` only the pair itself. NaN without `text_ids`-free pairs to rank.
    """
    from cxr_assets.evaluate.retrieval import retrieval_metrics

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    image_parts, text_parts = [], []
    for images, texts, *groups in loader:
        if isinstance(texts, (list, tuple)):
            texts = model.text_tower.tokenize(list(texts))
        else:
            texts = texts.to(device)
        image_f, text_f, _ = model(images.to(device), texts)
        image_parts.append(F.normalize(image_f.float(), dim=-1).cpu())
        text_parts.append(F.normalize(text_f.float(), dim=-1).cpu())
        if images.shape[0] < 2:
            continue
        group = groups[0].to(device) if groups else None
        total += float(_loss(model, image_f, text_f, image_f, text_f, 0, group)) * images.shape[0]
        count += images.shape[0]
    model.train(was_training)
    loss = total / count if count else float("nan")
    recall = float("nan")
    if image_parts and sum(len(p) for p in image_parts) >= 2:
        image_emb, text_emb = torch.cat(image_parts).numpy(), torch.cat(text_parts).numpy()
        if np.isfinite(image_emb).all() and np.isfinite(text_emb).all():
            ids = None if text_ids is None else text_ids.numpy()
            metrics = retrieval_metrics(image_emb, text_emb, VAL_RECALL_AT, text_groups=ids)
            recall = metrics["grp_mean_recall" if ids is not None else "mean_recall"]
    return loss, recall


# ----------------------------------------------------------------------------- distributed


def _dist():
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


def _all_reduce_mean(tensors: list[torch.Tensor], world: int) -> None:
    """Average tensors across processes in one flat all_reduce (one message, not hundreds)."""
    dist = _dist()
    if dist is None or world == 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


def _grads(model: nn.Module) -> list[torch.Tensor]:
    out = []
    for p in model.parameters():
        if p.requires_grad:
            if p.grad is None:  # every process must send the same layout
                p.grad = torch.zeros_like(p)
            out.append(p.grad)
    return out


# ----------------------------------------------------------------------------- one step


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
        loss = _loss(model, img_f, txt_f, img_all, txt_all, offset, groups)
        scale_loss(loss).backward()
        _all_reduce_mean(_grads(model), world)
        value = loss.detach().clone()
        _all_reduce_mean([value], world)
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
    loss = _loss(model, img_all, txt_all, img_all, txt_all, 0, groups)
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
    grads = _grads(model)
    if world > 1:
        _all_reduce_mean(grads, world)
    return float(loss.detach())


# ----------------------------------------------------------------------------- training


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _autocast_factory(precision: str, device: torch.device) -> Callable[[], Any]:
    if precision == "fp32":
        return contextlib.nullcontext
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("clip.precision fp16 needs a CUDA device (use bf16 on CPU)")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def epoch_score(select_best: str, record: dict) -> float:
    """Lower is better: how `clip.select_best` ranks an epoch's record (epoch, val_loss,
    val_recall). NaN never wins."""
    if select_best == "val_recall":
        # Higher recall is better; ties go to the later (longer trained) epoch.
        return -record["val_recall"] - 1e-9 * record["epoch"]
    if select_best == "last":
        return -float(record["epoch"])
    return record["val_loss"]


def resolve_groups(name: str, positives: str, groups: Sequence | None,
                   texts: np.ndarray | list[str]) -> torch.Tensor | None:
    """Positive-group ids [N] for `clip.positives` (None for "paired", the one-positive loss)."""
    if positives not in POSITIVE_KINDS:
        raise ValueError(f"clip.positives must be one of {POSITIVE_KINDS}, got {positives!r}")
    if positives == "paired":
        return None
    n = len(texts)
    if groups is None:
        if positives == "same_labels":
            raise ValueError(
                f"clip.positives=same_labels needs {name}_groups (one label-set key per pair, "
                "e.g. from the report_labels table); pass them or use same_text / paired"
            )
        keys = texts if isinstance(texts, list) else [row.tobytes() for row in texts]
    else:
        keys = list(groups)
        if len(keys) != n:
            raise ValueError(f"{name}_groups has {len(keys)} keys but there are {n} {name} pairs")
    return group_ids(keys)


def train_clip(
    train_images: list[Path],
    train_text_emb: np.ndarray,
    val_images: list[Path],
    val_text_emb: np.ndarray,
    params: ClipParams,
    text_encoder_hash: str,
    seed: int,
    progress: bool = True,
    log_fn: LogFn | None = None,
    *,
    device: str | torch.device | None = None,
    checkpoint_dir: Path | None = None,
    stop_after_steps: int | None = None,
    text_encoder_dir: Path | None = None,
    train_groups: Sequence | None = None,
    val_groups: Sequence | None = None,
) -> ClipTrainResult:
    """Train a DualTowerClip and return it with the weights of its best validation epoch.

    With fewer than 2 validation pairs there is no meaningful validation loss: the epoch with
    the lowest training loss is kept instead and val_loss / best_val_loss are NaN.
    `log_fn(step, metrics)` receives per-step train metrics and per-epoch summaries (rank 0).
    With `checkpoint_dir`, `last/` is written every `params.checkpoint.every_n_steps` steps and
    at the end, `best/` at each better epoch, and a compatible `last/` is resumed from when
    `params.checkpoint.resume`. Under torchrun (WORLD_SIZE > 1) the process group is joined.
    `stop_after_steps` ends the loop early (a simulated interruption, for tests and tools).
    With `params.text_tower == "lora"` the text arguments are report strings and
    `text_encoder_dir` the saved TextEncoder run online with LoRA.
    `train_groups` / `val_groups`: one hashable key per pair (report text, label set, ...);
    with `params.positives` other than "paired", in-batch pairs with equal keys are positives
    of each other. Without them, "same_text" groups identical texts (strings, or identical
    cached embedding rows); "same_labels" needs them. Ignored with "paired".
    """
    online = params.text_tower == "lora"
    if online:
        if text_encoder_dir is None:
            raise ValueError("clip.text_tower=lora needs text_encoder_dir (a saved TextEncoder)")
        train_text = _check_reports("train", train_images, train_text_emb)
        val_text = _check_reports("val", val_images, val_text_emb)
    else:
        train_text = _check_pairs("train", train_images, train_text_emb)
        val_text = _check_pairs("val", val_images, val_text_emb)
    if len(train_images) < 2:
        raise ValueError(f"train_clip needs at least 2 training pairs, got {len(train_images)}")
    if not online and len(val_images) and val_text.shape[1] != train_text.shape[1]:
        raise ValueError(
            f"val_text_emb dim {val_text.shape[1]} != train_text_emb dim {train_text.shape[1]}"
        )
    train_ids = resolve_groups("train", params.positives, train_groups, train_text)
    val_ids = resolve_groups("val", params.positives, val_groups, val_text)
    rank, world, local_rank = init_distributed(params.distributed.backend)
    device = torch.device(device) if device is not None else resolve_device(params.device, local_rank)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(params.threads)
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    try:
        # fork_rng: seed locally so training is reproducible without touching the caller's RNG.
        with torch.random.fork_rng(devices=rng_devices):
            torch.manual_seed(seed)
            return _Trainer(
                train_images, train_text, val_images, val_text, params, text_encoder_hash,
                seed, progress and rank == 0, log_fn if rank == 0 else None, device,
                rank, world, checkpoint_dir, stop_after_steps, text_encoder_dir,
                train_ids, val_ids,
            ).run()
    finally:
        torch.set_num_threads(previous_threads)


class _Trainer:
    def __init__(self, train_images, train_text, val_images, val_text, params: ClipParams,
                 text_encoder_hash, seed, progress, log_fn, device, rank, world,
                 checkpoint_dir, stop_after_steps, text_encoder_dir=None, train_groups=None,
                 val_groups=None) -> None:
        self.p, self.seed, self.progress, self.log_fn = params, seed, progress, log_fn
        self.device, self.rank, self.world = device, rank, world
        self.stop_after_steps = stop_after_steps
        self.ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.started = time.perf_counter()

        batch = min(params.batch_size, len(train_images))
        batch -= batch % world
        if batch < 2 or batch < world:
            raise ValueError(
                f"clip.batch_size {params.batch_size} with {len(train_images)} training pairs "
                f"and {world} processes leaves no usable global batch"
            )
        self.batch, self.local = batch, batch // world
        micro = params.micro_batch_size
        if micro is not None and micro < self.local and self.local % micro:
            raise ValueError(
                f"per-process batch {self.local} (clip.batch_size / world size) is not a "
                f"multiple of clip.micro_batch_size {micro}"
            )
        self.micro = micro
        self.train_pairs = CachedPairDataset(train_images, train_text, params.image_size,
                                             train_groups)
        self.val_pairs = CachedPairDataset(val_images, val_text, params.image_size, val_groups)
        # Validation reports that are the same text (other views of a study) for val_recall.
        self.val_text_ids = group_ids(
            val_text if isinstance(val_text, list) else [row.tobytes() for row in val_text])
        self.has_val = len(val_images) >= 2
        self.steps_per_epoch = len(train_images) // batch
        self.total_steps = self.steps_per_epoch * params.epochs

        tower = None
        if params.text_tower == "lora":
            from cxr_assets.clip.text_tower import OnlineTextTower

            tower = OnlineTextTower.from_folder(Path(text_encoder_dir), params.text_lora)
            text_dim = tower.dim
            text_id = ckpt.fingerprint({"reports": train_text})
        else:
            text_dim = int(train_text.shape[1])
            text_id = ckpt.fingerprint({"sum": float(train_text.astype(np.float64).sum()),
                                        "shape": list(train_text.shape)})
        config = ClipModelConfig(
            vision_backbone=params.vision_backbone, image_size=params.image_size,
            text_dim=text_dim, embed_dim=params.embed_dim,
            init_logit_scale=params.init_logit_scale, max_logit_scale=params.max_logit_scale,
            text_encoder_hash=text_encoder_hash, loss=params.loss,
            text_adapter=params.text_adapter, adapter_blocks=params.adapter_blocks,
            in_chans=params.in_chans, text_tower=params.text_tower,
        )
        self.model = DualTowerClip(config, vision_pretrained_path=params.vision_pretrained_path,
                                   text_tower=tower)
        self.model.to(device).train()
        self.ema = copy.deepcopy(self.model).eval() if params.ema_decay > 0 else None
        if self.ema is not None:
            self.ema.requires_grad_(False)
        groups = param_groups(self.model, params.weight_decay, params.layer_decay)
        self.optimizer = torch.optim.AdamW(groups, lr=params.lr)
        scales = [g["lr_scale"] for g in groups]
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            [lambda s, k=k: k * lr_multiplier(s, params.warmup_steps, self.total_steps)
             for k in scales],
        )
        self.autocast = _autocast_factory(params.precision, device)
        self.scaler = torch.amp.GradScaler("cuda") if params.precision == "fp16" else None
        self.fingerprint = ckpt.fingerprint({
            "params": params.model_dump(exclude={"checkpoint", "distributed", "workers",
                                                 "threads", "device", "epochs"}),
            "seed": seed, "text_encoder_hash": text_encoder_hash, "batch": batch,
            "train": [str(p) for p in train_images],
            "text": text_id,
        } | ({} if train_groups is None else {"groups": train_groups.tolist()}))
        # Bookkeeping carried in checkpoints.
        self.step, self.history, self.epoch_losses = 0, [], []
        self.epoch_wait, self.epoch_seconds = 0.0, 0.0
        self.best_score, self.best_epoch, self.best_state = math.inf, 0, None
        self.resumed_from = 0

    # -- checkpoints ------------------------------------------------------------------------

    def _state(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "rng": ckpt.rng_state(), "step": self.step, "history": self.history,
            "epoch_losses": self.epoch_losses, "epoch_wait": self.epoch_wait,
            "epoch_seconds": self.epoch_seconds, "best_score": self.best_score,
            "best_epoch": self.best_epoch,
        }

    def _meta(self) -> dict:
        return {"step": self.step, "total_steps": self.total_steps, "fingerprint": self.fingerprint,
                "world_size": self.world, "best_epoch": self.best_epoch,
                "best_score": self.best_score if math.isfinite(self.best_score) else None}

    def save_last(self) -> None:
        if self.ckpt_dir is not None and self.rank == 0:
            ckpt.save_checkpoint(self.ckpt_dir, ckpt.LAST, self.model, self._state(),
                                 self._meta(), self.ema)

    def try_resume(self) -> None:
        if not self.p.checkpoint.resume:
            return
        folder = ckpt.find_checkpoint(self.ckpt_dir, ckpt.LAST)
        if folder is None:
            return
        meta = ckpt.read_meta(folder)
        if meta.get("fingerprint") != self.fingerprint:
            _log.warning("checkpoint %s is from other params or data; training from scratch", folder)
            return
        if meta.get("step", 0) >= self.total_steps:
            # A finished run is not resumed: a rerun (new code, a DVC repro) must retrain.
            _log.info("checkpoint %s is of a finished run; training from scratch", folder)
            return
        ckpt.load_weights(self.model, folder / ckpt.MODEL_FILE)
        if self.ema is not None and (folder / ckpt.EMA_FILE).is_file():
            ckpt.load_weights(self.ema, folder / ckpt.EMA_FILE)
        state = ckpt.load_state(folder)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        ckpt.set_rng_state(state["rng"])
        for key in ("step", "history", "epoch_losses", "epoch_wait", "epoch_seconds",
                    "best_score", "best_epoch"):
            setattr(self, key, state[key])
        best = ckpt.find_checkpoint(self.ckpt_dir, ckpt.BEST)
        if best is not None and self.best_epoch:
            holder = copy.deepcopy(self._eval_model())
            ckpt.load_weights(holder, best / ckpt.MODEL_FILE)
            self.best_state = {k: v.detach().clone() for k, v in holder.state_dict().items()}
        self.resumed_from = self.step
        _log.info("resumed CLIP training from %s at step %d", folder, self.step)

    # -- loop -------------------------------------------------------------------------------

    def _eval_model(self) -> DualTowerClip:
        return self.ema if self.ema is not None else self.model

    def _loader(self, first: int, last: int) -> DataLoader:
        shuffle_p = self.p.text_augment_p if self.p.text_tower == "lora" else 0.0
        data = StepBatches(self.train_pairs, self.seed, self.batch, self.rank, self.world,
                           first, last, text_shuffle_p=shuffle_p)
        workers = self.p.workers
        return DataLoader(
            data, batch_size=None, shuffle=False, num_workers=workers,
            multiprocessing_context="spawn" if workers else None,
            prefetch_factor=2 if workers else None, persistent_workers=False,
            pin_memory=self.device.type == "cuda",
        )

    def _optimizer_step(self) -> None:
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.p.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, self.p.grad_clip_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.model.clamp_logit_scale_()
        if self.ema is not None:
            with torch.no_grad():
                d = self.p.ema_decay
                for e, m in zip(self.ema.parameters(), self.model.parameters()):
                    e.lerp_(m, 1.0 - d)
                for e, m in zip(self.ema.buffers(), self.model.buffers()):
                    e.copy_(m)

    def _sync_buffers(self) -> None:
        """Rank 0's BatchNorm running stats everywhere (as DDP's broadcast_buffers does)."""
        dist = _dist()
        if dist is None or self.world == 1:
            return
        for module in (self.model, self.ema):
            if module is not None:
                for buffer in module.buffers():
                    dist.broadcast(buffer, 0)

    def _end_epoch(self, epoch: int) -> None:
        self._sync_buffers()
        val_loader = DataLoader(self.val_pairs, batch_size=self.batch, shuffle=False)
        evaluated = self._eval_model()
        val_loss, val_recall = (validate(evaluated, val_loader, self.device, self.val_text_ids)
                                if self.has_val else (math.nan, math.nan))
        train_loss = float(np.mean(self.epoch_losses))
        record = {
            "epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
            "val_recall": val_recall,
            "logit_scale": float(self.model.logit_scale.detach()),
            "lr": self.optimizer.param_groups[0]["lr"], "seconds": self.epoch_seconds,
            "data_wait_fraction": (self.epoch_wait / self.epoch_seconds
                                   if self.epoch_seconds > 0 else 0.0),
        }
        self.history.append(record)
        if self.log_fn is not None:
            self.log_fn(self.step, {f"epoch_{k}": float(v) for k, v in record.items()
                                    if k != "epoch"} | {"epoch": float(epoch)})
        score = epoch_score(self.p.select_best, record) if self.has_val else train_loss
        if score < self.best_score:  # NaN never wins; the first finite epoch always does
            self.best_score, self.best_epoch = score, epoch
            self.best_state = {k: v.detach().clone() for k, v in evaluated.state_dict().items()}
            if self.ckpt_dir is not None and self.rank == 0:
                ckpt.save_checkpoint(self.ckpt_dir, ckpt.BEST, evaluated, None, self._meta())
        self.epoch_losses, self.epoch_wait, self.epoch_seconds = [], 0.0, 0.0

    def _best_val_loss(self) -> float:
        """Validation loss of the kept epoch (NaN without validation pairs)."""
        if not self.has_val:
            return float("nan")
        for record in self.history:
            if record["epoch"] == self.best_epoch:
                return float(record["val_loss"])
        return float("nan")

    def run(self) -> ClipTrainResult:
        from tqdm.auto import tqdm

        self.try_resume()
        every = self.p.checkpoint.every_n_steps
        end = self.total_steps
        if self.stop_after_steps is not None:
            end = min(end, self.stop_after_steps)
        bar = tqdm(total=self.total_steps, initial=self.step, desc="train clip",
                   disable=not self.progress, leave=False)
        loader = iter(self._loader(self.step, end)) if self.step < end else iter(())
        scale_loss = self.scaler.scale if self.scaler is not None else (lambda loss: loss)
        try:
            while self.step < end:
                tick = time.perf_counter()
                images, texts, *groups = next(loader)
                groups = groups[0].to(self.device) if groups else None
                waited = time.perf_counter() - tick
                images = images.to(self.device, non_blocking=True)
                if isinstance(texts, list):  # report strings: tokenize for the online tower
                    texts = self.model.text_tower.tokenize(texts)
                else:
                    texts = texts.to(self.device, non_blocking=True)
                self.optimizer.zero_grad(set_to_none=True)
                loss = compute_gradients(self.model, images, texts, self.micro, self.rank,
                                         self.world, self.autocast, scale_loss, groups)
                self._optimizer_step()
                self.step += 1
                self.epoch_losses.append(loss)
                elapsed = time.perf_counter() - tick
                self.epoch_wait += waited
                self.epoch_seconds += elapsed
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
                if self.log_fn is not None:
                    self.log_fn(self.step, {
                        "train_loss": loss, "lr": self.optimizer.param_groups[0]["lr"],
                        "logit_scale": float(self.model.logit_scale.detach()),
                        "data_wait_fraction": waited / elapsed if elapsed > 0 else 0.0,
                        "pairs_per_second": self.batch / elapsed if elapsed > 0 else 0.0,
                    })
                if self.step % self.steps_per_epoch == 0:
                    self._end_epoch(self.step // self.steps_per_epoch)
                if every and self.step % every == 0:
                    self.save_last()
        finally:
            bar.close()
        if self.step == self.total_steps and not (every and self.step % every == 0):
            self.save_last()

        model = self.model
        if self.step < self.total_steps:
            pass  # stopped early on request: return the current weights
        elif self.best_state is None:
            raise RuntimeError("CLIP training produced no finite loss (diverged or empty batches)")
        else:
            model.load_state_dict(self.best_state)
        model.eval()
        return ClipTrainResult(
            model=model, history=self.history, best_epoch=self.best_epoch,
            best_val_loss=self._best_val_loss(), steps=self.step,
            seconds=time.perf_counter() - self.started, resumed_from_step=self.resumed_from,
            world_size=self.world,
        )
