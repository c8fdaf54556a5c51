"""Supervised contrastive training (LLM2Vec step 3) on (query, positive) report pairs.

InfoNCE over L2-normalised pooled embeddings: each query (encoded WITH the instruction) must pick
its own positive (encoded WITHOUT it, as in LLM2Vec/E5) among all positives of the batch, plus one
optional hard negative per pair. Candidates whose text equals the query's positive are masked out:
identical normal reports are common and are not negatives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cxr_assets.config import ContrastiveParams


def _check_pairs(pairs: list[tuple[str, str]], hard_negatives: list[str] | None) -> None:
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise ValueError(f"pairs[{i}] must be a (query, positive) tuple, got {pair!r:.80}")
        for side, text in zip(("query", "positive"), pair):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"pairs[{i}] {side} is empty or not a string")
    if hard_negatives is not None:
        if len(hard_negatives) != len(pairs):
            raise ValueError(
                f"hard_negatives has {len(hard_negatives)} items, expected one per pair ({len(pairs)})"
            )
        for i, text in enumerate(hard_negatives):
            # None: this pair has no hard negative (only in-batch negatives for it).
            if text is not None and (not isinstance(text, str) or not text.strip()):
                raise ValueError(f"hard_negatives[{i}] is empty or not a string")


def task_batches(tasks: list[str], batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """`steps` single-task batches: a task is drawn with probability proportional to its size
    (tasks with fewer than 2 pairs are skipped), then a batch from that task's own epochs."""
    import random

    from cxr_assets.text.mntp import batch_indices

    groups: dict[str, list[int]] = {}
    for i, task in enumerate(tasks):
        groups.setdefault(str(task), []).append(i)
    groups = {k: v for k, v in sorted(groups.items()) if len(v) >= 2}
    if not groups:
        raise ValueError("single-task batching needs a task with at least 2 pairs")
    rng = random.Random(seed)
    names = list(groups)
    draws = rng.choices(names, weights=[len(groups[n]) for n in names], k=steps)
    iterators = {
        n: batch_indices(len(groups[n]), batch_size, draws.count(n), seed + k)
        for k, n in enumerate(names)
    }
    return [[groups[n][j] for j in next(iterators[n])] for n in draws]


def contrastive_loss(queries: Any, candidates: Any, scale: float, same_as_positive: Any) -> Any:
    """Cross-entropy of scaled cosine scores; query i's target is candidate i.

    same_as_positive [B, C] bool: candidates other than i that are textually query i's positive,
    excluded from the softmax.
    """
    import torch
    import torch.nn.functional as F

    scores = scale * F.normalize(queries, dim=-1) @ F.normalize(candidates, dim=-1).T
    scores = scores.masked_fill(same_as_positive.to(scores.device), float("-inf"))
    targets = torch.arange(queries.shape[0], device=scores.device)
    return F.cross_entropy(scores, targets)


def train_contrastive(
    model: Any,
    tokenizer: Any,
    pairs: list[tuple[str, str]],
    params: ContrastiveParams,
    instruction: str,
    pooling: str,
    max_length: int,
    seed: int,
    hard_negatives: list[str | None] | None = None,
    progress: bool = True,
    log_fn: Callable[[int, float], None] | None = None,
    pooling_head: Any = None,
    steps: int | None = None,
    tasks: list[str] | None = None,
) -> list[float]:
    """Run `params.steps` (or `steps`) InfoNCE steps on `pairs`; returns the losses.

    Only LoRA weights are updated, plus the whole latent-attention head when pooling uses one
    (it starts random, so it must learn; LLM2Vec4CXR trains it in this stage too).
    tasks: one task name per pair (e.g. the variant kind); every batch then holds one task only
    (LLM2Vec's single-task batches: in-batch negatives of another task are too easy).
    """
    import torch
    from tqdm.auto import tqdm

    from cxr_assets.text.base_model import backbone
    from cxr_assets.text.mntp import batch_indices, lora_parameters, optimizer_step
    from cxr_assets.text.pooling import POOLING_MODES, embed_batch
    from cxr_assets.text.tokenization import tokenize_with_instruction

    if pooling not in POOLING_MODES:
        raise ValueError(f"pooling must be one of {POOLING_MODES}, got {pooling!r}")
    steps = params.steps if steps is None else int(steps)
    if steps == 0:
        return []
    _check_pairs(pairs, hard_negatives)
    if len(pairs) < 2:
        raise ValueError(
            f"contrastive training needs at least 2 pairs (in-batch negatives), got {len(pairs)}"
        )
    trainable = lora_parameters(model)
    if pooling == "latent_attention":
        if pooling_head is None:
            raise ValueError("pooling 'latent_attention' needs pooling_head to train")
        pooling_head.train()
        trainable = trainable + [p for p in pooling_head.parameters() if p.requires_grad]
    torch.manual_seed(seed)  # dropout inside the LoRA layers
    body = backbone(model)
    optimizer = torch.optim.AdamW(trainable, lr=params.lr, weight_decay=0.0)

    losses: list[float] = []
    was_training = model.training
    model.train()
    if tasks is not None and len(tasks) != len(pairs):
        raise ValueError(f"tasks has {len(tasks)} items, expected one per pair ({len(pairs)})")
    batches = (
        task_batches(tasks, params.batch_size, steps, seed)
        if tasks is not None
        else batch_indices(len(pairs), params.batch_size, steps, seed)
    )
    bar = tqdm(batches, total=steps, desc="contrastive", disable=not progress)
    try:
        for step, index in enumerate(bar):
            queries = [pairs[i][0] for i in index]
            candidates = [pairs[i][1] for i in index]
            if hard_negatives is not None:
                candidates += [hard_negatives[i] for i in index if hard_negatives[i]]
            q = embed_batch(
                body,
                tokenize_with_instruction(tokenizer, queries, instruction or None, max_length),
                pooling,
                pooling_head,
            )
            c = embed_batch(
                body,
                tokenize_with_instruction(tokenizer, candidates, None, max_length),
                pooling,
                pooling_head,
            )
            same = torch.tensor(
                [
                    [
                        j != i and candidates[j].strip() == candidates[i].strip()
                        for j in range(len(candidates))
                    ]
                    for i in range(len(index))
                ]
            )
            loss = contrastive_loss(q, c, params.loss_scale, same)
            losses.append(optimizer_step(loss, optimizer, trainable, bar, step, log_fn))
    finally:
        model.train(was_training)
        if pooling_head is not None:
            pooling_head.eval()
    return losses
