"""Bidirectional attention really is bidirectional (transformers 5 ignores the old llm2vec hook)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cxr_assets.text.base_model import load_causal_lm
from cxr_assets.text.bidirectional import enable_bidirectional, is_bidirectional


def _first_token_states(
    model, ids_a: list[int], ids_b: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    batch = torch.tensor([ids_a, ids_b])
    with torch.inference_mode():
        hidden = model.model(
            input_ids=batch, attention_mask=torch.ones_like(batch)
        ).last_hidden_state
    return hidden[0, 0], hidden[1, 0]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_last_token_reaches_first_token_only_when_bidirectional(
    tiny_dir: Path, tokenizer, attn: str
) -> None:
    model, _ = load_causal_lm(tiny_dir, attn_implementation=attn)
    ids = tokenizer("Heart size is normal and the lungs are clear", add_special_tokens=False)[
        "input_ids"
    ]
    changed = ids[:-1] + [tokenizer.convert_tokens_to_ids("Ġeffusion")]
    assert changed != ids

    a, b = _first_token_states(model, ids, changed)
    assert torch.equal(a, b), "causal model: token 0 must not see the last token"
    assert not is_bidirectional(model, tokenizer)

    enable_bidirectional(model)
    a, b = _first_token_states(model, ids, changed)
    assert (a - b).abs().max() > 1e-4, "bidirectional model: token 0 must see the last token"
    assert is_bidirectional(model, tokenizer)
    assert model.config.is_causal is False


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_padding_only_mask(tiny_dir: Path, tokenizer, attn: str) -> None:
    """Left padding is masked out and nothing else is: padded rows equal their unpadded selves."""
    from cxr_assets.text.tokenization import position_ids_from_mask, tokenize_with_instruction

    model, _ = load_causal_lm(tiny_dir, attn_implementation=attn)
    enable_bidirectional(model)
    texts = [
        "No acute disease.",
        "Mild cardiomegaly with a small left pleural effusion and atelectasis.",
    ]
    batch = tokenize_with_instruction(tokenizer, texts, None, 64)
    assert batch["attention_mask"][0, 0] == 0  # the short text is left-padded
    with torch.inference_mode():
        padded = model.model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=position_ids_from_mask(batch["attention_mask"]),
        ).last_hidden_state
        alone = model.model(
            input_ids=torch.tensor([tokenizer(texts[0])["input_ids"]])
        ).last_hidden_state
    real = batch["attention_mask"][0].bool()
    torch.testing.assert_close(padded[0, real], alone[0], atol=1e-5, rtol=1e-4)


def test_enable_bidirectional_rejects_non_models() -> None:
    with pytest.raises(ValueError, match="config"):
        enable_bidirectional(torch.nn.Linear(2, 2))
