"""The Dagster code location loads and declares the graph users expect."""

from __future__ import annotations

from dagster import AssetKey

from cxr_assets.stages import INGEST_BATCH, REEVALUATION, SIDE_INPUTS, STAGES


def test_definitions_load_with_every_asset_check_job_and_schedule():
    from dags_defs.definitions import defs

    graph = defs.resolve_asset_graph()
    keys = {k.path[-1] for k in graph.get_all_asset_keys()}
    assert keys == {s.name for s in STAGES} | {REEVALUATION.name, INGEST_BATCH.name}
    for spec in STAGES:
        parents = {k.path[-1] for k in graph.get(AssetKey(spec.name)).parent_keys}
        assert parents == set(spec.upstream) | set(SIDE_INPUTS.get(spec.name, ())), spec.name
    assert graph.get(AssetKey(INGEST_BATCH.name)).partitions_def is not None
    check_names = {k.name for k in graph.asset_check_keys}
    assert {"reports_contract", "no_patient_leakage", "accounting_balanced", "no_metric_drift"} <= check_names
    assert defs.resolve_job_def("cxr_pipeline") is not None
    assert defs.resolve_schedule_def("champion_reevaluation").cron_schedule == "0 6 * * *"


def test_asset_descriptions_come_from_stage_docstrings():
    from dags_defs.definitions import defs

    graph = defs.resolve_asset_graph()
    description = graph.get(AssetKey("clip_model")).description
    assert "challenger" in description
