"""Shared fixtures: a tiny LLM with the real tokenizer and a tiny, fast params profile."""

from __future__ import annotations

import gc
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


# A test process that dies from a signal (a native crash) prints no test summary: the Makefile's
# test target reads this file to say which test was running. Written before each test starts.
CURRENT_TEST = Path(__file__).resolve().parents[1] / ".pytest_cache" / "cxr_current_test"


def pytest_runtest_logstart(nodeid: str, location) -> None:
    CURRENT_TEST.parent.mkdir(parents=True, exist_ok=True)
    CURRENT_TEST.write_text(nodeid + "\n")


@pytest.fixture(autouse=True, scope="module")
def _collect_garbage_after_each_module(request):
    """Free what a test module left in reference cycles (compiled models, native buffers and
    their threads) before the next module starts, so their finalizers run here, named in
    CURRENT_TEST, rather than at an arbitrary later allocation in another test."""
    yield
    CURRENT_TEST.write_text(f"garbage collection after {request.node.nodeid}\n")
    gc.collect()
