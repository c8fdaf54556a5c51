"""Batched pooling of token states into one embedding per text, restricted to `embed_mask`.

All modes work on the whole batch at once (no per-sample Python loop) and read positions from the
mask, so they are correct for left padding (what the encoder uses) and for right padding alike.
"""

from __future__ import annotations

from typing import Any

POOLING_MODES = ("mean", "weighted_mean", "last_token")


def pool(hidden: Any, embed_mask: Any, mode: str) -> Any:
    """Pool hidden [B, T, D] over positions where embed_mask [B, T] is 1; returns float32 [B, D].

    mean: plain average; weighted_mean: weights 1..n over the embedded tokens in order, normalised
    (LLM2Vec's position-weighted mean, later tokens have seen more context); last_token: the
    state of the last embedded token.
    """
    import torch

    if mode not in POOLING_MODES:
        raise ValueError(f"pooling mode must be one of {POOLING_MODES}, got {mode!r}")
    if hidden.dim() != 3 or embed_mask.dim() != 2 or hidden.shape[:2] != embed_mask.shape:
        raise ValueError(
            f"pool expects hidden [B, T, D] and embed_mask [B, T]; got {tuple(hidden.shape)} and {tuple(embed_mask.shape)}"
        )
    mask = embed_mask.to(device=hidden.device, dtype=torch.float32)
    counts = mask.sum(dim=1)
    if bool((counts == 0).any()):
        empty = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"rows {empty[:10]} have no token to embed (embed_mask all zero)")
    states = hidden.float()
    if mode == "mean":
        weights = mask / counts.unsqueeze(1)
    elif mode == "weighted_mean":
        ranks = mask.cumsum(dim=1) * mask  # 1..n on embedded tokens, 0 elsewhere
        weights = ranks / ranks.sum(dim=1, keepdim=True)
    else:
        positions = torch.arange(mask.shape[1], device=mask.device, dtype=torch.float32)
        last = (mask * (positions + 1)).argmax(dim=1)
        return states[torch.arange(states.shape[0], device=states.device), last]
    return torch.einsum("bt,btd->bd", weights, states)


def embed_batch(body: Any, batch: dict[str, Any], mode: str) -> Any:
    """Run the transformer body on a tokenized batch (see tokenize_with_instruction) and pool it.

    Positions are counted from each row's first real token, so an embedding does not depend on
    how much left padding its batch needed. Gradients flow unless the caller disables them.
    """
    from cxr_assets.text.tokenization import position_ids_from_mask

    device = next(body.parameters()).device
    attention = batch["attention_mask"].to(device)
    hidden = body(
        input_ids=batch["input_ids"].to(device),
        attention_mask=attention,
        position_ids=position_ids_from_mask(attention),
    ).last_hidden_state
    return pool(hidden, batch["embed_mask"].to(device), mode)
