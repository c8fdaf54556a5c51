"""Online LoRA text tower (clip.text_tower=lora): training, GradCache, save/load, augmentation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cxr_assets.clip.text_tower import OnlineTextTower, shuffle_sentences
from cxr_assets.config import ClipParams, ClipTextLoraParams

REPORTS = [
    ("FINDINGS: The heart is normal in size. No pleural effusion. Lungs are clear. "
     "IMPRESSION: No acute disease."),
    "FINDINGS: Right lower lobe opacity. Small effusion on the right. IMPRESSION: Pneumonia.",
    "FINDINGS: Cardiomegaly. Pulmonary vascular congestion. IMPRESSION: Heart failure.",
    "FINDINGS: Left apical pneumothorax. No mediastinal shift. IMPRESSION: Pneumothorax.",
]


@pytest.fixture(scope="module")
def encoder_dir(tiny_llm, tmp_path_factory):
    from cxr_assets.text.encoder import TextEncoder

    folder = tmp_path_factory.mktemp("enc") / "text_encoder"
    TextEncoder.from_base(tiny_llm, max_length=48).save_pretrained(folder)
    return folder


def test_sentence_shuffle_stays_within_sections():
    text = "FINDINGS: A one. B two. C three. D four. IMPRESSION: E five. F six."
    assert shuffle_sentences(text, 0.0, torch.Generator().manual_seed(0)) == text
    seen = {shuffle_sentences(text, 1.0, torch.Generator().manual_seed(s)) for s in range(20)}
    assert len(seen) > 3
    for out in seen:
        findings, impression = out.split("IMPRESSION:")
        assert out.startswith("FINDINGS:")
        assert "E five" in impression and "F six" in impression
        assert {"A one", "B two", "C three", "D four"} <= {s.strip(" .") for s in findings[9:].split(".")}
    with pytest.raises(ValueError, match="shuffle probability"):
        shuffle_sentences(text, 1.5, torch.Generator())


def test_lora_tower_trains_only_adapters(encoder_dir, png_factory):
    from cxr_assets.clip.train import train_clip

    labels = np.arange(12) % 4
    paths = png_factory(labels, size=32)
    reports = [REPORTS[i] for i in labels]
    params = ClipParams(vision_backbone="resnet10t", image_size=32, embed_dim=16, epochs=2,
                        batch_size=4, micro_batch_size=2, lr=3e-3, warmup_steps=1, threads=1,
                        device="cpu", text_tower="lora", text_lora=ClipTextLoraParams(r=4))
    tower_before = OnlineTextTower.from_folder(encoder_dir)
    base_before = {k: v.clone() for k, v in tower_before.body.state_dict().items()}
    result = train_clip(paths[:8], reports[:8], paths[8:], reports[8:], params=params,
                        text_encoder_hash="h", seed=0, progress=False, text_encoder_dir=encoder_dir)
    assert all(math.isfinite(r["train_loss"]) for r in result.history)
    body = result.model.text_tower.body
    trainable = [n for n, p in body.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    lora_b = [p for n, p in body.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b)  # B starts at zero: training moved it
    frozen = {n.replace("base_model.model.", "").replace(".base_layer", ""): p
              for n, p in body.state_dict().items() if "lora_" not in n}
    for name, value in base_before.items():
        assert torch.equal(frozen[name], value), name


def test_gradcache_with_online_tower_matches_full_batch(encoder_dir):
    from cxr_assets.clip.gradcache import compute_gradients
    from cxr_assets.clip.model import ClipModelConfig, DualTowerClip

    torch.manual_seed(0)
    tower = OnlineTextTower.from_folder(encoder_dir, ClipTextLoraParams(r=4))
    for n, p in tower.body.named_parameters():  # non-zero B so LoRA A gets gradient too
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.02)
    config = ClipModelConfig("test_vit", 32, tower.dim, 16, 2.0, 4.6, text_tower="lora")
    model = DualTowerClip(config, text_tower=tower).train()
    images = torch.randn(4, 1, 32, 32)
    tokens = tower.tokenize(REPORTS)
    compute_gradients(model, images, tokens, None)
    full = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    compute_gradients(model, images, tokens, 2)
    for name, grad in full.items():
        torch.testing.assert_close(model.get_parameter(name).grad, grad, rtol=1e-4, atol=1e-6,
                                   msg=name)
    assert any("lora_A" in n for n in full)


def test_saved_lora_model_reloads_merged(encoder_dir, tmp_path):
    from cxr_assets.clip.model import (
        ClipModelConfig,
        DualTowerClip,
        load_clip_model,
        save_clip_model,
    )

    torch.manual_seed(0)
    tower = OnlineTextTower.from_folder(encoder_dir, ClipTextLoraParams(r=4))
    for n, p in tower.body.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.05)
    model = DualTowerClip(ClipModelConfig("resnet10t", 32, tower.dim, 16, 2.0, 4.6,
                                          text_tower="lora"), text_tower=tower).eval()
    with torch.no_grad():
        expected = model.encode_reports(REPORTS)
    save_clip_model(model, tmp_path / "m")
    assert (tmp_path / "m" / "text_encoder" / "encoder_config.json").is_file()
    again = load_clip_model(tmp_path / "m")
    with torch.no_grad():
        got = again.encode_reports(REPORTS)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert not any("lora_" in n for n, _ in again.named_parameters())
