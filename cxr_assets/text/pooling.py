"""Batched pooling of token states into one embedding per text, restricted to `embed_mask`.

All modes work on the whole batch at once (no per-sample Python loop) and read positions from the
mask, so they are correct for left padding (what the encoder uses) and for right padding alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

POOLING_MODES = ("mean", "weighted_mean", "last_token", "latent_attention",
                 "mean_and_latent_attention")
# Modes that carry a latent-attention head.
HEAD_MODES = ("latent_attention", "mean_and_latent_attention")
# Modes with a mean part (the part `MeanTaps` shapes and post-processing applies to).
MEAN_MODES = ("mean", "mean_and_latent_attention")


@dataclass(frozen=True)
class MeanTaps:
    """Where the mean part reads its token states. layers: hidden-state indices of the LLM body
    (0 = token embeddings, 1 = after the first block, -1 = the final output), one mean each, side
    by side; skip_first_token: leave the first embedded token out of the mean. A causal LLM's
    first token is an attention sink: in SmolLM2-135M's middle layers its state is about a
    hundred times larger than the others' and swamps a plain mean (600 demo-style reports,
    finding-query precision@5 of one layer's centered and scaled mean, layers 12 to 29: 0.23-0.31
    with it, 0.46-0.64 without). An early layer keeps what a report says word for word, a late
    one what it means."""

    layers: tuple[int, ...] = (-1,)
    skip_first_token: bool = False

    def __post_init__(self) -> None:
        if not self.layers:
            raise ValueError("mean taps need at least one layer")
        if len(set(self.layers)) != len(self.layers):
            raise ValueError(f"mean tap layers repeat: {list(self.layers)}")

    @property
    def needs_hidden_states(self) -> bool:
        return self.layers != (-1,)

    def check_layers(self, num_hidden_layers: int) -> None:
        """Refuse layers the body does not have (it has num_hidden_layers + 1 hidden states)."""
        bad = [layer for layer in self.layers
               if not -(num_hidden_layers + 1) <= layer <= num_hidden_layers]
        if bad:
            raise ValueError(f"mean tap layers {bad} outside the body's hidden states "
                             f"(0..{num_hidden_layers}, or negative from the end)")


LAST_LAYER = MeanTaps()


def mean_taps_of(section: Any) -> MeanTaps:
    """The MeanTaps of a `text_encoder.mean_pooling` params section."""
    return MeanTaps(tuple(section.layers), bool(section.skip_first_token))


def body_pooling(mode: str) -> str:
    """The pooling the LLM body is trained with (stage two). In 'mean_and_latent_attention' the
    body is trained mean-pooled and its head is fitted afterwards on the frozen body (stage three)."""
    return "mean" if mode == "mean_and_latent_attention" else mode


def mean_and_head(raw: Any, weight: float, center: Any = None, scale: Any = None,
                  head_width: int | None = None) -> Any:
    """Combine raw 'mean_and_latent_attention' output [B, M + D] (mean | head) into one embedding.
    The head is the last head_width columns (default: half; the mean part is wider than the head
    when it reads several layers, see MeanTaps).

    The mean half is post-processed ((x - center) / scale, when given), each half is L2-normalised
    and weighted by sqrt(weight) and sqrt(1 - weight): the cosine of two such embeddings is
    weight * cos(means) + (1 - weight) * cos(heads). Mean pooling keeps what a report says word
    for word (abbreviations, paraphrase); the head is trained on top of it to add what mean pooling
    blurs (a finding's polarity). Works on torch tensors, with gradients.
    """
    import torch
    import torch.nn.functional as F

    if not 0.0 < weight < 1.0:
        raise ValueError(f"mean weight must be in (0, 1), got {weight}")
    if head_width is None:
        if raw.dim() != 2 or raw.shape[1] % 2:
            raise ValueError(f"expected raw mean|head output [B, 2D], got {tuple(raw.shape)}")
        head_width = raw.shape[1] // 2
    if raw.dim() != 2 or not 0 < head_width < raw.shape[1]:
        raise ValueError(f"expected raw mean|head output [B, M + {head_width}], got "
                         f"{tuple(raw.shape)}")
    mean, head = raw[:, :-head_width], raw[:, -head_width:]
    if center is not None:
        mean = (mean - center.to(mean)) / scale.to(mean)
    return torch.cat([F.normalize(mean, dim=-1) * weight ** 0.5,
                      F.normalize(head, dim=-1) * (1.0 - weight) ** 0.5], dim=-1)


def make_latent_attention(hidden_size: int, num_latents: int, num_heads: int, seed: int = 0) -> Any:
    """A freshly initialised NV-Embed latent-attention head (see LatentAttentionPooling).

    Defined lazily so importing this module stays free of torch.
    """
    import torch

    if num_latents < 1:
        raise ValueError(f"num_latents must be >= 1, got {num_latents}")
    if num_heads < 1 or hidden_size % num_heads != 0:
        raise ValueError(
            f"latent attention: hidden size {hidden_size} is not divisible by num_heads={num_heads}"
        )
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # same seed, same head: the content hash stays reproducible
    try:
        head = _latent_attention_class()(hidden_size, num_latents, num_heads)
    finally:
        torch.random.set_rng_state(state)
    return head


def _latent_attention_class() -> Any:
    """Build (once) the nn.Module class; torch is imported only when a head is needed."""
    global _LATENT_CLASS
    if _LATENT_CLASS is not None:
        return _LATENT_CLASS
    import torch
    import torch.nn.functional as F
    from torch import nn

    class LatentAttentionPooling(nn.Module):
        """NV-Embed / LLM2Vec4CXR latent attention: tokens are the queries, a learned latent
        dictionary is both keys and values, then Linear-GELU-Linear, then a masked mean.

        Parameter names match the LLM2Vec4CXR checkpoint (`latents`, `multihead_attn.*`, `mlp.0/2`),
        so its `latent_attn.*` tensors load as they are. The forward pass is batched: the latents
        are projected to keys/values once per call (not once per sample as upstream does), and
        no key mask is needed because every latent is valid; padding only drops out in the mean.
        """

        def __init__(self, hidden_size: int, num_latents: int, num_heads: int) -> None:
            super().__init__()
            self.hidden_size = hidden_size
            self.num_latents = num_latents
            self.num_heads = num_heads
            self.latents = nn.Parameter(torch.randn(num_latents, hidden_size))
            self.multihead_attn = nn.MultiheadAttention(hidden_size, num_heads, batch_first=True)
            self.mlp = nn.Sequential(
                nn.Linear(hidden_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size)
            )

        def token_states(self, hidden: Any) -> Any:
            """[B, T, D] -> [B, T, D]: attention of every token to the latents, then the MLP."""
            attn = self.multihead_attn
            dim, heads = self.hidden_size, self.num_heads
            w_q, w_k, w_v = attn.in_proj_weight.split(dim)
            b_q, b_k, b_v = (
                attn.in_proj_bias.split(dim) if attn.in_proj_bias is not None else (None,) * 3
            )
            batch, length, _ = hidden.shape
            q = F.linear(hidden, w_q, b_q).view(batch, length, heads, -1).transpose(1, 2)
            k = F.linear(self.latents, w_k, b_k).view(self.num_latents, heads, -1).transpose(0, 1)
            v = F.linear(self.latents, w_v, b_v).view(self.num_latents, heads, -1).transpose(0, 1)
            # k, v [H, R, Dh] broadcast over the batch: no per-sample copy of the dictionary.
            out = F.scaled_dot_product_attention(q, k.unsqueeze(0), v.unsqueeze(0))
            out = attn.out_proj(out.transpose(1, 2).reshape(batch, length, dim))
            return self.mlp(out)

        def forward(self, hidden: Any, embed_mask: Any) -> Any:
            """Masked mean of token_states over embed_mask == 1; returns [B, D]."""
            weight = self.latents.dtype
            states = self.token_states(hidden.to(weight))
            mask = embed_mask.to(device=states.device, dtype=states.dtype)
            return torch.einsum("bt,btd->bd", mask / mask.sum(dim=1, keepdim=True), states)

    _LATENT_CLASS = LatentAttentionPooling
    return _LATENT_CLASS


_LATENT_CLASS: Any = None


def pool(hidden: Any, embed_mask: Any, mode: str, head: Any = None,
         mean_states: list[Any] | None = None, skip_first_token: bool = False) -> Any:
    """Pool hidden [B, T, D] over positions where embed_mask [B, T] is 1; returns float32 [B, D].

    mean: plain average; weighted_mean: weights 1..n over the embedded tokens in order, normalised
    (LLM2Vec's position-weighted mean, later tokens have seen more context); last_token: the
    state of the last embedded token; latent_attention: `head` (a LatentAttentionPooling);
    mean_and_latent_attention: the mean and the head's output side by side, raw [B, 2D] (see
    mean_and_head for how they become one embedding).
    The mean part (MEAN_MODES) averages `mean_states` (token states of other layers, [B, T, D]
    each, side by side: [B, k * D]) instead of `hidden` when given, and leaves each row's first
    embedded token out with skip_first_token (unless it is the row's only one); see MeanTaps.
    """
    import torch

    if mode not in POOLING_MODES:
        raise ValueError(f"pooling mode must be one of {POOLING_MODES}, got {mode!r}")
    if mode in HEAD_MODES and head is None:
        raise ValueError(f"pooling mode {mode!r} needs its pooling head (head=None)")
    if hidden.dim() != 3 or embed_mask.dim() != 2 or hidden.shape[:2] != embed_mask.shape:
        raise ValueError(
            f"pool expects hidden [B, T, D] and embed_mask [B, T]; got {tuple(hidden.shape)} and {tuple(embed_mask.shape)}"
        )
    if (mean_states is not None or skip_first_token) and mode not in MEAN_MODES:
        raise ValueError(f"mean taps apply to the mean part of {MEAN_MODES}, not {mode!r}")
    mask = embed_mask.to(device=hidden.device, dtype=torch.float32)
    counts = mask.sum(dim=1)
    if bool((counts == 0).any()):
        empty = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"rows {empty[:10]} have no token to embed (embed_mask all zero)")
    if mode in MEAN_MODES:
        mean = _mean_part(hidden if mean_states is None else mean_states, mask, skip_first_token)
        if mode == "mean":
            return mean
    if mode in HEAD_MODES:
        head_float = head.latents.dtype == torch.float32
        states = hidden.float() if head_float else hidden
        pooled = head(states, embed_mask.to(hidden.device)).float()
        if mode == "latent_attention":
            return pooled
        return torch.cat([mean, pooled], dim=-1)
    states = hidden.float()
    if mode == "weighted_mean":
        ranks = mask.cumsum(dim=1) * mask  # 1..n on embedded tokens, 0 elsewhere
        weights = ranks / ranks.sum(dim=1, keepdim=True)
    else:
        positions = torch.arange(mask.shape[1], device=mask.device, dtype=torch.float32)
        last = (mask * (positions + 1)).argmax(dim=1)
        return states[torch.arange(states.shape[0], device=states.device), last]
    return torch.einsum("bt,btd->bd", weights, states)


def _mean_part(states: Any, mask: Any, skip_first_token: bool) -> Any:
    """Masked mean of one [B, T, D] tensor, or of each of a list side by side ([B, k * D])."""
    import torch

    if skip_first_token:
        first = mask.argmax(dim=1)  # each row's first embedded position
        keep = mask.sum(dim=1) > 1
        mask = mask.clone()
        mask[torch.nonzero(keep).flatten(), first[keep]] = 0.0
    weights = mask / mask.sum(dim=1, keepdim=True)
    tensors = states if isinstance(states, (list, tuple)) else [states]
    for t in tensors:
        if t.dim() != 3 or t.shape[:2] != mask.shape:
            raise ValueError(f"mean states must be [B, T, D] like the mask {tuple(mask.shape)}, "
                             f"got {tuple(t.shape)}")
    return torch.cat([torch.einsum("bt,btd->bd", weights, t.float()) for t in tensors], dim=-1)


def embed_batch(body: Any, batch: dict[str, Any], mode: str, head: Any = None,
                taps: MeanTaps = LAST_LAYER) -> Any:
    """Run the transformer body on a tokenized batch (see tokenize_with_instruction) and pool it.

    Positions are counted from each row's first real token, so an embedding does not depend on
    how much left padding its batch needed. Gradients flow unless the caller disables them.
    taps: the layers and first-token rule of the mean part (MeanTaps; the body then returns its
    hidden states too).
    """
    from cxr_assets.text.tokenization import position_ids_from_mask

    device = next(body.parameters()).device
    attention = batch["attention_mask"].to(device)
    tapped = mode in MEAN_MODES and taps.needs_hidden_states
    out = body(
        input_ids=batch["input_ids"].to(device),
        attention_mask=attention,
        position_ids=position_ids_from_mask(attention),
        **({"output_hidden_states": True} if tapped else {}),
    )
    hidden = out.last_hidden_state
    if head is not None and head.latents.device != hidden.device:
        head.to(hidden.device)
    mean_states = [out.hidden_states[layer] for layer in taps.layers] if tapped else None
    return pool(hidden, batch["embed_mask"].to(device), mode, head, mean_states,
                taps.skip_first_token and mode in MEAN_MODES)
