"""study_images through Dagster with ingest.decode_shards = 2: shard steps, then the merge, give the
table, quarantine and cached images one process writes; each shard step says what it decoded,
and the blocking images_accounted check still reports from the merge.

In-process (`materialize`, as cxr_pipeline runs it) and, marked slow, the study_images_sharded job
on the multiprocess executor: every step in its own process.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import AssetKey, AssetSelection, DagsterEventType, materialize

from tests.ingest.sharding_images import assert_same_output, make_project, write_image_tree


def _resources(root: Path) -> dict:
    from dags_defs.resources import DvcRecorder, PipelineConfig

    return {"pipeline": PipelineConfig(root=str(root)), "dvc": DvcRecorder(enabled=False)}


def _is_shard_step(step_key: str) -> bool:
    """study_images.decode_shard[shard_0_of_2] (not plan_decode_shards, merge_decode_shards)."""
    return step_key.startswith("study_images.decode_shard[")


def _shard_metadata(result) -> dict[str, dict]:
    """Output metadata of each decode_shard step, by shard ("0/2", "1/2")."""
    out = {}
    for event in result.all_events:
        if event.event_type == DagsterEventType.STEP_OUTPUT and _is_shard_step(event.step_key):
            meta = {k: v.value for k, v in event.step_output_data.metadata.items()}
            out[meta["shard"]] = meta
    return out


@pytest.fixture
def projects(tmp_path: Path):
    """(single-process project paths, sharded project root, its paths) on one image tree."""
    from cxr_assets.stages import study_images

    raw = write_image_tree(tmp_path / "raw")
    params_1, paths_1 = make_project(tmp_path / "single", raw)
    study_images.run(params_1, paths_1, progress=False)
    root = tmp_path / "sharded"
    _, paths_2 = make_project(root, raw, decode_shards=2)
    return paths_1, root, paths_2


def test_decode_shard_steps_and_merge_in_dagster_equal_one_process(projects) -> None:
    from dags_defs.assets import pipeline_assets

    single, root, paths = projects
    result = materialize(pipeline_assets, selection=AssetSelection.assets("study_images"),
                         resources=_resources(root))
    assert result.success
    assert_same_output(paths, single)

    shards = _shard_metadata(result)
    assert set(shards) == {"0/2", "1/2"}
    assert all(s["n_images_in_shard"] > 0 and s["n_reused_from_cache"] == 0
               for s in shards.values())
    [event] = [e for e in result.get_asset_materialization_events()
               if e.asset_key == AssetKey("study_images")]
    meta = {k: v.value for k, v in event.materialization.metadata.items()}
    assert meta["n_shards"] == 2 and "| 1/2 |" in meta["shards"]
    assert meta["n_decoded_by_shards"] == sum(s["n_decoded"] for s in shards.values())
    assert meta["n_decoded"] == meta["n_images"]  # all decoded by this materialization
    [check] = [e.event_specific_data for e in result.all_events
               if e.event_type == DagsterEventType.ASSET_CHECK_EVALUATION]
    assert check.check_name == "images_accounted" and check.passed


def sharded_job():
    """The job as the code location defines it (module level: each step process rebuilds it)."""
    from dags_defs.definitions import defs

    return defs.resolve_job_def("study_images_sharded")


@pytest.mark.slow
def test_study_images_sharded_job_runs_each_shard_in_its_own_process(projects) -> None:
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
    shard_pids = [pid for step, pid in workers.items() if _is_shard_step(step)]
    assert len(set(shard_pids)) == 2  # two shard steps, two processes
    assert set(shards) == {"0/2", "1/2"}
    assert_same_output(paths, single)
