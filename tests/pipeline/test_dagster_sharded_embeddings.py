"""report_embeddings through Dagster with text_encoder.embed_shards = 2: shard steps, then the merge,
give the table one process writes; each shard step says what it encoded and what it found cached.

In-process (`materialize`, as cxr_pipeline runs it) and, marked slow, the report_embeddings_sharded
job on the multiprocess executor: every step in its own process.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import AssetKey, AssetSelection, DagsterEventType, materialize

from tests.text.sharding_project import assert_same_table, make_project, report_texts


def _resources(root: Path) -> dict:
    from dags_defs.resources import DvcRecorder, PipelineConfig

    return {"pipeline": PipelineConfig(root=str(root)), "dvc": DvcRecorder(enabled=False)}


def _asset_metadata(result) -> dict:
    [event] = [e for e in result.get_asset_materialization_events()
               if e.asset_key == AssetKey("report_embeddings")]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def _shard_metadata(result) -> dict[str, dict]:
    """Output metadata of each embed_shard step, by shard ("0/2", "1/2")."""
    out = {}
    for event in result.all_events:
        if event.event_type == DagsterEventType.STEP_OUTPUT and "embed_shard" in event.step_key:
            meta = {k: v.value for k, v in event.step_output_data.metadata.items()}
            out[meta["shard"]] = meta
    return out


@pytest.fixture
def projects(tmp_path: Path, tiny_llm: Path):
    """(single-process table, sharded project root, its paths) sharing one saved encoder."""
    from cxr_assets.stages import report_embeddings

    params_1, paths_1 = make_project(tmp_path / "single", tiny_llm)
    report_embeddings.run(params_1, paths_1, progress=False)
    root = tmp_path / "sharded"
    _, paths_2 = make_project(root, tiny_llm, encoder_from=paths_1.text_encoder_dir,
                              embed_shards=2)
    return paths_1.report_embeddings_table, root, paths_2


def test_shard_steps_and_merge_in_dagster_equal_one_process(projects) -> None:
    from dags_defs.assets import pipeline_assets

    single, root, paths = projects
    selection = AssetSelection.assets("report_embeddings")
    result = materialize(pipeline_assets, selection=selection, resources=_resources(root))
    assert result.success
    assert_same_table(paths.report_embeddings_table, single)

    distinct = len(set(report_texts()))
    shards = _shard_metadata(result)
    assert set(shards) == {"0/2", "1/2"}
    assert sum(s["n_encoded_now"] for s in shards.values()) == distinct
    assert all(s["n_from_cache"] == 0 for s in shards.values())
    meta = _asset_metadata(result)
    assert (meta["n_shards"], meta["n_encoded_by_merge"]) == (2, 0)
    assert meta["n_encoded_now"] == distinct and meta["n_reports"] == len(report_texts())
    assert "| 1/2 |" in meta["shards"]  # the per-shard table shown in the UI

    again = materialize(pipeline_assets, selection=selection, resources=_resources(root))
    assert again.success
    for shard in _shard_metadata(again).values():  # all found in the cache this time
        assert shard["n_encoded_now"] == 0 and shard["n_from_cache"] == shard["n_texts_in_shard"]
    assert _asset_metadata(again)["n_encoded_now"] == 0
    assert_same_table(paths.report_embeddings_table, single)


def sharded_job():
    """The job as the code location defines it (module level: each step process rebuilds it)."""
    from dags_defs.definitions import defs

    return defs.resolve_job_def("report_embeddings_sharded")


@pytest.mark.slow
def test_sharded_job_runs_each_step_in_its_own_process(projects) -> None:
    from dagster import execute_job, instance_for_test, reconstructable

    single, root, paths = projects
    run_config = {"resources": {"pipeline": {"config": {"root": str(root)}},
                                "dvc": {"config": {"enabled": False}}},
                  "execution": {"config": {"max_concurrent": 2}}}
    with instance_for_test() as instance:
        result = execute_job(reconstructable(sharded_job), instance=instance,
                             run_config=run_config)
        assert result.success
        workers = {e.step_key: e.pid for e in result.all_events
                   if e.event_type == DagsterEventType.STEP_START}
        shards = _shard_metadata(result)
    shard_pids = [pid for step, pid in workers.items() if "embed_shard" in step]
    assert len(set(shard_pids)) == 2  # two shard steps, two processes
    assert set(shards) == {"0/2", "1/2"}
    assert_same_table(paths.report_embeddings_table, single)
