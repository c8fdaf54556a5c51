"""Training pairs as the CLIP loop reads them: checked inputs, datasets and step batches.

The global batch of step `s` is a pure function of (seed, s): a per-epoch permutation of the
training pairs, cut into `batch_size` slices (the last partial slice is dropped). Under torchrun,
rank r takes the r-th contiguous part of that slice, and every image's augmentation is drawn
from a generator seeded by (seed, step, position in the global batch), so the data seen by the
whole job does not depend on the number of processes, and the step counter is the complete
data-loader position for checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from cxr_assets.clip.loss import POSITIVE_KINDS, group_ids
from cxr_assets.vision.transforms import load_cached_image, train_augment


@dataclass(frozen=True)
class Pairs:
    """One split's checked pairs, kept together so the trainer takes one object per split.

    `texts`: a float32 [N, D] embedding matrix, or N report strings for the online tower;
    `groups`: positive-group ids [N] (see `clip.loss`), None for the paired loss.
    """

    images: Sequence[Path]
    texts: np.ndarray | list[str]
    groups: torch.Tensor | None = None


# Images of a split are decoded once and held in memory when they fit in this many bytes (a
# demo split at 48 px: ~13 MB); larger sets are read from the image cache per item.
PRELOAD_MAX_BYTES = 512 << 20


class CachedPairDataset(Dataset):
    """(image tensor [1, S, S], text embedding [D] or report string) pairs. With `groups`
    (positive-group ids, see `clip.loss`) items are (image, text, group id) triples.

    Images are decoded and resized from the PNG cache once, at construction, when the split fits
    in PRELOAD_MAX_BYTES (each is otherwise decoded again in every epoch, a quarter of a 48 px
    CPU step); else read from disk per item.
    """

    def __init__(self, image_paths: Sequence[Path], text_embeddings: np.ndarray | list[str],
                 image_size: int, groups: torch.Tensor | None = None,
                 preload_max_bytes: int = PRELOAD_MAX_BYTES):
        self.image_paths = [Path(p) for p in image_paths]
        if isinstance(text_embeddings, list):
            self.text_embeddings = text_embeddings  # report strings for the online tower
        else:
            self.text_embeddings = torch.from_numpy(np.ascontiguousarray(text_embeddings))
        self.image_size = image_size
        self.groups = groups
        self.images: torch.Tensor | None = None
        if 0 < len(self.image_paths) * image_size * image_size * 4 <= preload_max_bytes:
            first = load_cached_image(self.image_paths[0], image_size)
            self.images = torch.empty((len(self.image_paths), *first.shape), dtype=first.dtype)
            self.images[0] = first
            for i, path in enumerate(self.image_paths[1:], start=1):
                self.images[i] = load_cached_image(path, image_size)

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> tuple:
        image = (self.images[index].clone() if self.images is not None
                 else load_cached_image(self.image_paths[index], self.image_size))
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


def check_reports(name: str, images: Sequence[Path], reports) -> list[str]:
    """Report strings for the online tower: one non-empty string per image."""
    reports = list(reports)
    if len(images) != len(reports):
        raise ValueError(f"{name}_images has {len(images)} paths but {len(reports)} reports")
    for i, text in enumerate(reports):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{name} report {i} is empty or not a string")
    return reports


def check_embeddings(name: str, images: Sequence[Path], text_emb: np.ndarray) -> np.ndarray:
    """Cached report embeddings as a finite float32 [N, D] matrix, one row per image."""
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


def text_keys(texts: np.ndarray | list[str]) -> list:
    """One hashable key per text: the string itself, or the bytes of its embedding row."""
    return texts if isinstance(texts, list) else [row.tobytes() for row in texts]


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
        keys = text_keys(texts)
    else:
        keys = list(groups)
        if len(keys) != n:
            raise ValueError(f"{name}_groups has {len(keys)} keys but there are {n} {name} pairs")
    return group_ids(keys)
