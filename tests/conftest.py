"""Shared fixtures: a tiny LLM with the real tokenizer and a tiny, fast params profile."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tests.helpers import tiny_params, write_params


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory) -> Path:
    """A 2-layer random Llama saved with the real SmolLM2 tokenizer."""
    from cxr_assets.text.tiny import make_tiny_causal_lm

    return make_tiny_causal_lm(tmp_path_factory.mktemp("tiny-llm") / "model")


@pytest.fixture
def tiny_project(tmp_path, tiny_llm) -> Path:
    """An empty project root holding a tiny params.yaml."""
    write_params(tmp_path, tiny_params(tmp_path, tiny_llm))
    return tmp_path


def pytest_configure(config) -> None:
    from tests.skip_policy import SkipPolicy, ci_enabled, load_allowlist

    config.pluginmanager.register(SkipPolicy(ci_enabled(), load_allowlist()), "cxr-skip-policy")
