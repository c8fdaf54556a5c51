"""The CI skip policy: a skip fails the run under CI=true unless the allow-list says why."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.skip_policy import is_allowed, load_allowlist

REPO = Path(__file__).resolve().parents[1]


def _run(folder: Path, ci: str, allowlist: str) -> subprocess.CompletedProcess:
    (folder / "test_inner.py").write_text(
        "import pytest\n\n"
        "def test_runs():\n    assert True\n\n"
        "def test_needs_a_browser():\n    pytest.skip('no Chromium')\n"
    )
    (folder / "allow.txt").write_text(allowlist)
    (folder / "conftest.py").write_text(
        "from pathlib import Path\n"
        "from tests.skip_policy import SkipPolicy, ci_enabled, load_allowlist\n\n"
        "def pytest_configure(config):\n"
        "    allowed = load_allowlist(Path(__file__).with_name('allow.txt'))\n"
        "    config.pluginmanager.register(SkipPolicy(ci_enabled(), allowed), 'policy')\n"
    )
    env = {**os.environ, "CI": ci, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-c", os.devnull, "--rootdir", str(folder), str(folder)],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=120,
                          check=False)


def test_a_skip_fails_under_ci_and_is_reported_otherwise(tmp_path: Path) -> None:
    ci = _run(tmp_path, "true", "")
    assert ci.returncode == 1, ci.stdout
    assert "FAILS (CI=true): test_inner.py::test_needs_a_browser: " in ci.stdout
    local = _run(tmp_path, "", "")
    assert local.returncode == 0, local.stdout
    assert "would fail under CI=true" in local.stdout
    allowed = _run(tmp_path, "true", "test_inner.py::test_needs_a_browser  # needs a GPU\n")
    assert allowed.returncode == 0, allowed.stdout
    assert "allowed: test_inner.py::test_needs_a_browser" in allowed.stdout


def test_allowlist_needs_a_reason_and_matches_prefixes(tmp_path: Path) -> None:
    file = tmp_path / "allow.txt"
    file.write_text("tests/gpu/  # needs a CUDA GPU\n")
    allowed = load_allowlist(file)
    assert is_allowed("tests/gpu/test_bf16.py::test_step", allowed)
    assert not is_allowed("tests/integration/test_ui_browser.py::test_ui", allowed)
    file.write_text("tests/integration/test_ui_browser.py::test_ui\n")
    with pytest.raises(ValueError, match="no reason"):
        load_allowlist(file)


def test_the_repository_allowlist_is_short_and_reasoned() -> None:
    allowed = load_allowlist()
    assert len(allowed) <= 5 and all(len(reason) > 10 for reason in allowed.values())
