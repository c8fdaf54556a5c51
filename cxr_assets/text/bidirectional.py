"""Turn a decoder LLM's causal self-attention into bidirectional attention (LLM2Vec step 1).

transformers >= 4.53 no longer calls `_update_causal_mask`, so the override used by the public
llm2vec code is dead and a "bidirectional" copy silently stays causal. In transformers 5.x two
switches are needed, and both are set here:
- `config.is_causal = False`: `create_causal_mask` then builds a padding-only mask (no causal
  triangle), or returns None when there is no padding;
- `is_causal = False` on every attention module: with a None mask, SDPA / flash attention would
  otherwise apply their own causal flag.
Always check the result with `is_bidirectional` rather than trusting the flags.
"""

from __future__ import annotations

from typing import Any


def _configs(model: Any) -> list[Any]:
    """Every distinct config object reachable from the model's modules (shared or per-submodel)."""
    seen: dict[int, Any] = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "to_dict"):
            seen.setdefault(id(config), config)
            text_config = getattr(config, "text_config", None)
            if text_config is not None and text_config is not config:
                seen.setdefault(id(text_config), text_config)
    return list(seen.values())


def enable_bidirectional(model: Any) -> Any:
    """Make every self-attention layer of `model` attend in both directions (in place); returns it."""
    configs = _configs(model)
    if not configs:
        raise ValueError(
            f"{type(model).__name__} has no Hugging Face config; cannot make it bidirectional"
        )
    for config in configs:
        config.is_causal = False
    flipped = 0
    for module in model.modules():
        if isinstance(getattr(module, "is_causal", None), bool) and type(module).__name__.endswith(
            "Attention"
        ):
            module.is_causal = False
            flipped += 1
    if flipped == 0:
        raise ValueError(
            f"{type(model).__name__}: found no attention module with an `is_causal` flag; "
            "this architecture is not supported by enable_bidirectional"
        )
    return model


def is_bidirectional(model: Any, tokenizer: Any) -> bool:
    """Empirical probe: does changing the LAST token change token 0's final hidden state?"""
    import torch

    from cxr_assets.text.base_model import backbone

    ids = tokenizer("The heart size is normal and the lungs are clear", add_special_tokens=False)[
        "input_ids"
    ]
    if len(ids) < 3:
        raise ValueError("probe sentence tokenized to fewer than 3 tokens; tokenizer looks broken")
    changed = list(ids)
    # Any other valid id will do; pick a neighbour of the original last id.
    changed[-1] = ids[-1] + 1 if ids[-1] + 1 < len(tokenizer) else ids[-1] - 1
    body = backbone(model)
    device = next(body.parameters()).device
    batch = torch.tensor([ids, changed], device=device)
    was_training = body.training
    body.eval()  # dropout would make any two forwards differ
    try:
        with torch.inference_mode():
            hidden = body(
                input_ids=batch, attention_mask=torch.ones_like(batch)
            ).last_hidden_state.float()
    finally:
        body.train(was_training)
    first_a, first_b = hidden[0, 0], hidden[1, 0]
    scale = first_a.abs().max().clamp(min=1e-6)
    return bool(((first_a - first_b).abs().max() / scale) > 1e-5)
