"""The commands users type, in a temporary copy of the repository: dvc repro, dagster CLI."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import REPO, copy_checkout, tiny_params, write_params

pytestmark = pytest.mark.slow


def _env(root: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{REPO / '.venv' / 'bin'}:{os.environ['PATH']}",
        "DAGSTER_HOME": str(root / ".dagster_home"),
        "DAGSTER_MODULE_NAME": "dags_defs.definitions",
        "HF_HUB_OFFLINE": "1",
        "DVC_NO_ANALYTICS": "1",
    }


def _run(root: Path, *command: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(list(command), check=False, cwd=root, env=_env(root), capture_output=True,
                          text=True, timeout=900)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n"
                             f"{done.stderr[-5000:]}")
    return done


def _checkout(tmp_path: Path, tiny_llm: Path) -> Path:
    root = copy_checkout(tmp_path / "clone")
    write_params(root, tiny_params(root, tiny_llm))
    (root / ".dagster_home").mkdir()
    (root / ".dagster_home" / "dagster.yaml").touch()
    return root


def _dvc_status(root: Path) -> dict:
    return json.loads(_run(root, "dvc", "status", "--json").stdout or "{}")


def _last_run_assets(root: Path) -> set[str]:
    from dagster import DagsterInstance

    with DagsterInstance.from_config(str(root / ".dagster_home")) as instance:
        run = instance.get_runs(limit=1)[0]
        return {key.path[-1] for key in run.asset_selection or set()}


def test_dvc_repro_twice_then_dagster_reruns_one_asset(tmp_path, tiny_llm):
    root = _checkout(tmp_path, tiny_llm)
    _run(root, "dvc", "repro")
    assert (root / "dvc.lock").exists() and (root / "reports/evaluation/metrics.json").exists()
    assert "Running stage" not in _run(root, "dvc", "repro").stdout
    assert _dvc_status(root) == {}
    metrics = _run(root, "dvc", "metrics", "show", "--json").stdout
    assert "mean_recall" in metrics

    _run(root, "dagster", "asset", "materialize", "--select", "clip_model")
    assert _last_run_assets(root) == {"clip_model"}
    status = _dvc_status(root)
    # clip_model was recorded in dvc.lock by the Dagster run; what reads it is now out of date.
    assert "clip_model" not in status and "study_embeddings" in status


def test_dagster_cli_names_missing_upstream_then_full_job_leaves_dvc_clean(tmp_path, tiny_llm):
    root = _checkout(tmp_path, tiny_llm)
    failed = _run(root, "dagster", "asset", "materialize", "--select", "clip_model", check=False)
    assert failed.returncode != 0
    output = failed.stdout + failed.stderr
    assert "never materialized" in output and "report_embeddings" in output
    assert "dvc repro clip_model" in output

    _run(root, "dagster", "job", "execute", "-j", "cxr_pipeline")
    assert _dvc_status(root) == {}
    assert "Running stage" not in _run(root, "dvc", "repro").stdout
