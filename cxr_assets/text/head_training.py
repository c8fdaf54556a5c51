"""Stage three of the adaptation: the latent-attention pooling head, trained on cached token states.

Trained jointly with LoRA (stage two), the head gets one step per LLM forward and backward pass:
~100 steps on this CPU, far too few for a randomly initialised head to learn anything. But once
the LoRA is merged the LLM body is frozen, so its last-layer token states are a fixed function of
the text: computed once per distinct training text, they let the head take thousands of steps in
minutes. The loop is the contrastive stage's own (`contrastive_steps`: the same pairs, hard
negatives, single-task batches, statement scoring and distillation), with a different `embed`.

With pooling 'mean_and_latent_attention' the loss sees the embedding the encoder will return:
the frozen post-processed mean beside the head's output (pooling.mean_and_head), so the head
learns what the mean misses rather than replacing it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


class TokenStates:
    """Last-layer token states of each distinct text (embedded positions only, float16)."""

    def __init__(self, states: dict[str, Any]) -> None:
        self.states = states

    @classmethod
    def compute(cls, body: Any, tokenizer: Any, texts: list[str], max_length: int,
                batch_size: int = 16, progress: bool = True) -> TokenStates:
        """One inference pass of the (merged, frozen) model or body over the distinct `texts`,
        longest first."""
        import torch
        from tqdm.auto import tqdm

        from cxr_assets.text.base_model import backbone
        from cxr_assets.text.tokenization import position_ids_from_mask, tokenize_with_instruction

        body = backbone(body)
        distinct = list(dict.fromkeys(texts))
        lengths = [len(ids) for ids in tokenizer(distinct, truncation=True,
                                                 max_length=max_length)["input_ids"]]
        order = sorted(range(len(distinct)), key=lambda i: -lengths[i])
        states: dict[str, Any] = {}
        was_training = body.training
        body.eval()
        try:
            with torch.inference_mode():
                for start in tqdm(range(0, len(order), batch_size), desc="token states",
                                  disable=not progress):
                    chunk = [distinct[i] for i in order[start:start + batch_size]]
                    batch = tokenize_with_instruction(tokenizer, chunk, None, max_length)
                    attention = batch["attention_mask"]
                    hidden = body(input_ids=batch["input_ids"], attention_mask=attention,
                                  position_ids=position_ids_from_mask(attention)).last_hidden_state
                    keep = batch["embed_mask"].bool()
                    for row, text in enumerate(chunk):
                        states[text] = hidden[row][keep[row]].to(torch.float16).clone()
        finally:
            body.train(was_training)
        return cls(states)

    def save(self, file: Path, key: str) -> None:
        """Write the states for a resumed run (atomic: a kill mid-write leaves no file)."""
        import torch

        file = Path(file)
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(f".{file.name}.{uuid.uuid4().hex[:8]}")
        torch.save({"key": key, "texts": list(self.states), "states": list(self.states.values())},
                   tmp)
        tmp.replace(file)

    @classmethod
    def load(cls, file: Path, key: str) -> TokenStates | None:
        """The states `save` wrote for the run `key`; None when absent or from another run."""
        import torch

        if not Path(file).is_file():
            return None
        stored = torch.load(file, map_location="cpu", weights_only=True)
        if stored.get("key") != key:
            return None
        return cls(dict(zip(stored["texts"], stored["states"])))

    def batch(self, texts: list[str]) -> tuple[Any, Any]:
        """Left-padded float32 [B, T, D] states and their [B, T] mask (as the encoder pads)."""
        import torch

        missing = [t for t in texts if t not in self.states]
        if missing:
            raise KeyError(f"no cached token states for {len(missing)} texts, e.g. {missing[0][:60]!r}")
        rows = [self.states[t] for t in texts]
        length = max(r.shape[0] for r in rows)
        hidden = torch.zeros(len(rows), length, rows[0].shape[1])
        mask = torch.zeros(len(rows), length)
        for i, r in enumerate(rows):
            hidden[i, length - r.shape[0]:] = r.float()
            mask[i, length - r.shape[0]:] = 1
        return hidden, mask


class CachedTeacher:
    """A teacher encoder's vectors computed once for every training text (the head takes
    thousands of steps; re-encoding each batch with MiniLM would cost more than the head)."""

    def __init__(self, teacher: Any, texts: list[str], batch_size: int = 64) -> None:
        distinct = list(dict.fromkeys(texts))
        vectors = np.asarray(teacher.encode(distinct, batch_size=batch_size, progress=False),
                             dtype=np.float32)
        self.vectors = dict(zip(distinct, vectors))

    def encode(self, texts: list[str], progress: bool = False, **_: Any) -> np.ndarray:
        return np.stack([self.vectors[t] for t in texts])


def train_pooling_head(
    head: Any,
    states: TokenStates,
    pairs: list[tuple[str, str]],
    params: Any,
    seed: int,
    hard_negatives: list[str | None] | None = None,
    tasks: list[str] | None = None,
    teacher: Any = None,
    progress: bool = True,
    log_fn: Callable[[int, float], None] | None = None,
    pooling: str = "latent_attention",
    mean_weight: float = 0.5,
    postprocess: Any = None,
    start_step: int = 0,
    optimizer_state: dict | None = None,
    on_step: Callable[[int, Any], None] | None = None,
) -> list[float]:
    """`params.steps` contrastive steps on the head alone (params: ContrastiveParams); returns
    the losses. The head is left in eval mode. pooling: 'latent_attention' or
    'mean_and_latent_attention' (then `mean_weight` and the mean's fitted `postprocess`, an
    EmbeddingPostprocess or None, shape the embedding as TextEncoder.encode does). start_step,
    optimizer_state and on_step resume a killed run as in contrastive_steps."""
    import torch

    from cxr_assets.text.contrastive import contrastive_steps
    from cxr_assets.text.pooling import HEAD_MODES, mean_and_head, pool

    if pooling not in HEAD_MODES:
        raise ValueError(f"pooling {pooling!r} has no head to train (one of {HEAD_MODES})")
    center = None if postprocess is None else torch.from_numpy(postprocess.mean)
    scale = None if postprocess is None else torch.from_numpy(postprocess.scale)
    head.train()

    def embed(texts: list[str], is_query: bool) -> Any:
        hidden, mask = states.batch(texts)
        raw = pool(hidden, mask, pooling, head)
        if pooling == "mean_and_latent_attention":
            return mean_and_head(raw, mean_weight, center, scale)
        return raw

    try:
        return contrastive_steps(embed, [p for p in head.parameters() if p.requires_grad], pairs,
                                 params, seed, hard_negatives, tasks, teacher=teacher,
                                 progress=progress, log_fn=log_fn, desc="pooling head",
                                 start_step=start_step, optimizer_state=optimizer_state,
                                 on_step=on_step)
    finally:
        head.eval()
