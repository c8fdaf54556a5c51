"""Supervised contrastive training (LLM2Vec step 3) on (query, positive) report pairs.

InfoNCE over L2-normalised pooled embeddings: each query must pick its own positive among all
positives of the batch, plus one optional hard negative per pair; with `symmetric` each positive
must also pick its own query (pairs are then learned in both directions, as the evaluation and
the CLIP stage use them). Candidates whose text equals the query's positive are masked out:
identical normal reports are common and are not negatives. An optional distillation term pulls
the in-batch similarity distribution towards a sentence-encoder teacher's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cxr_assets.config import ContrastiveParams
from cxr_assets.text.statements import TASK as FINDING_STATEMENT_TASK
from cxr_assets.text.statements import label_aware_mask


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


def contrastive_loss(queries: Any, candidates: Any, scale: float, same_as_positive: Any,
                     symmetric: bool = False) -> Any:
    """Cross-entropy of scaled cosine scores; query i's target is candidate i.

    same_as_positive [B, C] bool: candidates other than i that are textually query i's positive,
    excluded from the softmax. symmetric: also each positive (the first B candidates) must pick
    its own query among the B queries, and the two directions are averaged.
    """
    import torch
    import torch.nn.functional as F

    scores = scale * F.normalize(queries, dim=-1) @ F.normalize(candidates, dim=-1).T
    mask = same_as_positive.to(scores.device)
    targets = torch.arange(queries.shape[0], device=scores.device)
    forward = F.cross_entropy(scores.masked_fill(mask, float("-inf")), targets)
    if not symmetric:
        return forward
    b = queries.shape[0]
    backward_scores = scores[:, :b].T.masked_fill(mask[:, :b].T, float("-inf"))
    return 0.5 * (forward + F.cross_entropy(backward_scores, targets))


def distillation_loss(student_q: Any, student_c: Any, teacher_q: Any, teacher_c: Any,
                      scale: float, mask: Any) -> Any:
    """KL(teacher || student) between in-batch similarity distributions (query rows over the
    candidates), both as scaled cosines; masked candidates are left out of both."""
    import torch.nn.functional as F

    def log_probs(q: Any, c: Any) -> Any:
        scores = scale * F.normalize(q, dim=-1) @ F.normalize(c, dim=-1).T
        return F.log_softmax(scores.masked_fill(mask, -1e4), dim=-1)

    teacher = log_probs(teacher_q.to(student_q.device).float(), teacher_c.to(student_q.device).float())
    return F.kl_div(log_probs(student_q, student_c), teacher, log_target=True, reduction="batchmean")


def same_text_mask(n_queries: int, candidates: list[str]) -> Any:
    """[B, C] True where candidate j (not i) has the same text as query i's positive."""
    import torch

    keys = [c.strip() for c in candidates]
    return torch.tensor([[j != i and keys[j] == keys[i] for j in range(len(keys))]
                         for i in range(n_queries)])


def own_pair_mask(has_negative: list[bool]) -> Any:
    """[B, C] True everywhere but at query i's own positive and own hard negative (if any).

    For tasks whose in-batch candidates are mostly true for every query (short finding
    statements: "No pneumothorax." fits most normal reports), the softmax is over the pair only.
    """
    import torch

    n = len(has_negative)
    mask = torch.ones(n, n + sum(has_negative), dtype=torch.bool)
    column = n
    for i, has in enumerate(has_negative):
        mask[i, i] = False
        if has:
            mask[i, column] = False
            column += 1
    return mask


