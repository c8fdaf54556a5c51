"""TextEncoder: save/load round trip, content hash, input order, instruction; adaptation end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cxr_assets.config import TextEncoderParams
from cxr_assets.text.adapt import adapt_text_encoder
from cxr_assets.text.encoder import TextEncoder


@pytest.fixture(scope="module")
def base_encoder(tiny_dir: Path) -> TextEncoder:
    return TextEncoder.from_base(
        tiny_dir, pooling="mean", instruction="Find the matching report", max_length=64
    )


def test_save_load_reproduces_embeddings_and_hash(
    base_encoder: TextEncoder, reports, tmp_path: Path
) -> None:
    first = base_encoder.encode(reports, progress=False)
    assert first.shape == (len(reports), base_encoder.dim) and first.dtype == np.float32
    base_encoder.save_pretrained(tmp_path / "enc")
    saved_hash = base_encoder.content_hash
    assert len(saved_hash) == 16 and int(saved_hash, 16) >= 0
    stored = json.loads((tmp_path / "enc" / "encoder_config.json").read_text())
    assert stored["content_hash"] == saved_hash and stored["dim"] == base_encoder.dim
    assert stored["instruction"] == "Find the matching report" and stored["pooling"] == "mean"
    assert (tmp_path / "enc" / "model.safetensors").is_file()

    loaded = TextEncoder.from_pretrained(tmp_path / "enc", threads=1)
    assert loaded.content_hash == saved_hash and loaded.instruction == base_encoder.instruction
    assert np.array_equal(loaded.encode(reports, progress=False), first)
    assert np.array_equal(
        loaded.encode(reports, instruction=loaded.instruction, progress=False),
        base_encoder.encode(reports, instruction=base_encoder.instruction, progress=False),
    )
    # Re-saving (also over an existing folder) gives the same bytes, hence the same hash.
    loaded.save_pretrained(tmp_path / "enc")
    loaded.save_pretrained(tmp_path / "enc2")
    assert loaded.content_hash == saved_hash
    assert (
        json.loads((tmp_path / "enc2" / "encoder_config.json").read_text())["content_hash"]
        == saved_hash
    )
    assert not list(tmp_path.glob(".*"))  # no tmp/old folders left behind
    # A different setting is a different encoder.
    loaded.pooling = "last_token"
    loaded.save_pretrained(tmp_path / "enc3")
    assert loaded.content_hash != saved_hash


def test_encode_sorts_by_length_but_keeps_input_order(base_encoder: TextEncoder, reports) -> None:
    widths: list[int] = []
    hook = base_encoder.model.register_forward_pre_hook(
        lambda module, args, kwargs: widths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    try:
        batched = base_encoder.encode(reports, batch_size=3, progress=False)
    finally:
        hook.remove()
    assert len(widths) == 3 and widths == sorted(widths, reverse=True)
    one_by_one = np.stack([base_encoder.encode([r], progress=False)[0] for r in reports])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5, rtol=1e-4)
    assert base_encoder.encode([], progress=False).shape == (0, base_encoder.dim)


def test_instruction_changes_the_embedding(base_encoder: TextEncoder, reports) -> None:
    plain = base_encoder.encode(reports[:2], progress=False)
    instructed = base_encoder.encode(
        reports[:2], instruction="Find the matching report", progress=False
    )
    assert not np.allclose(plain, instructed)
    with pytest.raises(ValueError, match=r"texts\[1\]"):
        base_encoder.encode(["fine", ""], progress=False)


def test_from_pretrained_rejects_plain_folders(tiny_dir: Path) -> None:
    with pytest.raises(FileNotFoundError, match="encoder_config.json"):
        TextEncoder.from_pretrained(tiny_dir)


def test_adapt_end_to_end_is_deterministic(tiny_dir: Path, reports, tmp_path: Path) -> None:
    params = TextEncoderParams(
        base_model=str(tiny_dir),
        max_length=48,
        pooling="weighted_mean",
        mntp={"steps": 3, "batch_size": 4},
        contrastive={"steps": 3, "batch_size": 4},
        # Post-processing statistics are fitted on encoded reports, whose last bits can differ
        # between two identical runs on a random tiny model; the weights must not.
        postprocess={"method": "none"},
    )
    pairs = [(r, r.lower()) for r in reports]
    logged: list[tuple[str, int]] = []
    first = adapt_text_encoder(
        reports,
        pairs,
        params,
        tmp_path / "cache",
        tmp_path / "a",
        seed=5,
        progress=False,
        log_fn=lambda stage, step, loss: logged.append((stage, step)),
    )
    assert logged == [("mntp", i) for i in range(3)] + [("contrastive", i) for i in range(3)]
    assert len(first.mntp_losses) == 3 and len(first.contrastive_losses) == 3
    assert first.n_train_reports == len(reports) and first.n_pairs == len(pairs)
    second = adapt_text_encoder(
        reports, pairs, params, tmp_path / "cache", tmp_path / "b", seed=5, progress=False
    )
    assert second.content_hash == first.content_hash
    other = adapt_text_encoder(
        reports, pairs, params, tmp_path / "cache", tmp_path / "c", seed=6, progress=False
    )
    assert other.content_hash != first.content_hash

    encoder = TextEncoder.from_pretrained(first.encoder_dir)
    assert encoder.content_hash == first.content_hash and encoder.pooling == "weighted_mean"
    assert encoder.base_model == str(tiny_dir)
    raw = TextEncoder.from_base(tiny_dir, pooling="weighted_mean", max_length=48)
    # Adaptation (merged LoRA) changed the weights => different embeddings than the raw base.
    assert not np.allclose(
        encoder.encode(reports[:2], progress=False), raw.encode(reports[:2], progress=False)
    )
    # The merged encoder folder holds plain weights: no adapter files, no lm_head.
    assert not list(first.encoder_dir.glob("adapter_*"))


def test_mean_taps_are_encoded_stored_and_reloaded(tiny_dir: Path, reports,
                                                   tmp_path: Path) -> None:
    """An encoder whose mean reads layer 1 and the last layer without the first token: encode
    returns both means side by side as the body's hidden states give them; the setting is saved,
    reloaded, and part of the content hash; a mismatched setting is refused by name."""
    import torch

    from cxr_assets.text.pooling import MeanTaps
    from cxr_assets.text.postprocess import EmbeddingPostprocess
    from cxr_assets.text.tokenization import position_ids_from_mask, tokenize_with_instruction

    taps = MeanTaps((1, -1), skip_first_token=True)
    encoder = TextEncoder.from_base(tiny_dir, pooling="mean", max_length=64, mean_taps=taps)
    width = encoder.hidden_size
    assert encoder.dim == encoder.mean_width == 2 * width
    got = encoder.encode(reports[:3], progress=False)
    for i, text in enumerate(reports[:3]):  # one text at a time: no padding, first token = 0
        batch = tokenize_with_instruction(encoder.tokenizer, [text], None, 64)
        with torch.no_grad():
            states = encoder.model(input_ids=batch["input_ids"],
                                   attention_mask=batch["attention_mask"],
                                   position_ids=position_ids_from_mask(batch["attention_mask"]),
                                   output_hidden_states=True).hidden_states
        want = torch.cat([states[1][0, 1:].mean(0), states[-1][0, 1:].mean(0)]).numpy()
        assert np.allclose(got[i], want, atol=1e-5)

    encoder.postprocess = EmbeddingPostprocess.fit(got, "center_scale")
    encoder.save_pretrained(tmp_path / "tapped")
    stored = json.loads((tmp_path / "tapped" / "encoder_config.json").read_text())
    assert stored["mean_layers"] == [1, -1] and stored["mean_skip_first_token"] is True
    loaded = TextEncoder.from_pretrained(tmp_path / "tapped")
    assert loaded.mean_taps == taps and loaded.content_hash == encoder.content_hash
    assert np.array_equal(loaded.encode(reports[:3], progress=False),
                          encoder.encode(reports[:3], progress=False))
    loaded.mean_taps = MeanTaps((1, -1))  # the sink kept: another encoder, another hash
    loaded.save_pretrained(tmp_path / "sink_kept")
    assert loaded.content_hash != encoder.content_hash

    with pytest.raises(ValueError, match="need a pooling with a mean part"):
        TextEncoder.from_base(tiny_dir, pooling="last_token", mean_taps=taps)
    with pytest.raises(ValueError, match=r"mean tap layers \[7\] outside"):
        TextEncoder.from_base(tiny_dir, pooling="mean", mean_taps=MeanTaps((7,)))
    with pytest.raises(ValueError, match="post-processing dim"):
        TextEncoder(encoder.model, encoder.tokenizer, "mean", mean_taps=MeanTaps((1,)),
                    postprocess=encoder.postprocess)


def test_mean_pooling_params_are_checked_by_name() -> None:
    with pytest.raises(ValueError, match="layers repeat"):
        TextEncoderParams(mean_pooling={"layers": [1, 1]})
    with pytest.raises(ValueError, match="has no mean part"):
        TextEncoderParams(pooling="last_token", mean_pooling={"skip_first_token": True})
    with pytest.raises(ValueError, match=r"head_training.steps > 0 needs mean_pooling.layers"):
        TextEncoderParams(pooling="mean_and_latent_attention", head_training={"steps": 5},
                          mean_pooling={"layers": [1, -1]})
