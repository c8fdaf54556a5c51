"""Acceptance: the clip_model asset with nproc_per_node=2 trains under torchrun via Dagster Pipes,
registers a `challenger` that loads with mlflow.pyfunc and embeds an image and a report."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from dagster import AssetKey, AssetSelection, DagsterInstance, materialize

from tests.helpers import tiny_params, write_params

pytestmark = pytest.mark.slow


def test_clip_asset_runs_torchrun_through_pipes_and_registers_challenger(tmp_path, tiny_llm,
                                                                         monkeypatch):
    from dags_defs.assets import pipeline_assets
    from dags_defs.resources import DvcRecorder, PipelineConfig

    params = tiny_params(tmp_path, tiny_llm, clip={
        "batch_size": 8, "micro_batch_size": 2, "epochs": 2, "checkpoint": {"every_n_steps": 1},
        "distributed": {"nproc_per_node": 2, "backend": "gloo"}, "device": "cpu"})
    write_params(tmp_path, params)
    monkeypatch.chdir(tmp_path)
    instance = DagsterInstance.ephemeral()
    result = materialize(
        pipeline_assets,
        selection=AssetSelection.assets("clip_model").upstream(),
        resources={"pipeline": PipelineConfig(root=str(tmp_path)),
                   "dvc": DvcRecorder(enabled=False)},
        instance=instance,
        raise_on_error=True,
    )
    events = [e for e in result.get_asset_materialization_events()
              if e.asset_key == AssetKey("clip_model")]
    assert events
    metadata = {k: v.value for k, v in events[-1].materialization.metadata.items()}
    assert metadata["registered_version"].endswith("@challenger")
    # Rank 0's per-step log lines came back into the Dagster run through Pipes.
    messages = [e.user_message or "" for e in instance.all_logs(result.run_id)]
    assert any("step 1: train_loss=" in m for m in messages)
    assert any("torchrun rank 0 reported" in m for m in messages)

    card = (tmp_path / "artifacts" / "clip_model" / "MODEL_CARD.md").read_text()
    assert "processes: 2" in card and "micro-batch 2" in card
    registry = json.loads((tmp_path / "artifacts" / "clip_model" / "registry.json").read_text())

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = mlflow.get_run(registry["run_id"])
    assert run.data.params["clip.distributed.nproc_per_node"] == "2"
    history = mlflow.MlflowClient().get_metric_history(registry["run_id"], "step/train_loss")
    assert len(history) >= 2
    model = mlflow.pyfunc.load_model("models:/cxr-tiny@challenger")
    image = next((tmp_path / "data" / "image_cache").rglob("*.png"))
    out = model.predict(pd.DataFrame({"image_path": [str(image)],
                                      "report_text": ["No acute cardiopulmonary process."]}))
    assert len(out["image_embedding"][0]) == 32 and len(out["text_embedding"][0]) == 32


def test_clip_stage_with_online_lora_text_tower(tmp_path, tiny_llm, monkeypatch):
    """Single process, text_tower=lora: the registered model embeds reports with its own
    LoRA-merged encoder (saved in clip_model/text_encoder)."""
    from dags_defs.assets import pipeline_assets
    from dags_defs.resources import DvcRecorder, PipelineConfig

    params = tiny_params(tmp_path, tiny_llm, clip={
        "epochs": 1, "batch_size": 8, "micro_batch_size": 4, "text_tower": "lora",
        "text_lora": {"r": 4}, "device": "cpu"})
    write_params(tmp_path, params)
    monkeypatch.chdir(tmp_path)
    materialize(
        pipeline_assets, selection=AssetSelection.assets("clip_model").upstream(),
        resources={"pipeline": PipelineConfig(root=str(tmp_path)),
                   "dvc": DvcRecorder(enabled=False)},
        instance=DagsterInstance.ephemeral(), raise_on_error=True,
    )
    model_dir = tmp_path / "artifacts" / "clip_model"
    assert (model_dir / "text_encoder" / "encoder_config.json").is_file()
    import mlflow

    from cxr_assets.clip.model import load_clip_model

    clip = load_clip_model(model_dir)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model("models:/cxr-tiny@challenger")
    report = "FINDINGS: Lungs are clear. IMPRESSION: Normal chest."
    out = model.predict(pd.DataFrame({"report_text": [report]}))
    import torch

    with torch.no_grad():
        expected = clip.encode_reports([report])[0].numpy()
    assert out["text_embedding"][0] == pytest.approx(expected.tolist(), abs=1e-5)
