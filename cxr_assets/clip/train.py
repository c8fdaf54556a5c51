"""Single-process CLIP trainer on cached PNG images and cached report embeddings.

One explicit loop: load batch -> augment -> encode both towers -> symmetric InfoNCE -> clip
gradients -> AdamW step -> warmup/cosine LR -> clamp logit_scale. The pieces (dataset, parameter
groups, LR schedule, loss evaluation) are separate functions so gradient caching, DDP or a LoRA
text tower can replace one piece without rewriting the loop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cxr_assets.clip.loss import clip_loss
from cxr_assets.clip.model import ClipModelConfig, DualTowerClip
from cxr_assets.config import ClipParams
from cxr_assets.vision.transforms import load_cached_image, train_augment

GRAD_CLIP_NORM = 1.0
LogFn = Callable[[int, dict], None]


@dataclass
class ClipTrainResult:
    model: DualTowerClip
    # One dict per epoch: epoch, train_loss, val_loss, logit_scale, lr, seconds, data_wait_fraction.
    history: list[dict]
    best_epoch: int
    best_val_loss: float
    steps: int
    seconds: float


class CachedPairDataset(Dataset):
    """(image tensor [1, S, S], text embedding [D]) pairs; images are read from disk per item."""

    def __init__(self, image_paths: Sequence[Path], text_embeddings: np.ndarray, image_size: int):
        self.image_paths = [Path(p) for p in image_paths]
        self.text_embeddings = torch.from_numpy(text_embeddings)
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = load_cached_image(self.image_paths[index], self.image_size)
        return image, self.text_embeddings[index]


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


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay matrices/kernels only; norms, biases and logit_scale are not decayed."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim < 2 or name == "logit_scale" or name.endswith(".bias"):
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def lr_multiplier(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup to 1 over `warmup_steps`, then cosine decay to 0 at `total_steps`."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def evaluate_loss(model: DualTowerClip, loader: DataLoader, device: torch.device) -> float:
    """Mean in-batch CLIP loss over fixed batches (weighted by batch size), no augmentation.

    Batches of one pair are skipped: their contrastive loss is trivially zero.
    """
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for images, texts in loader:
        if images.shape[0] < 2:
            continue
        image_f, text_f, scale = model(images.to(device), texts.to(device))
        total += float(clip_loss(image_f, text_f, scale)) * images.shape[0]
        count += images.shape[0]
    model.train(was_training)
    return total / count if count else float("nan")


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
    device: str | torch.device = "cpu",
) -> ClipTrainResult:
    """Train a DualTowerClip and return it with the weights of its best validation epoch.

    With fewer than 2 validation pairs there is no meaningful validation loss: the epoch with
    the lowest training loss is kept instead and val_loss / best_val_loss are NaN.
    `log_fn(step, metrics)` receives per-step train metrics and per-epoch summaries.
    """
    train_text = _check_pairs("train", train_images, train_text_emb)
    val_text = _check_pairs("val", val_images, val_text_emb)
    if len(train_images) < 2:
        raise ValueError(f"train_clip needs at least 2 training pairs, got {len(train_images)}")
    if len(val_images) and val_text.shape[1] != train_text.shape[1]:
        raise ValueError(
            f"val_text_emb dim {val_text.shape[1]} != train_text_emb dim {train_text.shape[1]}"
        )
    device = torch.device(device)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(params.threads)
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    try:
        # fork_rng: seed locally so training is reproducible without touching the caller's RNG.
        with torch.random.fork_rng(devices=rng_devices):
            torch.manual_seed(seed)
            return _train(
                train_images,
                train_text,
                val_images,
                val_text,
                params,
                text_encoder_hash,
                seed,
                progress,
                log_fn,
                device,
            )
    finally:
        torch.set_num_threads(previous_threads)


def _train(
    train_images: list[Path],
    train_text: np.ndarray,
    val_images: list[Path],
    val_text: np.ndarray,
    params: ClipParams,
    text_encoder_hash: str,
    seed: int,
    progress: bool,
    log_fn: LogFn | None,
    device: torch.device,
) -> ClipTrainResult:
    from tqdm.auto import tqdm

    started = time.perf_counter()
    config = ClipModelConfig(
        vision_backbone=params.vision_backbone,
        image_size=params.image_size,
        text_dim=int(train_text.shape[1]),
        embed_dim=params.embed_dim,
        init_logit_scale=params.init_logit_scale,
        max_logit_scale=params.max_logit_scale,
        text_encoder_hash=text_encoder_hash,
    )
    model = DualTowerClip(config, vision_pretrained_path=params.vision_pretrained_path).to(device)

    batch_size = min(params.batch_size, len(train_images))
    train_loader = DataLoader(
        CachedPairDataset(train_images, train_text, params.image_size),
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,  # equal-sized batches keep the contrastive loss comparable across steps
        num_workers=0,
        generator=torch.Generator().manual_seed(seed),
    )
    has_val = len(val_images) >= 2
    val_loader = DataLoader(
        CachedPairDataset(val_images, val_text, params.image_size),
        batch_size=batch_size,
        shuffle=False,
        num_workers=0,
    )
    augment_gen = torch.Generator().manual_seed(seed + 1)

    optimizer = torch.optim.AdamW(param_groups(model, params.weight_decay), lr=params.lr)
    total_steps = params.epochs * len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_multiplier(s, params.warmup_steps, total_steps)
    )

    history: list[dict] = []
    best_state: dict[str, torch.Tensor] | None = None
    best_epoch, best_score = 0, math.inf
    step = 0
    bar = tqdm(total=total_steps, desc="clip train", disable=not progress, leave=False)
    try:
        for epoch in range(1, params.epochs + 1):
            model.train()
            epoch_start = time.perf_counter()
            wait, losses = 0.0, []
            batches = iter(train_loader)
            while True:
                fetch_start = time.perf_counter()
                try:
                    images, texts = next(batches)
                except StopIteration:
                    break
                wait += time.perf_counter() - fetch_start
                images = train_augment(images, augment_gen).to(device)
                texts = texts.to(device)

                image_f, text_f, scale = model(images, texts)
                loss = clip_loss(image_f, text_f, scale)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP_NORM)
                optimizer.step()
                scheduler.step()
                model.clamp_logit_scale_()

                step += 1
                losses.append(float(loss.detach()))
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{losses[-1]:.4f}")
                if log_fn is not None:
                    log_fn(
                        step,
                        {
                            "train_loss": losses[-1],
                            "lr": optimizer.param_groups[0]["lr"],
                            "logit_scale": float(model.logit_scale.detach()),
                        },
                    )

            train_loss = float(np.mean(losses))
            val_loss = evaluate_loss(model, val_loader, device) if has_val else float("nan")
            seconds = time.perf_counter() - epoch_start
            record = {
                "epoch": epoch,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "logit_scale": float(model.logit_scale.detach()),
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": seconds,
                "data_wait_fraction": wait / seconds if seconds > 0 else 0.0,
            }
            history.append(record)
            if log_fn is not None:
                log_fn(
                    step,
                    {f"epoch_{k}": float(v) for k, v in record.items() if k != "epoch"}
                    | {"epoch": float(epoch)},
                )

            score = val_loss if has_val else train_loss
            if score < best_score:  # NaN never wins; the first finite epoch always does
                best_score, best_epoch = score, epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    finally:
        bar.close()

    if best_state is None:
        raise RuntimeError("CLIP training produced no finite loss (diverged or empty batches)")
    model.load_state_dict(best_state)
    model.eval()
    return ClipTrainResult(
        model=model,
        history=history,
        best_epoch=best_epoch,
        best_val_loss=best_score if has_val else float("nan"),
        steps=step,
        seconds=time.perf_counter() - started,
    )
