"""Which params file the Dagster resource loads, and when a materialization goes into dvc.lock."""

from __future__ import annotations

import shutil

import yaml

from cxr_assets.config import PARAMS_ENV
from tests.helpers import REPO

REPO_PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())


def _project(tmp_path, seed_default=1234, seed_profile=99):
    """A project root holding params.yaml and a profile that differ in project.seed."""
    for name, seed in (("params.yaml", seed_default), ("params.profile.yaml", seed_profile)):
        params = {**REPO_PARAMS, "project": {**REPO_PARAMS["project"], "seed": seed}}
        (tmp_path / name).write_text(yaml.safe_dump(params, sort_keys=False))
    return tmp_path


def test_params_file_default_env_and_explicit(tmp_path, monkeypatch):
    from dags_defs.resources import PipelineConfig

    root = _project(tmp_path)
    monkeypatch.delenv(PARAMS_ENV, raising=False)
    params, paths = PipelineConfig(root=str(root)).load()
    assert params.project.seed == 1234 and paths.root == root.resolve()

    # $CXR_PARAMS, relative to the project root (as `cxr stage` reads it).
    monkeypatch.setenv(PARAMS_ENV, "params.profile.yaml")
    resource = PipelineConfig(root=str(root))
    assert resource.params_path() == root.resolve() / "params.profile.yaml"
    assert resource.load()[0].project.seed == 99

    # The resource's own config wins over the environment.
    resource = PipelineConfig(root=str(root), params_file="params.yaml")
    assert resource.load()[0].project.seed == 1234


def test_missing_profile_names_the_file(tmp_path, monkeypatch):
    import pytest

    from cxr_assets.config import ParamsError
    from dags_defs.resources import PipelineConfig

    monkeypatch.setenv(PARAMS_ENV, "params.nope.yaml")
    with pytest.raises(ParamsError, match="params.nope.yaml"):
        PipelineConfig(root=str(_project(tmp_path))).load()


def test_dvc_records_only_runs_made_with_params_yaml(tmp_path):
    from dags_defs.resources import DvcRecorder

    root = _project(tmp_path)
    (root / ".dvc").mkdir()
    (root / "dvc.yaml").write_text("stages:\n  text_encoder:\n    cmd: cxr stage text_encoder\n")
    recorder = DvcRecorder(dvc_command=shutil.which("true"))
    assert recorder.record("text_encoder", root, root / "params.yaml") == "recorded in dvc.lock"
    assert recorder.record("text_encoder", root) == "recorded in dvc.lock"
    # Made with a profile: dvc is not called at all (a failing command would say "failed").
    failing = DvcRecorder(dvc_command=shutil.which("false"))
    assert failing.record("text_encoder", root, root / "params.yaml") == "dvc commit failed"
    status = failing.record("text_encoder", root, root / "params.profile.yaml")
    assert status.startswith("not recorded") and "params.profile.yaml" in status
