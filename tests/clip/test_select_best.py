"""Which epoch the CLIP trainer keeps (`clip.select_best`) and the per-epoch validation recall."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from cxr_assets.clip.data import CachedPairDataset
from cxr_assets.clip.loss import group_ids
from cxr_assets.clip.train import evaluate_loss, train_clip, validate
from cxr_assets.config import ClipParams, ParamsError, parse_params
from cxr_assets.evaluate.retrieval import retrieval_metrics

TEXT_DIM = 24


@pytest.fixture
def pairs(png_factory):
    rng = np.random.default_rng(0)
    labels = np.arange(24) % 4
    paths = png_factory(labels, size=32)
    centres = rng.normal(size=(4, TEXT_DIM))
    texts = (centres[labels] + 0.2 * rng.normal(size=(24, TEXT_DIM))).astype(np.float32)
    texts[17] = texts[16]  # two views of one validation study share their report
    return paths[:16], texts[:16], paths[16:], texts[16:]


def _run(pairs, **overrides):
    values = {"vision_backbone": "test_vit", "image_size": 32, "embed_dim": 16, "epochs": 4,
              "batch_size": 8, "lr": 3e-3, "warmup_steps": 1, "threads": 1, "device": "cpu"}
    return train_clip(*pairs, params=ClipParams(**(values | overrides)), text_encoder_hash="h",
                      seed=0, progress=False)


def test_validate_matches_evaluate_loss_and_retrieval_metrics(pairs):
    result = _run(pairs, epochs=1)
    _, _, val_paths, val_text = pairs
    loader = DataLoader(CachedPairDataset(val_paths, val_text, 32), batch_size=3)
    ids = group_ids([row.tobytes() for row in val_text])
    loss, recall = validate(result.model, loader, torch.device("cpu"), ids)
    assert loss == evaluate_loss(result.model, loader, torch.device("cpu"))
    from cxr_assets.embed.images import embed_images, embed_texts

    image_emb = embed_images(result.model, val_paths, progress=False)
    text_emb = embed_texts(result.model, val_text)
    expected = retrieval_metrics(image_emb, text_emb, (1, 5, 10), text_groups=ids.numpy())
    assert recall == pytest.approx(expected["grp_mean_recall"], abs=1e-6)
    assert validate(result.model, loader, torch.device("cpu"))[1] == pytest.approx(
        expected["mean_recall"], abs=1e-6)


@pytest.mark.parametrize("select", ["val_loss", "val_recall", "last"])
def test_select_best_keeps_the_chosen_epoch(pairs, select):
    result = _run(pairs, select_best=select)
    history = result.history
    assert all(0.0 <= r["val_recall"] <= 1.0 for r in history)
    if select == "last":
        expected = history[-1]["epoch"]
    elif select == "val_loss":
        expected = min(history, key=lambda r: r["val_loss"])["epoch"]
    else:  # highest recall, the later epoch on ties
        best = max(r["val_recall"] for r in history)
        expected = max(r["epoch"] for r in history if r["val_recall"] == best)
    assert result.best_epoch == expected
    assert result.best_val_loss == history[expected - 1]["val_loss"]
    # The returned weights are those of the kept epoch: its validation loss reproduces.
    _, _, val_paths, val_text = pairs
    loader = DataLoader(CachedPairDataset(val_paths, val_text, 32), batch_size=8)
    assert evaluate_loss(result.model, loader, torch.device("cpu")) == pytest.approx(
        result.best_val_loss, rel=1e-5)


def test_without_validation_the_lowest_training_loss_wins(pairs):
    train_paths, train_text, _, _ = pairs
    for select in ("val_recall", "last"):
        result = train_clip(train_paths, train_text, [], np.zeros((0, TEXT_DIM), np.float32),
                            ClipParams(vision_backbone="test_vit", image_size=32, embed_dim=16,
                                       epochs=3, batch_size=8, threads=1, select_best=select),
                            "h", 0, False)
        assert math.isnan(result.best_val_loss)
        assert result.best_epoch == min(result.history, key=lambda r: r["train_loss"])["epoch"]


def test_select_best_is_validated():
    assert ClipParams().select_best == "val_loss"
    with pytest.raises(ParamsError, match=r"clip\.select_best: got 'best'"):
        parse_params({"clip": {"select_best": "best"}}, "params.yaml")


def test_each_selector_picks_its_own_epoch_from_one_history():
    # A history where the three rules disagree (the training run above happens to agree).
    from cxr_assets.clip.train import epoch_score

    history = [{"epoch": 1, "val_loss": 2.0, "val_recall": 0.30},
               {"epoch": 2, "val_loss": 2.5, "val_recall": 0.50},
               {"epoch": 3, "val_loss": 2.6, "val_recall": 0.50},
               {"epoch": 4, "val_loss": 2.9, "val_recall": 0.40},
               {"epoch": 5, "val_loss": float("nan"), "val_recall": float("nan")}]
    finite = history[:4]  # the trainer's `<` comparison never lets a NaN epoch win
    picked = {s: min(finite, key=lambda r, s=s: epoch_score(s, r))["epoch"]
              for s in ("val_loss", "val_recall")}
    assert picked == {"val_loss": 1, "val_recall": 3}  # recall tie 2/3: the later epoch
    assert min(history, key=lambda r: epoch_score("last", r))["epoch"] == 5
    assert not epoch_score("val_loss", history[4]) < epoch_score("val_loss", history[0])


def test_a_preloaded_split_gives_the_items_read_from_disk(pairs):
    """Small splits are decoded once into memory; each item is a copy, equal to a disk read."""
    paths, texts = pairs[0], pairs[1]
    preloaded = CachedPairDataset(paths, texts, 32)
    from_disk = CachedPairDataset(paths, texts, 32, preload_max_bytes=0)
    assert preloaded.images is not None and from_disk.images is None
    for i in range(len(paths)):
        (a, ta), (b, tb) = preloaded[i], from_disk[i]
        assert torch.equal(a, b) and torch.equal(ta, tb)
    preloaded[0][0].fill_(9.0)  # a caller writing into an item leaves the split unchanged
    assert torch.equal(preloaded[0][0], from_disk[0][0])
