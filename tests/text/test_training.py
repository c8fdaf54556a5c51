"""MNTP and contrastive training on the tiny model: losses move, only LoRA weights change."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from cxr_assets.config import ContrastiveParams, MntpParams
from cxr_assets.text.base_model import load_causal_lm
from cxr_assets.text.bidirectional import enable_bidirectional
from cxr_assets.text.contrastive import contrastive_loss, train_contrastive
from cxr_assets.text.mntp import batch_indices, corrupt, mask_token_id, mntp_loss, train_mntp


def _lora_model(tiny_dir: Path, dropout: float = 0.0):
    from peft import LoraConfig, get_peft_model

    model, tokenizer = load_causal_lm(tiny_dir)
    enable_bidirectional(model)
    torch.manual_seed(0)
    config = LoraConfig(
        r=8,
        lora_alpha=16,
        lora_dropout=dropout,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
    )
    return get_peft_model(model, config), tokenizer


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _changed(before: dict[str, torch.Tensor], model) -> set[str]:
    return {
        name for name, p in model.named_parameters() if not torch.equal(before[name], p.detach())
    }


def test_mntp_lowers_the_masked_prediction_loss(tiny_dir: Path, reports) -> None:
    model, tokenizer = _lora_model(tiny_dir)

    def held_out_loss() -> float:  # same masks before and after training
        model.eval()
        with torch.no_grad():
            return float(
                mntp_loss(model, tokenizer, reports, 0.3, 64, torch.Generator().manual_seed(123))
            )

    before_loss, before = held_out_loss(), _snapshot(model)
    logged: list[tuple[int, float]] = []
    params = MntpParams(steps=25, batch_size=4, lr=1e-2, mask_probability=0.3)
    losses = train_mntp(
        model,
        tokenizer,
        reports,
        params,
        64,
        seed=0,
        progress=False,
        log_fn=lambda step, loss: logged.append((step, loss)),
    )
    assert len(losses) == 25 and all(math.isfinite(x) for x in losses)
    assert [s for s, _ in logged] == list(range(25)) and [x for _, x in logged] == losses
    assert held_out_loss() < before_loss - 0.1
    changed = _changed(before, model)
    assert changed and all("lora_" in name for name in changed)


def test_corrupt_respects_shift_and_padding(tokenizer) -> None:
    from cxr_assets.text.tokenization import tokenize_with_instruction

    batch = tokenize_with_instruction(
        tokenizer, ["Normal chest.", "Small effusion on the left, stable since prior."], None, 64
    )
    mask_id = mask_token_id(tokenizer)
    assert tokenizer.convert_ids_to_tokens(mask_id) == "_"  # SmolLM2 has no [MASK]: LLM2Vec's blank
    corrupted, targets = corrupt(
        batch["input_ids"],
        batch["attention_mask"],
        0.99,
        mask_id,
        len(tokenizer),
        tokenizer.all_special_ids,
        torch.Generator().manual_seed(0),
    )
    real = batch["attention_mask"].bool()
    first_real = real.int().argmax(dim=1)
    assert not bool((targets & ~real).any()), "padding must never be a target"
    assert not bool(targets[torch.arange(2), first_real].any()), (
        "first real token has no predecessor"
    )
    assert bool((corrupted[targets] == mask_id).float().mean() > 0.5)
    assert torch.equal(corrupted[~targets], batch["input_ids"][~targets])


def test_batch_indices_are_distinct_within_batches_and_cover_epochs() -> None:
    batches = list(batch_indices(5, 3, 10, seed=1))
    assert len(batches) == 10
    assert all(len(b) == 3 and len(set(b)) == 3 for b in batches)
    assert {i for b in batches[:2] for i in b} == set(range(5))
    assert batches == list(batch_indices(5, 3, 10, seed=1))


def test_contrastive_trains_lora_only(tiny_dir: Path, reports) -> None:
    model, tokenizer = _lora_model(tiny_dir, dropout=0.05)
    pairs = [(r, r.upper()) for r in reports[:6]]
    negatives = [reports[(i + 1) % 6] for i in range(6)]
    before = _snapshot(model)
    params = ContrastiveParams(steps=6, batch_size=4, lr=1e-2, loss_scale=20.0)
    losses = train_contrastive(
        model,
        tokenizer,
        pairs,
        params,
        "Find the matching report",
        "mean",
        64,
        seed=0,
        hard_negatives=negatives,
        progress=False,
    )
    assert len(losses) == 6 and all(math.isfinite(x) and x >= 0 for x in losses)
    changed = _changed(before, model)
    assert changed and all("lora_" in name for name in changed)
    # Same seed, same model start => same losses (dropout and batches are seeded).
    model2, _ = _lora_model(tiny_dir, dropout=0.05)
    again = train_contrastive(
        model2,
        tokenizer,
        pairs,
        params,
        "Find the matching report",
        "mean",
        64,
        seed=0,
        hard_negatives=negatives,
        progress=False,
    )
    assert again == losses


def test_contrastive_loss_masks_duplicate_positives() -> None:
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    c = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # candidate 1 looks like query 0's answer
    plain = contrastive_loss(q, c, 20.0, torch.zeros(2, 2, dtype=torch.bool))
    masked = contrastive_loss(q, c, 20.0, torch.tensor([[False, True], [True, False]]))
    assert masked < plain and masked.item() == pytest.approx(
        (
            0.0
            + torch.nn.functional.cross_entropy(
                torch.tensor([[float("-inf"), 0.0]]), torch.tensor([1])
            ).item()
        )
        / 2,
        abs=1e-6,
    )


def test_training_refuses_bad_input(tiny_dir: Path, reports) -> None:
    model, tokenizer = load_causal_lm(tiny_dir)
    with pytest.raises(ValueError, match="LoRA"):
        train_mntp(model, tokenizer, reports, MntpParams(steps=1), 32, 0, progress=False)
    assert train_mntp(model, tokenizer, [], MntpParams(steps=0), 32, 0) == []
    peft_model, _ = _lora_model(tiny_dir)
    with pytest.raises(ValueError, match="at least 2 pairs"):
        train_contrastive(
            peft_model, tokenizer, [("a", "b")], ContrastiveParams(steps=1), "", "mean", 32, 0
        )
    with pytest.raises(ValueError, match=r"pairs\[1\]"):
        train_contrastive(
            peft_model,
            tokenizer,
            [("a", "b"), ("c", " ")],
            ContrastiveParams(steps=1),
            "",
            "mean",
            32,
            0,
        )
    with pytest.raises(ValueError, match="one per pair"):
        train_contrastive(
            peft_model,
            tokenizer,
            [("a", "b"), ("c", "d")],
            ContrastiveParams(steps=1),
            "",
            "mean",
            32,
            0,
            hard_negatives=["x"],
        )
