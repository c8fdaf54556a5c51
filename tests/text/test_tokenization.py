"""Instruction + text tokenization: left padding, embed_mask placement, truncation clamp, errors."""

from __future__ import annotations

import pytest
import torch

from cxr_assets.text.tokenization import (
    SEPARATOR,
    position_ids_from_mask,
    tokenize_with_instruction,
)

INSTRUCTION = "Retrieve the chest X-ray report that matches this report"


def _embedded_text(tokenizer, batch, row: int) -> str:
    ids = batch["input_ids"][row][batch["embed_mask"][row].bool()]
    return tokenizer.decode(ids).strip()


def test_no_instruction_embeds_every_real_token(tokenizer, reports) -> None:
    batch = tokenize_with_instruction(tokenizer, reports[:3], None, 64)
    assert torch.equal(batch["embed_mask"], batch["attention_mask"])
    assert torch.equal(
        tokenize_with_instruction(tokenizer, reports[:3], "", 64)["embed_mask"],
        batch["attention_mask"],
    )
    for row, text in enumerate(reports[:3]):
        assert (
            tokenizer.decode(batch["input_ids"][row][batch["attention_mask"][row].bool()]) == text
        )


def test_left_padding_and_pad_id(tokenizer) -> None:
    batch = tokenize_with_instruction(
        tokenizer, ["Normal chest.", "Small left pleural effusion, unchanged."], None, 64
    )
    mask = batch["attention_mask"]
    assert mask[0, 0] == 0 and mask[0, -1] == 1 and bool(mask[1].all())
    # Real tokens are contiguous at the right end.
    assert torch.equal(mask[0], torch.sort(mask[0]).values)
    assert bool((batch["input_ids"][0][~mask[0].bool()] == tokenizer.pad_token_id).all())
    assert position_ids_from_mask(mask)[0, -1] == int(mask[0].sum()) - 1


def test_instruction_is_seen_but_not_embedded(tokenizer, reports) -> None:
    batch = tokenize_with_instruction(tokenizer, reports[:2], INSTRUCTION, 128)
    for row, text in enumerate(reports[:2]):
        assert _embedded_text(tokenizer, batch, row) == text
        real = batch["attention_mask"][row].bool()
        instruction_part = batch["input_ids"][row][real & ~batch["embed_mask"][row].bool()]
        assert tokenizer.decode(instruction_part) == INSTRUCTION + ";"
    # embed_mask is a subset of attention_mask
    assert bool((batch["embed_mask"] <= batch["attention_mask"]).all())


def test_truncation_never_spills_into_instruction(tokenizer) -> None:
    long_text = " ".join(["Bilateral patchy airspace opacities."] * 30)
    n_instruction = len(tokenizer(INSTRUCTION + ";")["input_ids"])
    batch = tokenize_with_instruction(
        tokenizer, [long_text, "Normal."], INSTRUCTION, n_instruction + 5
    )
    assert batch["input_ids"].shape[1] == n_instruction + 5
    assert int(batch["embed_mask"][0].sum()) == 5  # only the surviving text tokens
    assert tokenizer.decode(batch["input_ids"][0][:n_instruction]) == INSTRUCTION + ";"
    assert _embedded_text(tokenizer, batch, 1) == "Normal."
    with pytest.raises(ValueError, match="instruction alone fills"):
        tokenize_with_instruction(tokenizer, ["Normal."], INSTRUCTION, n_instruction)


def test_separator_carries_its_own_instruction(tokenizer) -> None:
    own = tokenize_with_instruction(
        tokenizer, [f"Find effusion; {SEPARATOR}Small left effusion."], None, 64
    )
    explicit = tokenize_with_instruction(tokenizer, ["Small left effusion."], "Find effusion", 64)
    for key in own:
        assert torch.equal(own[key], explicit[key])
    with pytest.raises(ValueError, match="own instruction"):
        tokenize_with_instruction(tokenizer, [f"A; {SEPARATOR}text"], "B", 64)


@pytest.mark.parametrize("bad", [[""], ["ok", "   "], []])
def test_empty_inputs_are_rejected(tokenizer, bad) -> None:
    with pytest.raises(ValueError):
        tokenize_with_instruction(tokenizer, bad, None, 64)
