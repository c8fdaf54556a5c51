"""One CLIP trainer for one process or many (torchrun), with GradCache and exact resumption.

The loop is step-based: the global batch of step `s` is a pure function of (seed, s)
(`clip.data`), so the step counter is the complete data-loader position for checkpoints and
the data seen by the whole job does not depend on the number of processes. Each step fills the
gradients of the global-batch loss (`clip.gradcache`: plain or GradCache, averaged across
processes by `clip.distributed`), then: unscale (fp16), clip, AdamW with parameter groups
(optional layer-wise lr decay) and warmup + cosine (`clip.schedule`), clamp logit_scale,
optional EMA, checkpoint every N steps.

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
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from cxr_assets.clip import checkpoint as ckpt
from cxr_assets.clip.data import (
    CachedPairDataset,
    Pairs,
    StepBatches,
    check_embeddings,
    check_reports,
    resolve_groups,
    text_keys,
)
from cxr_assets.clip.distributed import broadcast_buffers, init_distributed, resolve_device
from cxr_assets.clip.gradcache import compute_gradients
from cxr_assets.clip.loss import group_ids, model_loss
from cxr_assets.clip.model import ClipModelConfig, DualTowerClip
from cxr_assets.clip.schedule import build_optimizer
from cxr_assets.config import ClipParams

_log = logging.getLogger(__name__)

LogFn = Callable[[int, dict], None]
__all__ = [
    "ClipTrainResult",
    "TrainerConfig",
    "epoch_score",
    "evaluate_loss",
    "train_clip",
    "validate",
]


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


@dataclass(frozen=True)
class TrainerConfig:
    """One training run apart from its data, resolved once by `train_clip` (device, process
    group, rank-0-only progress) so the trainer only reads it."""

    params: ClipParams
    text_encoder_hash: str
    seed: int
    device: torch.device
    rank: int = 0
    world: int = 1
    progress: bool = True
    checkpoint_dir: Path | None = None
    stop_after_steps: int | None = None
    text_encoder_dir: Path | None = None


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
        batch_loss = model_loss(model, image_f, text_f, image_f, text_f, 0, group)
        total += float(batch_loss) * images.shape[0]
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
        train_text = check_reports("train", train_images, train_text_emb)
        val_text = check_reports("val", val_images, val_text_emb)
    else:
        train_text = check_embeddings("train", train_images, train_text_emb)
        val_text = check_embeddings("val", val_images, val_text_emb)
    if len(train_images) < 2:
        raise ValueError(f"train_clip needs at least 2 training pairs, got {len(train_images)}")
    if not online and len(val_images) and val_text.shape[1] != train_text.shape[1]:
        raise ValueError(
            f"val_text_emb dim {val_text.shape[1]} != train_text_emb dim {train_text.shape[1]}"
        )
    train = Pairs(train_images, train_text,
                  resolve_groups("train", params.positives, train_groups, train_text))
    val = Pairs(val_images, val_text, resolve_groups("val", params.positives, val_groups, val_text))
    rank, world, local_rank = init_distributed(params.distributed.backend)
    device = torch.device(device) if device is not None else resolve_device(params.device, local_rank)
    config = TrainerConfig(
        params=params, text_encoder_hash=text_encoder_hash, seed=seed, device=device,
        rank=rank, world=world, progress=progress and rank == 0, checkpoint_dir=checkpoint_dir,
        stop_after_steps=stop_after_steps, text_encoder_dir=text_encoder_dir,
    )
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(params.threads)
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    try:
        # fork_rng: seed locally so training is reproducible without touching the caller's RNG.
        with torch.random.fork_rng(devices=rng_devices):
            torch.manual_seed(seed)
            return _Trainer(config, train, val, log_fn if rank == 0 else None).run()
    finally:
        torch.set_num_threads(previous_threads)


class _Trainer:
    """The loop's state (model, optimizer, step, history, best epoch) and its checkpoints."""

    def __init__(self, config: TrainerConfig, train: Pairs, val: Pairs,
                 log_fn: LogFn | None = None) -> None:
        params = config.params
        self.p, self.seed, self.progress, self.log_fn = params, config.seed, config.progress, log_fn
        self.device, self.rank, self.world = config.device, config.rank, config.world
        self.stop_after_steps = config.stop_after_steps
        self.ckpt_dir = Path(config.checkpoint_dir) if config.checkpoint_dir else None
        self.started = time.perf_counter()

        world = self.world
        batch = min(params.batch_size, len(train.images))
        batch -= batch % world
        if batch < 2 or batch < world:
            raise ValueError(
                f"clip.batch_size {params.batch_size} with {len(train.images)} training pairs "
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
        self.train_pairs = CachedPairDataset(train.images, train.texts, params.image_size,
                                             train.groups)
        self.val_pairs = CachedPairDataset(val.images, val.texts, params.image_size, val.groups)
        # Validation reports that are the same text (other views of a study) for val_recall.
        self.val_text_ids = group_ids(text_keys(val.texts))
        self.has_val = len(val.images) >= 2
        self.steps_per_epoch = len(train.images) // batch
        self.total_steps = self.steps_per_epoch * params.epochs

        tower = None
        if params.text_tower == "lora":
            from cxr_assets.clip.text_tower import OnlineTextTower

            tower = OnlineTextTower.from_folder(Path(config.text_encoder_dir), params.text_lora)
            text_dim = tower.dim
            text_id = ckpt.fingerprint({"reports": train.texts})
        else:
            text_dim = int(train.texts.shape[1])
            text_id = ckpt.fingerprint({"sum": float(train.texts.astype(np.float64).sum()),
                                        "shape": list(train.texts.shape)})
        model_config = ClipModelConfig(
            vision_backbone=params.vision_backbone, image_size=params.image_size,
            text_dim=text_dim, embed_dim=params.embed_dim,
            init_logit_scale=params.init_logit_scale, max_logit_scale=params.max_logit_scale,
            text_encoder_hash=config.text_encoder_hash, loss=params.loss,
            text_adapter=params.text_adapter, adapter_blocks=params.adapter_blocks,
            in_chans=params.in_chans, text_tower=params.text_tower,
        )
        self.model = DualTowerClip(model_config,
                                   vision_pretrained_path=params.vision_pretrained_path,
                                   text_tower=tower)
        self.model.to(self.device).train()
        self.ema = copy.deepcopy(self.model).eval() if params.ema_decay > 0 else None
        if self.ema is not None:
            self.ema.requires_grad_(False)
        self.optimizer, self.scheduler = build_optimizer(self.model, params, self.total_steps)
        self.autocast = _autocast_factory(params.precision, self.device)
        self.scaler = torch.amp.GradScaler("cuda") if params.precision == "fp16" else None
        self.fingerprint = ckpt.fingerprint({
            "params": params.model_dump(exclude={"checkpoint", "distributed", "workers",
                                                 "threads", "device", "epochs"}),
            "seed": self.seed, "text_encoder_hash": config.text_encoder_hash, "batch": batch,
            "train": [str(p) for p in train.images],
            "text": text_id,
        } | ({} if train.groups is None else {"groups": train.groups.tolist()}))
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
        broadcast_buffers((self.model, self.ema), self.world)

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