def contrastive_steps(
    embed: Callable[[list[str], bool], Any],
    trainable: list[Any],
    pairs: list[tuple[str, str]],
    params: ContrastiveParams,
    seed: int,
    hard_negatives: list[str | None] | None = None,
    tasks: list[str] | None = None,
    steps: int | None = None,
    teacher: Any = None,
    progress: bool = True,
    log_fn: Callable[[int, float], None] | None = None,
    start_step: int = 0,
    optimizer_state: dict | None = None,
    on_step: Callable[[int, Any], None] | None = None,
    desc: str = "contrastive",
) -> list[float]:
    """The contrastive loop for any encoder: `embed(texts, is_query)` -> [N, D] with grad.

    Batches, dropout and the learning-rate schedule (warm-up + cosine) depend only on the seed
    and the step, so a run resumed at `start_step` (with the saved optimizer state) takes the
    same steps as an uninterrupted one. `teacher.encode(texts)` (optional) adds the distillation
    term with weight params.distill_weight. on_step(step, optimizer) runs after each step.
    """
    import torch
    from tqdm.auto import tqdm

    from cxr_assets.text.mntp import batch_indices, lr_at, optimizer_step

    steps = params.steps if steps is None else int(steps)
    if steps == 0:
        return []
    _check_pairs(pairs, hard_negatives)
    if len(pairs) < 2:
        raise ValueError(
            f"contrastive training needs at least 2 pairs (in-batch negatives), got {len(pairs)}"
        )
    if tasks is not None and len(tasks) != len(pairs):
        raise ValueError(f"tasks has {len(tasks)} items, expected one per pair ({len(pairs)})")
    if params.distill_weight > 0 and teacher is None:
        raise ValueError("contrastive.distill_weight > 0 needs a teacher encoder")
    optimizer = torch.optim.AdamW(trainable, lr=params.lr, weight_decay=0.0)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    batches = list(
        task_batches(tasks, params.batch_size, steps, seed)
        if tasks is not None
        else batch_indices(len(pairs), params.batch_size, steps, seed)
    )
    losses: list[float] = []
    bar = tqdm(range(start_step, steps), total=steps, initial=start_step, desc=desc,
               disable=not progress)
    for step in bar:
        index = batches[step]
        torch.manual_seed(seed * 100_003 + step)  # dropout: a function of the step (resumable)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, params.lr, params.warmup_steps)
        queries = [pairs[i][0] for i in index]
        candidates = [pairs[i][1] for i in index]
        if hard_negatives is not None:
            candidates += [hard_negatives[i] for i in index if hard_negatives[i]]
        q, c = embed(queries, True), embed(candidates, False)
        if tasks is not None and tasks[index[0]] == FINDING_STATEMENT_TASK:
            same = (own_pair_mask([bool(hard_negatives and hard_negatives[i]) for i in index])
                    if params.statement_scoring == "pair_only"
                    else label_aware_mask(queries, candidates))
        else:
            same = same_text_mask(len(index), candidates)
        loss = contrastive_loss(q, c, params.loss_scale, same, symmetric=params.symmetric)
        if params.distill_weight > 0:
            with torch.no_grad():
                t_q = torch.as_tensor(teacher.encode(queries, progress=False))
                t_c = torch.as_tensor(teacher.encode(candidates, progress=False))
            loss = loss + params.distill_weight * distillation_loss(
                q, c, t_q, t_c, params.loss_scale, same.to(q.device))
        losses.append(optimizer_step(loss, optimizer, trainable, bar, step, log_fn))
        if on_step is not None:
            on_step(step, optimizer)
    return losses


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
    teacher: Any = None,
    start_step: int = 0,
    optimizer_state: dict | None = None,
    on_step: Callable[[int, Any], None] | None = None,
    mean_taps: Any = None,
) -> list[float]:
    """Run `params.steps` (or `steps`) InfoNCE steps on `pairs` with a LoRA LLM; returns the losses.

    Only LoRA weights are updated, plus the whole latent-attention head when pooling uses one
    (it starts random, so it must learn; LLM2Vec4CXR trains it in this stage too).
    Queries carry `instruction` when it is not empty, candidates never do.
    tasks: one task name per pair (e.g. the variant kind); every batch then holds one task only
    (LLM2Vec's single-task batches: in-batch negatives of another task are too easy).
    mean_taps: the layers the mean is read from (pooling.MeanTaps; default the last), as the
    encoder will embed.
    """
    from cxr_assets.text.base_model import backbone
    from cxr_assets.text.mntp import lora_parameters
    from cxr_assets.text.pooling import LAST_LAYER, POOLING_MODES, embed_batch
    from cxr_assets.text.tokenization import tokenize_with_instruction

    if pooling not in POOLING_MODES:
        raise ValueError(f"pooling must be one of {POOLING_MODES}, got {pooling!r}")
    if pooling == "mean_and_latent_attention":
        raise ValueError("pooling 'mean_and_latent_attention' trains its body mean-pooled "
                         "(pooling.body_pooling) and its head in stage three (head_training)")
    if (params.steps if steps is None else int(steps)) == 0:
        return []
    _check_pairs(pairs, hard_negatives)
    trainable = lora_parameters(model)
    if pooling == "latent_attention":
        if pooling_head is None:
            raise ValueError("pooling 'latent_attention' needs pooling_head to train")
        pooling_head.train()
        trainable = trainable + [p for p in pooling_head.parameters() if p.requires_grad]
    body = backbone(model)

    def embed(texts: list[str], is_query: bool) -> Any:
        batch = tokenize_with_instruction(tokenizer, texts, (instruction or None) if is_query
                                          else None, max_length)
        return embed_batch(body, batch, pooling, pooling_head, mean_taps or LAST_LAYER)

    was_training = model.training
    model.train()
    try:
        return contrastive_steps(embed, trainable, pairs, params, seed, hard_negatives, tasks,
                                 steps, teacher, progress, log_fn, start_step, optimizer_state,
                                 on_step)
    finally:
        model.train(was_training)
        if pooling_head is not None:
            pooling_head.eval()
