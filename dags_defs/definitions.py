"""The one Definitions object: assets, checks, jobs, the re-evaluation schedule, resources."""

from __future__ import annotations

from dagster import (
    AssetSelection,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    Definitions,
    RunRequest,
    ScheduleDefinition,
    SensorEvaluationContext,
    SkipReason,
    define_asset_job,
    in_process_executor,
    sensor,
)

from dags_defs.assets import pipeline_assets, reevaluation_asset
from dags_defs.resources import DvcRecorder, PipelineConfig

# One process, one step at a time: the chain is sequential, DuckDB and DVC want one writer,
# and the stages already use every core for torch and image decoding.
cxr_pipeline = define_asset_job(
    "cxr_pipeline",
    selection=AssetSelection.assets(*pipeline_assets),
    description="The whole chain: ingestion -> reports -> text encoder -> CLIP -> evaluation -> promotion.",
)
champion_reevaluation_job = define_asset_job(
    "champion_reevaluation_job",
    selection=AssetSelection.assets(reevaluation_asset),
    description="Re-evaluate models:/<name>@champion on the current test split.",
)
champion_reevaluation = ScheduleDefinition(
    name="champion_reevaluation",
    job=champion_reevaluation_job,
    cron_schedule="0 6 * * *",
    default_status=DefaultScheduleStatus.STOPPED,
    description="Daily re-evaluation of the champion model; warns on metric drift.",
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
    assets=[*pipeline_assets, reevaluation_asset],
    jobs=[cxr_pipeline, champion_reevaluation_job],
    schedules=[champion_reevaluation],
    sensors=[new_data_batch_sensor],
    resources={"pipeline": PipelineConfig(), "dvc": DvcRecorder()},
    executor=in_process_executor,
)
