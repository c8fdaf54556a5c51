"""The production backends for real: Dagster storage and MLflow tracking + registry on PostgreSQL.

A throwaway PostgreSQL (tests/integration/conftest.py) stands in for the production server.
The Dagster instance is infra/dagster/dagster.yaml itself: read from the environment
(DAGSTER_PG_*) in the first test, with those references replaced by literal values in the
second, which runs the tiny chain through it up to the registered champion and then reads the
results back from Postgres: through Dagster, through MLflow, and with plain SQL.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dagster import AssetKey, DagsterInstance, DagsterRunStatus, RunsFilter

from cxr_assets.stages import STAGE_NAMES
from tests.helpers import REPO, tiny_params, write_params

INFRA = REPO / "infra"
PRODUCTION_DAGSTER_YAML = INFRA / "dagster" / "dagster.yaml"
POOLS = ("gpu", "dvc", "mlflow", "duckdb")


def _needs_postgres_clients():
    pytest.importorskip("psycopg2", reason="psycopg2-binary is not installed (pyproject dependency)")
    pytest.importorskip("dagster_postgres",
                        reason="dagster-postgres is not installed (see infra/README.md, Operations)")


def _with_literals(node, values: dict):
    """Replace every `{env: NAME}` of a Dagster config tree with values[NAME]."""
    if isinstance(node, dict):
        if set(node) == {"env"}:
            return values[node["env"]]
        return {key: _with_literals(value, values) for key, value in node.items()}
    if isinstance(node, list):
        return [_with_literals(value, values) for value in node]
    return node


def _dagster(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "dagster", *args], check=False,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"dagster {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_infra_yaml_files_parse():
    for path in [PRODUCTION_DAGSTER_YAML, INFRA / "dagster" / "workspace.yaml",
                 INFRA / "docker-compose.yaml", INFRA / "k8s" / "dagster-values.yaml"]:
        assert isinstance(yaml.safe_load(path.read_text()), dict), path
    compose = yaml.safe_load((INFRA / "docker-compose.yaml").read_text())
    assert {"postgres", "minio", "createbuckets", "mlflow", "code", "webserver",
            "daemon"} <= set(compose["services"])
    workspace = yaml.safe_load((INFRA / "dagster" / "workspace.yaml").read_text())
    assert workspace["load_from"][0]["grpc_server"]["port"] == 4000


def test_production_dagster_yaml_runs_on_postgres(postgres_server, tmp_path, monkeypatch):
    """infra/dagster/dagster.yaml, unchanged, with only DAGSTER_PG_* set: a Postgres instance."""
    _needs_postgres_clients()
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster_postgres import (
        PostgresEventLogStorage,
        PostgresRunStorage,
        PostgresScheduleStorage,
    )

    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(PRODUCTION_DAGSTER_YAML.read_text())
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    for name, value in postgres_server.dagster_env().items():
        monkeypatch.setenv(name, value)

    with DagsterInstance.get() as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        concurrency = instance.get_concurrency_config()
        assert concurrency.run_queue_config.max_concurrent_runs == 4
        limits = {limit["key"] for limit in concurrency.run_queue_config.tag_concurrency_limits}
        assert limits == {f"cxr/{pool}" for pool in POOLS}
        assert concurrency.pool_config.default_pool_limit == 1
        assert concurrency.pool_config.pool_granularity.value == "op"
        assert instance.run_monitoring_enabled and not instance.telemetry_enabled

    # What infra/README.md tells an operator to type, against the same instance.
    info = _dagster("instance", "info")
    for line in ("run_storage: PostgresRunStorage", "event_log_storage: PostgresEventLogStorage",
                 "schedule_storage: PostgresScheduleStorage"):
        assert line in info, info
    _dagster("instance", "concurrency", "set", "gpu", "1")
    _dagster("instance", "concurrency", "set", "mlflow", "4")
    with DagsterInstance.get() as instance:
        assert instance.event_log_storage.get_concurrency_info("gpu").slot_count == 1
        assert instance.event_log_storage.get_concurrency_info("mlflow").slot_count == 4

    tables = {row[0] for row in postgres_server.query(
        "dagster", "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")}
    assert {"runs", "event_logs", "jobs", "job_ticks", "concurrency_limits",
            "alembic_version"} <= tables
    assert not list(home.rglob("*.db")), "Dagster fell back to sqlite"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_chain_records_runs_and_champion_in_postgres(postgres_server, tmp_path, tiny_llm,
                                                      monkeypatch):
    _needs_postgres_clients()
    import mlflow
    from dagster import Definitions, in_process_executor
    from mlflow import MlflowClient

    from dags_defs.assets import pipeline_assets
    from dags_defs.definitions import cxr_pipeline
    from dags_defs.resources import DvcRecorder, PipelineConfig

    # The production dagster.yaml with literal connection values.
    values = {**postgres_server.dagster_env(), "DAGSTER_PG_PORT": postgres_server.port}
    config = _with_literals(yaml.safe_load(PRODUCTION_DAGSTER_YAML.read_text()), values)
    assert config["storage"]["postgres"]["postgres_db"]["hostname"] == "127.0.0.1"
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    monkeypatch.setenv("DAGSTER_HOME", str(home))

    # MLflow tracking and registry in the Postgres `mlflow` database, artifacts in a folder.
    mlflow_uri = postgres_server.url("mlflow", driver="psycopg2")
    project, artifacts = tmp_path / "project", tmp_path / "mlflow-artifacts"
    write_params(project, tiny_params(project, tiny_llm, registry={
        "tracking_uri": mlflow_uri, "artifact_location": str(artifacts)}))

    previous_uris = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    try:
        defs = Definitions(
            assets=pipeline_assets, jobs=[cxr_pipeline], executor=in_process_executor,
            resources={"pipeline": PipelineConfig(root=str(project)),
                       "dvc": DvcRecorder(enabled=False)})
        with DagsterInstance.get() as instance:
            assert type(instance.run_storage).__name__ == "PostgresRunStorage"
            result = defs.resolve_job_def("cxr_pipeline").execute_in_process(
                instance=instance, raise_on_error=False)
        assert result.success

        # A new instance object (as another process would open it) reads everything back.
        with DagsterInstance.get() as instance:
            (run,) = instance.get_runs(RunsFilter(run_ids=[result.run_id]))
            assert run.status == DagsterRunStatus.SUCCESS and run.job_name == "cxr_pipeline"
            for name in STAGE_NAMES:
                event = instance.get_latest_materialization_event(AssetKey(name))
                assert event is not None, f"no materialization of {name} in Postgres"
                assert event.run_id == result.run_id
            champion_meta = instance.get_latest_materialization_event(
                AssetKey("champion_model")).asset_materialization.metadata
            assert champion_meta["promoted"].value is True

        # MLflow's registry, through MLflow.
        client = MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri)
        assert client.get_registered_model("cxr-tiny").name == "cxr-tiny"
        versions = client.search_model_versions("name = 'cxr-tiny'")
        assert [str(v.version) for v in versions] == ["1"]
        champion = client.get_model_version_by_alias("cxr-tiny", "champion")
        assert str(champion.version) == "1"
        experiment = client.get_experiment_by_name("cxr-tiny")
        assert experiment.artifact_location == artifacts.as_uri()
        assert client.search_runs([experiment.experiment_id])
        model_dir = Path(mlflow.artifacts.download_artifacts(
            artifact_uri="models:/cxr-tiny@champion", dst_path=str(tmp_path / "champion"),
            tracking_uri=mlflow_uri))
        assert (model_dir / "MLmodel").is_file()
    finally:
        mlflow.set_tracking_uri(previous_uris[0])
        mlflow.set_registry_uri(previous_uris[1])

    # The rows themselves, with plain SQL.
    ((status, job),) = postgres_server.query(
        "dagster", "SELECT status, pipeline_name FROM runs WHERE run_id = %s", result.run_id)
    assert (status, job) == ("SUCCESS", "cxr_pipeline")
    materialized = {row[0] for row in postgres_server.query(
        "dagster", "SELECT DISTINCT asset_key FROM event_logs "
                   "WHERE run_id = %s AND dagster_event_type = 'ASSET_MATERIALIZATION'",
        result.run_id)}
    assert {AssetKey(name).to_string() for name in STAGE_NAMES} == materialized
    ((n_checks,),) = postgres_server.query(
        "dagster", "SELECT count(*) FROM event_logs "
                   "WHERE run_id = %s AND dagster_event_type = 'ASSET_CHECK_EVALUATION'",
        result.run_id)
    assert n_checks >= 5
    assert ("cxr-tiny",) in postgres_server.query("mlflow", "SELECT name FROM registered_models")
    aliases = dict(postgres_server.query(
        "mlflow", "SELECT alias, version FROM registered_model_aliases WHERE name = 'cxr-tiny'"))
    assert aliases.get("champion") == 1
    ((n_runs,),) = postgres_server.query("mlflow", "SELECT count(*) FROM runs")
    assert n_runs >= 1

    # Nothing fell back to the embedded stores.
    assert not (project / "mlflow.db").exists() and not (project / "mlartifacts").exists()
    assert not list(home.rglob("*.db")), "Dagster fell back to sqlite"
