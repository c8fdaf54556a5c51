"""Latent-attention pooling: batched == upstream per-sample loop; save/load; LLM2Vec4CXR layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cxr_assets.text.pooling import make_latent_attention, pool


def _upstream(head, hidden: torch.Tensor, embed_mask: torch.Tensor) -> torch.Tensor:
    """The reference algorithm: per sample, nn.MultiheadAttention(query=tokens, key=value=latents),
    MLP, mean over the sample's embedded tokens."""
    out = []
    for h, m in zip(hidden, embed_mask):
        tokens = h[m.bool()].unsqueeze(0)
        latents = head.latents.unsqueeze(0)
        attn, _ = head.multihead_attn(query=tokens, key=latents, value=latents)
        out.append(head.mlp(attn).mean(dim=1).squeeze(0))
    return torch.stack(out)


def test_batched_latent_attention_matches_per_sample_loop() -> None:
    head = make_latent_attention(32, num_latents=6, num_heads=4, seed=1).eval()
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 7, 32, generator=g)
    mask = torch.zeros(3, 7, dtype=torch.long)
    mask[0, 2:] = 1
    mask[1, 6:] = 1  # one token
    mask[2, :] = 1
    with torch.no_grad():
        batched = pool(hidden, mask, "latent_attention", head)
        reference = _upstream(head, hidden, mask)
    assert batched.shape == (3, 32) and batched.dtype == torch.float32
    assert torch.allclose(batched, reference, atol=1e-5)
    # Padding positions (whatever they hold) never reach the embedding.
    noisy = hidden.clone()
    noisy[0, :2] = 1e3
    with torch.no_grad():
        assert torch.allclose(pool(noisy, mask, "latent_attention", head), batched, atol=1e-5)


def test_latent_attention_errors_and_sizes() -> None:
    with pytest.raises(ValueError, match="divisible"):
        make_latent_attention(30, num_latents=4, num_heads=8)
    with pytest.raises(ValueError, match="needs its pooling head"):
        pool(torch.zeros(1, 2, 8), torch.ones(1, 2), "latent_attention")
    head = make_latent_attention(16, num_latents=5, num_heads=2)
    assert head.latents.shape == (5, 16)
    # Same seed, same head (content hashes depend on it).
    again = make_latent_attention(16, num_latents=5, num_heads=2)
    assert all(torch.equal(a, b) for a, b in zip(head.state_dict().values(), again.state_dict().values()))


def test_encoder_with_latent_head_round_trips(tiny_dir: Path, reports, tmp_path: Path) -> None:
    from cxr_assets.text.encoder import TextEncoder

    head = make_latent_attention(64, num_latents=8, num_heads=8, seed=3)
    encoder = TextEncoder.from_base(tiny_dir, pooling="latent_attention", max_length=48,
                                    pooling_head=head)
    first = encoder.encode(reports, progress=False, batch_size=3)
    encoder.save_pretrained(tmp_path / "enc")
    assert (tmp_path / "enc" / "pooling_head.safetensors").is_file()
    loaded = TextEncoder.from_pretrained(tmp_path / "enc", threads=1)
    assert loaded.pooling == "latent_attention" and loaded.pooling_head.num_latents == 8
    assert np.array_equal(loaded.encode(reports, progress=False, batch_size=3), first)
    # Batch composition does not change an embedding (masked mean, per-row positions).
    single = loaded.encode(reports[:1], progress=False)
    assert np.allclose(single[0], first[0], atol=1e-5)
    mean_encoder = TextEncoder.from_base(tiny_dir, pooling="mean", max_length=48)
    assert not np.allclose(mean_encoder.encode(reports[:2], progress=False), first[:2])


@pytest.mark.parametrize("prefixed", [False, True])
def test_llm2vec4cxr_layout_loads(tiny_dir: Path, reports, tmp_path: Path, prefixed: bool) -> None:
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer, LlamaConfig, LlamaModel

    from cxr_assets.text.bidirectional import enable_bidirectional
    from cxr_assets.text.encoder import TextEncoder
    from cxr_assets.text.llm2vec4cxr import is_llm2vec4cxr_folder, write_tiny_llm2vec4cxr
    from cxr_assets.text.tokenization import position_ids_from_mask, tokenize_with_instruction

    folder = write_tiny_llm2vec4cxr(tmp_path / "ckpt", tokenizer_from=tiny_dir, num_latents=16)
    tensors = load_file(str(folder / "model.safetensors"))
    assert any(k.startswith("latent_attn.multihead_attn.") for k in tensors)
    assert "layers.0.self_attn.q_proj.weight" in tensors and "latent_attn.latents" in tensors
    if prefixed:  # some exports keep the wrapper's "model." prefix and call it cross_attn
        renamed = {}
        for k, v in tensors.items():
            if k.startswith("latent_attn."):
                renamed[k.replace("multihead_attn.", "cross_attn.")] = v
            else:
                renamed["model." + k] = v
        save_file(renamed, str(folder / "model.safetensors"))
        config = json.loads((folder / "config.json").read_text())
        config["architectures"] = ["SomethingElse"]  # detection must then use the weight names
        (folder / "config.json").write_text(json.dumps(config))
    assert is_llm2vec4cxr_folder(folder) and not is_llm2vec4cxr_folder(tiny_dir)

    encoder = TextEncoder.from_pretrained(folder, threads=1)
    assert encoder.pooling == "latent_attention" and encoder.pooling_head.num_latents == 16
    got = encoder.encode(reports[:4], progress=False)

    # Independent reference: the stored tensors in a LlamaModel (bidirectional), upstream head loop.
    cfg = LlamaConfig.from_pretrained(folder)
    body = LlamaModel(cfg)
    state = load_file(str(folder / "model.safetensors"))
    body.load_state_dict({k.removeprefix("model."): v for k, v in state.items()
                          if not k.startswith("latent_attn.")}, strict=False)
    body = enable_bidirectional(body).eval()
    head = make_latent_attention(64, 16, 8)
    head.load_state_dict({k.removeprefix("latent_attn.").replace("cross_attn.", "multihead_attn."): v
                          for k, v in state.items() if k.startswith("latent_attn.")})
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    expected = []
    with torch.no_grad():
        for text in reports[:4]:
            batch = tokenize_with_instruction(tokenizer, [text], None, encoder.max_length)
            hidden = body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          position_ids=position_ids_from_mask(batch["attention_mask"])).last_hidden_state
            expected.append(_upstream(head, hidden, batch["embed_mask"])[0].numpy())
    assert np.allclose(got, np.stack(expected), atol=1e-4)

    # Saved as our own folder, it reloads to the same embeddings.
    encoder.save_pretrained(tmp_path / "ours")
    again = TextEncoder.from_pretrained(tmp_path / "ours", threads=1)
    assert np.array_equal(again.encode(reports[:4], progress=False), got)


def test_not_a_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    from cxr_assets.text.encoder import TextEncoder

    with pytest.raises(FileNotFoundError, match="neither a saved TextEncoder"):
        TextEncoder.from_pretrained(tmp_path)
