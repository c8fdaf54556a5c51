"""The one Definitions object: assets, checks, jobs, the re-evaluation schedule, resources."""

from __future__ import annotations

import os

from dagster import (
    AssetSelection,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    Definitions,
    RunRequest,
    ScheduleDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    define_asset_job,
    in_process_executor,
    multiprocess_executor,
    sensor,
)

from dags_defs.alerts import run_failure_alerts
from dags_defs.assets import ingest_batch_asset, ingest_batches, pipeline_assets, reevaluation_asset
from dags_defs.resources import DvcRecorder, PipelineConfig

# One process, one step at a time: the chain is sequential, DuckDB and DVC want one writer,
# and the stages already use every core for torch and image decoding.
cxr_pipeline = define_asset_job(
    "cxr_pipeline",
    selection=AssetSelection.assets(*pipeline_assets),
    description="The whole chain: ingestion -> reports -> text encoder -> CLIP -> evaluation -> promotion.",
    # Run-level limits of infra/dagster/dagster.yaml (queued run coordinator) key on these tags.
    tags={"cxr/gpu": "1", "cxr/dvc": "1", "cxr/duckdb": "1", "cxr/mlflow": "1"},
)

STEP_EXECUTOR_ENV = "CXR_STEP_EXECUTOR"


def parallel_step_executor():
    """Where the steps of a parallel job run: one process per step here (Dagster's
    multiprocess_executor); with CXR_STEP_EXECUTOR=k8s (set in infra/k8s/dagster-values.yaml)
    one Kubernetes Job per step (dagster-k8s's k8s_job_executor, which takes the image, env and
    volumes of the run launcher)."""
    choice = os.environ.get(STEP_EXECUTOR_ENV, "multiprocess")
    if choice == "multiprocess":
        return multiprocess_executor
    if choice == "k8s":
        try:
            from dagster_k8s import k8s_job_executor
        except ImportError as error:
            raise ImportError(f"{STEP_EXECUTOR_ENV}=k8s needs dagster-k8s: pip install "
                              "'.[k8s]' (the infra/Dockerfile image has it)") from error
        return k8s_job_executor
    raise ValueError(f"{STEP_EXECUTOR_ENV} is {choice!r}: use multiprocess or k8s")


# report_embeddings alone, its shard steps in parallel (text_encoder.embed_shards of them).
# Concurrency: `execution: {config: {max_concurrent: N}}` in the run config
# (default: one step per CPU); on Kubernetes every step is its own pod.
report_embeddings_sharded = define_asset_job(
    "report_embeddings_sharded",
    selection=AssetSelection.assets("report_embeddings"),
    description="report_embeddings with its text_encoder.embed_shards shards run in parallel "
    "(one process or pod each), then merged into the same table one process writes.",
    executor_def=parallel_step_executor(),
    tags={"cxr/gpu": "1", "cxr/dvc": "1"},
)
# study_images alone, its decode shard steps in parallel (ingest.decode_shards of them); the
# same executor and concurrency setting as report_embeddings_sharded.
study_images_sharded = define_asset_job(
    "study_images_sharded",
    selection=AssetSelection.assets("study_images"),
    description="study_images with its ingest.decode_shards shards run in parallel "
    "(one process or pod each), then merged into the same table one process writes.",
    executor_def=parallel_step_executor(),
    tags={"cxr/dvc": "1"},
)
champion_reevaluation_job = define_asset_job(
    "champion_reevaluation_job",
    selection=AssetSelection.assets(reevaluation_asset),
    description="Re-evaluate models:/<name>@champion on the current test split.",
    tags={"cxr/mlflow": "1"},
)
ingest_batch_job = define_asset_job(
    "ingest_batch_job",
    selection=AssetSelection.assets(ingest_batch_asset, "raw_studies", "study_images", "report_texts"),
    description="Check one new drop-folder batch, then re-catalogue: new studies reach the catalog, "
    "image cache and report texts; re-run cxr_pipeline (or let the data sensor re-evaluate) next.",
    tags={"cxr/duckdb": "1", "cxr/dvc": "1"},
)
champion_reevaluation = ScheduleDefinition(
    name="champion_reevaluation",
    job=champion_reevaluation_job,
    cron_schedule="0 6 * * *",
    default_status=DefaultScheduleStatus.STOPPED,
    description="Daily re-evaluation of the champion model; warns on metric drift.",
)



@sensor(job=ingest_batch_job, minimum_interval_seconds=60,
        default_status=DefaultSensorStatus.STOPPED)
def new_ingest_batch_sensor(context: SensorEvaluationContext, pipeline: PipelineConfig):
    """Registers each new sub-folder of ingest.drop_dir as an ingest_batches partition and ingests it."""
    from cxr_assets.ingest.catalog import batch_folders

    params, paths = pipeline.load()
    if not params.ingest.drop_dir:
        return SkipReason("ingest.drop_dir is null: no drop folder to watch")
    known = set(context.instance.get_dynamic_partitions(ingest_batches.name))
    new = [p.name for p in batch_folders(paths.at(params.ingest.drop_dir)) if p.name not in known]
    if not new:
        return SkipReason(f"no new batch folder in {paths.at(params.ingest.drop_dir)}")
    return SensorResult(
        run_requests=[RunRequest(partition_key=name, run_key=f"batch-{name}",
                                 tags={"trigger": "new_ingest_batch"}) for name in new],
        dynamic_partitions_requests=[ingest_batches.build_add_request(new)],
    )


@sensor(job=champion_reevaluation_job, minimum_interval_seconds=300,
        default_status=DefaultSensorStatus.STOPPED)
def new_data_batch_sensor(context: SensorEvaluationContext, pipeline: PipelineConfig):
    """Re-evaluates the champion when a new data batch changed the test catalog tables."""
    from cxr_assets.stages.reevaluation import data_fingerprint

    _, paths = pipeline.load()
    if not paths.splits_table.exists():
        return SkipReason(f"no catalog yet ({paths.splits_table} missing)")
    fingerprint = data_fingerprint(paths)
    if fingerprint == context.cursor:
        return SkipReason("catalog unchanged since the last re-evaluation")
    context.update_cursor(fingerprint)
    return RunRequest(run_key=f"data-{fingerprint}", tags={"trigger": "new_data_batch"})


defs = Definitions(
    assets=[*pipeline_assets, reevaluation_asset, ingest_batch_asset],
    jobs=[cxr_pipeline, report_embeddings_sharded, study_images_sharded, champion_reevaluation_job,
          ingest_batch_job],
    schedules=[champion_reevaluation],
    sensors=[new_ingest_batch_sensor, new_data_batch_sensor, run_failure_alerts],
    resources={"pipeline": PipelineConfig(), "dvc": DvcRecorder()},
    executor=in_process_executor,
)
