"""The whole asset chain materialized in-process on a tiny synthetic set (tiny Llama, tiny timm)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from dagster import AssetKey, DagsterInstance, materialize

from cxr_assets.stages import STAGE_NAMES
from tests.helpers import tiny_params, write_params

pytestmark = pytest.mark.slow


def _materialize(root, instance=None):
    from dags_defs.assets import pipeline_assets
    from dags_defs.resources import DvcRecorder, PipelineConfig

    return materialize(
        pipeline_assets,
        resources={"pipeline": PipelineConfig(root=str(root)), "dvc": DvcRecorder(enabled=False)},
        instance=instance or DagsterInstance.ephemeral(),
        raise_on_error=False,
    )


def _metadata(result, name):
    events = [e for e in result.get_asset_materialization_events() if e.asset_key == AssetKey(name)]
    assert events, f"{name} was not materialized"
    return {k: v.value for k, v in events[-1].materialization.metadata.items()}


def test_full_chain_materializes_with_metadata_and_checks(tiny_project):
    result = _materialize(tiny_project)
    assert result.success

    materialized = {e.asset_key.path[-1] for e in result.get_asset_materialization_events()}
    assert materialized == set(STAGE_NAMES)

    raw = _metadata(result, "raw_studies")
    assert raw["n_studies"] == 36 and raw["n_images"] >= 36
    assert raw["n_inputs"] >= raw["n_studies"] + raw["n_images"] - raw["n_quarantined"]
    assert _metadata(result, "study_images")["n_images"] == raw["n_images"]
    assert _metadata(result, "report_texts")["n_reports"] == raw["n_studies"]
    splits = _metadata(result, "study_splits")
    assert splits["n_train"] + splits["n_val"] + splits["n_test"] == raw["n_studies"]
    encoder = _metadata(result, "text_encoder")
    assert len(encoder["encoder_hash"]) >= 12
    # ~21 training reports: the query adapter is fitted and stored beside the encoder.
    assert encoder["query_adapter"].startswith("rank 8, "), encoder["query_adapter"]
    assert (tiny_project / "artifacts/text_encoder/query_adapter.safetensors").is_file()
    embeddings = _metadata(result, "report_embeddings")
    assert embeddings["n_reports"] == raw["n_studies"] and embeddings["n_encoded_now"] > 0
    clip = _metadata(result, "clip_model")
    assert clip["registered_version"].endswith("@challenger")
    evaluation = _metadata(result, "evaluation_report")
    for key in ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "mean_recall"):
        assert 0.0 <= evaluation[key] <= 1.0
    assert evaluation["i2t_R@10"] >= evaluation["i2t_R@1"]
    champion = _metadata(result, "champion_model")
    assert champion["promoted"] is True and champion["reason"] == "no champion yet"

    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert set(checks) >= {"accounting_balanced", "reports_contract", "no_patient_leakage",
                           "splits_contract", "champion_is_best"}
    assert all(checks.values()), checks

    # Files a user opens: the HTML report, DVC metrics, the champion decision.
    assert (tiny_project / "reports/evaluation/report.html").read_text().startswith("<!doctype html>")
    metrics = json.loads((tiny_project / "reports/evaluation/metrics.json").read_text())
    assert metrics["mean_recall"] == pytest.approx(evaluation["mean_recall"], abs=1e-6)
    decision = json.loads((tiny_project / "reports/champion.json").read_text())
    assert decision["promoted"] and decision["challenger_version"] == "1"

    # The registered champion loads through MLflow and embeds an image and a report.
    import mlflow.pyfunc

    from cxr_assets.config import load_params
    from cxr_assets.paths import ProjectPaths
    from cxr_assets.registry.tracking import configure_mlflow

    params = load_params(tiny_project / "params.yaml")
    paths = ProjectPaths.from_params(params, tiny_project)
    configure_mlflow(params, paths)
    model = mlflow.pyfunc.load_model("models:/cxr-tiny@champion")
    dicom = next((tiny_project / "data/raw/demo/files").rglob("*.dcm"))
    out = model.predict(pd.DataFrame({"image_path": [str(dicom)],
                                      "report_text": ["Small left pleural effusion."]}))
    assert len(out["image_embedding"][0]) == 32 and len(out["text_embedding"][0]) == 32


def test_second_run_promotes_only_a_better_challenger(tiny_project):
    instance = DagsterInstance.ephemeral()
    assert _materialize(tiny_project, instance).success
    second = _materialize(tiny_project, instance)
    assert second.success
    decision = json.loads((tiny_project / "reports/champion.json").read_text())
    assert decision["challenger_version"] == "2" and decision["previous_champion_version"] == "1"
    better = decision["challenger_score"] >= decision["previous_champion_score"]
    assert decision["promoted"] is better
    # Unchanged reports and encoder settings: the second run's embeddings come from the cache
    # only if the encoder is byte-identical; either way every report is accounted for.
    emb = _metadata(second, "report_embeddings")
    assert emb["n_encoded_now"] + emb["n_from_cache"] == emb["n_reports"]


def test_blocking_contract_failure_skips_training(tmp_path, tiny_llm):
    # No demo report is 5,000 characters long: the reports contract's length expectation fails.
    write_params(tmp_path, tiny_params(tmp_path, tiny_llm,
                                       quality={"min_report_chars": 5000, "max_report_chars": 6000}))
    result = _materialize(tmp_path)
    assert not result.success
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert checks["reports_contract"].passed is False
    failed = checks["reports_contract"].metadata["failed_expectations"].value
    assert "expect_column_value_lengths_to_be_between" in failed or "n_chars" in failed
    materialized = {e.asset_key.path[-1] for e in result.get_asset_materialization_events()}
    assert "report_profile" in materialized
    assert not materialized & {"text_encoder", "report_embeddings", "clip_model"}
