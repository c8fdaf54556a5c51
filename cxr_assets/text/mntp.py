"""Masked next-token prediction (MNTP, LLM2Vec step 2) on a bidirectional LLM with LoRA.

A fraction of the tokens is corrupted (BERT-style 80% mask token / 10% random token / 10%
unchanged) and token i is predicted from the hidden state at position i-1, so the pretrained
causal-LM head is reused as is. The loss only counts masked positions, and the vocabulary
projection is computed only for them (the head is the largest matrix of a small LLM).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from cxr_assets.config import MntpParams

BLANK_MASK_TOKEN = "_"  # LLM2Vec's "blank" mask for tokenizers without [MASK] (Llama family)


def lora_parameters(model: Any) -> list[Any]:
    """Trainable LoRA parameters of a peft-wrapped model; refuses a model without an adapter."""
    params = [p for name, p in model.named_parameters() if "lora_" in name and p.requires_grad]
    if not params:
        raise ValueError("model has no trainable LoRA parameters: attach a peft LoRA adapter first")
    return params


def batch_indices(n_items: int, batch_size: int, steps: int, seed: int) -> Iterator[list[int]]:
    """`steps` batches of distinct indices, walking seeded random permutations (epochs) in turn."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    size = min(batch_size, n_items)
    order: list[int] = []
    for _ in range(steps):
        if len(order) < size:
            # Refill with a fresh epoch; indices already queued stay first, no repeats in a batch.
            queued = set(order)
            order = order + [
                i for i in torch.randperm(n_items, generator=generator).tolist() if i not in queued
            ]
        batch, order = order[:size], order[size:]
        yield batch


def mask_token_id(tokenizer: Any) -> int:
    """The tokenizer's mask token, else the blank token "_" (as LLM2Vec does for Llama)."""
    if tokenizer.mask_token is not None and tokenizer.mask_token_id is not None:
        return int(tokenizer.mask_token_id)
    token_id = tokenizer.convert_tokens_to_ids(BLANK_MASK_TOKEN)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ValueError(
            f"tokenizer has no mask token and no {BLANK_MASK_TOKEN!r} token to use as a blank mask"
        )
    return int(token_id)


def corrupt(
    input_ids: Any,
    attention_mask: Any,
    probability: float,
    mask_id: int,
    vocab_size: int,
    special_ids: list[int],
    generator: Any,
) -> tuple[Any, Any]:
    """(corrupted ids, bool mask of target positions) for MNTP.

    A position can be a target only if it and its predecessor are real tokens (position i is
    predicted from i-1) and it is not a special token. At least one target per batch.
    """
    import torch

    real = attention_mask.bool()
    candidates = torch.zeros_like(real)
    candidates[:, 1:] = real[:, 1:] & real[:, :-1]
    if special_ids:
        candidates &= ~torch.isin(input_ids, torch.tensor(special_ids, dtype=input_ids.dtype))
    if not bool(candidates.any()):
        raise ValueError("MNTP batch has no maskable token (texts of a single token?)")
    chosen = (torch.rand(input_ids.shape, generator=generator) < probability) & candidates
    if not bool(chosen.any()):
        first = torch.nonzero(candidates)[0]
        chosen[first[0], first[1]] = True
    corrupted = input_ids.clone()
    draw = torch.rand(input_ids.shape, generator=generator)
    corrupted[chosen & (draw < 0.8)] = mask_id
    random_spots = chosen & (draw >= 0.8) & (draw < 0.9)
    corrupted[random_spots] = torch.randint(
        vocab_size, (int(random_spots.sum()),), generator=generator, dtype=input_ids.dtype
    )
    return corrupted, chosen


def mntp_loss(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    mask_probability: float,
    max_length: int,
    generator: Any,
) -> Any:
    """MNTP cross-entropy (scalar tensor, with grad) of one batch of texts, masks drawn from `generator`."""
    import torch.nn.functional as F

    from cxr_assets.text.base_model import backbone, output_head
    from cxr_assets.text.tokenization import position_ids_from_mask, tokenize_with_instruction

    body, head = backbone(model), output_head(model)
    device = next(body.parameters()).device
    batch = tokenize_with_instruction(tokenizer, texts, None, max_length)
    corrupted, targets = corrupt(
        batch["input_ids"],
        batch["attention_mask"],
        mask_probability,
        mask_token_id(tokenizer),
        len(tokenizer),
        [int(i) for i in tokenizer.all_special_ids],
        generator,
    )
    attention = batch["attention_mask"].to(device)
    hidden = body(
        input_ids=corrupted.to(device),
        attention_mask=attention,
        position_ids=position_ids_from_mask(attention),
    ).last_hidden_state
    # Shifted prediction: the state at i-1 predicts the original token at i.
    where = targets[:, 1:].to(device)
    logits = head(hidden[:, :-1][where])
    return F.cross_entropy(logits.float(), batch["input_ids"][:, 1:].to(device)[where])


def train_mntp(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    params: MntpParams,
    max_length: int,
    seed: int,
    progress: bool = True,
    log_fn: Callable[[int, float], None] | None = None,
    start_step: int = 0,
    optimizer_state: dict | None = None,
    on_step: Callable[[int, Any], None] | None = None,
) -> list[float]:
    """Run `params.steps` MNTP steps on `texts`, updating only LoRA weights; returns the losses.

    Masks, dropout and the learning rate (warm-up + cosine) are functions of the seed and the
    step, so a run resumed at `start_step` with its optimizer state repeats the same steps.
    """
    import torch
    from tqdm.auto import tqdm

    if params.steps == 0:
        return []
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise ValueError("train_mntp: no non-empty text to train on")
    trainable = lora_parameters(model)
    optimizer = torch.optim.AdamW(trainable, lr=params.lr, weight_decay=0.0)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)

    losses: list[float] = []
    was_training = model.training
    model.train()
    batches = list(batch_indices(len(texts), params.batch_size, params.steps, seed))
    bar = tqdm(range(start_step, params.steps), total=params.steps, initial=start_step,
               desc="MNTP", disable=not progress)
    try:
        for step in bar:
            torch.manual_seed(seed * 100_003 + step)  # dropout inside the LoRA layers
            generator = torch.Generator().manual_seed(seed * 100_019 + step)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, params.steps, params.lr, params.warmup_steps)
            loss = mntp_loss(
                model,
                tokenizer,
                [texts[i] for i in batches[step]],
                params.mask_probability,
                max_length,
                generator,
            )
            losses.append(optimizer_step(loss, optimizer, trainable, bar, step, log_fn))
            if on_step is not None:
                on_step(step, optimizer)
    finally:
        model.train(was_training)
    return losses


def fixed_batch_loss(model: Any, tokenizer: Any, texts: list[str], mask_probability: float,
                     max_length: int, seed: int = 0) -> float:
    """MNTP loss of `texts` with a fixed mask and no dropout: comparable before and after
    training (two random batches are not)."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            generator = torch.Generator().manual_seed(seed)
            return float(mntp_loss(model, tokenizer, texts, mask_probability, max_length, generator))
    finally:
        model.train(was_training)


def lr_at(step: int, steps: int, base_lr: float, warmup_steps: int) -> float:
    """Linear warm-up over `warmup_steps`, then cosine decay to 0 at `steps`."""
    import math

    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def optimizer_step(loss, optimizer, trainable, bar, step: int, log_fn) -> float:
    """One clipped AdamW step shared by both adaptation stages; returns the loss value."""
    import torch

    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
    optimizer.step()
    value = float(loss.detach())
    bar.set_postfix(loss=f"{value:.3f}")
    if log_fn is not None:
        log_fn(step, value)
    return value
