"""Stage-level behaviour that needs no model: missing upstreams, params errors, the CLI."""

from __future__ import annotations

import pytest

from cxr_assets.cli import main
from cxr_assets.config import ParamsError, load_params, parse_params
from cxr_assets.paths import ProjectPaths
from cxr_assets.stages import stage_module
from cxr_assets.stages.base import MissingUpstreamError


def test_missing_upstream_names_assets_and_command(tmp_path):
    params = parse_params({})
    paths = ProjectPaths.from_params(params, tmp_path)
    with pytest.raises(MissingUpstreamError) as error:
        stage_module("clip_model").run(params, paths)
    message = str(error.value)
    for name in ("study_images", "study_splits", "report_embeddings", "text_encoder"):
        assert name in message
    assert "dagster asset materialize --select '+clip_model'" in message and "dvc repro clip_model" in message


def test_cli_reports_missing_upstream_with_exit_code_2(tmp_path, monkeypatch, capsys):
    (tmp_path / "params.yaml").write_text("project: {seed: 1}\n")
    monkeypatch.chdir(tmp_path)
    assert main(["stage", "evaluation_report"]) == 2
    assert "study_embeddings" in capsys.readouterr().err


@pytest.mark.parametrize("raw, key", [
    ({"clip": {"epochs": 0}}, "clip.epochs"),
    ({"text_encoder": {"pooling": "max"}}, "text_encoder.pooling"),
    ({"clip": {"epochz": 3}}, "clip.epochz"),
    ({"splits": {"train": 0.9}}, "splits"),
    ({"quality": {"impression_only_share": [0.9, 0.1]}}, "quality.impression_only_share"),
])
def test_bad_params_name_the_key(raw, key):
    with pytest.raises(ParamsError) as error:
        parse_params(raw)
    assert key in str(error.value)


def test_unknown_key_lists_allowed_keys():
    with pytest.raises(ParamsError) as error:
        parse_params({"clip": {"epochz": 3}})
    assert "allowed: " in str(error.value) and "epochs" in str(error.value)


def test_repository_params_file_is_valid():
    from tests.helpers import REPO

    params = load_params(REPO / "params.yaml")
    assert params.demo_data.n_studies >= 100
    assert params.paths.raw_dir == params.demo_data.out_dir


@pytest.mark.parametrize("challenger, champion, margin, promote", [
    (0.30, None, 0.0, True),     # first model becomes champion
    (0.30, 0.20, 0.0, True),     # better
    (0.20, 0.30, 0.0, False),    # worse: refused
    (0.31, 0.30, 0.05, False),   # better, but not by the margin
    (0.36, 0.30, 0.05, True),
])
def test_promotion_decision(challenger, champion, margin, promote):
    from cxr_assets.registry.promotion import decide

    assert decide(challenger, champion, margin)[0] is promote
