"""Thin Dagster assets: each calls `cxr_assets.stages.<name>.run` and reports what happened.

The assets are generated from `cxr_assets.stages.STAGES`, the one declaration of the chain:
no stage logic lives here.
"""


from pathlib import Path
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    DynamicPartitionsDefinition,
    MaterializeResult,
    MetadataValue,
    asset,
)

from cxr_assets.stages import (
    INGEST_BATCH,
    REEVALUATION,
    SIDE_INPUTS,
    STAGES,
    StageSpec,
    stage_doc,
    stage_module,
)
from dags_defs.resources import DvcRecorder, PipelineConfig


def to_metadata(values: dict[str, Any]) -> dict[str, Any]:
    """Stage metadata -> Dagster metadata values (markdown, paths, json, numbers)."""
    from cxr_assets.stages.base import Markdown, TablePreview

    out: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, Markdown):
            out[key] = MetadataValue.md(value.text)
        elif isinstance(value, TablePreview):
            out[key] = MetadataValue.md(value.to_markdown())
        elif isinstance(value, Path):
            out[key] = MetadataValue.path(str(value))
        elif isinstance(value, (dict, list, tuple)):
            out[key] = MetadataValue.json(_plain(value))
        elif isinstance(value, (bool, int, float, str)):
            out[key] = value
        else:
            out[key] = str(value)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return str(value)


# Concurrency pools (limits set per instance: infra/dagster/dagster.yaml, `dagster instance
# concurrency set <pool> <n>`): one writer per DuckDB catalog, GPU work one at a time, MLflow
# registry moves serialized. Unlisted stages use no pool.
POOLS = {
    "raw_studies": "duckdb", "ingest_batch": "duckdb",
    "text_encoder": "gpu", "report_embeddings": "gpu", "clip_model": "gpu", "study_embeddings": "gpu",
    "evaluation_report": "mlflow", "champion_model": "mlflow", "champion_reevaluation": "mlflow",
}

# One partition per batch folder in ingest.drop_dir, added by new_ingest_batch_sensor.
ingest_batches = DynamicPartitionsDefinition(name="ingest_batches")


def build_stage_asset(spec: StageSpec, record_in_dvc: bool = True, partitions_def=None):
    check_specs = [
        AssetCheckSpec(c.name, asset=spec.name, blocking=c.blocking, description=c.description)
        for c in spec.checks
    ]

    @asset(
        name=spec.name,
        deps=[AssetKey(u) for u in (*spec.upstream, *SIDE_INPUTS.get(spec.name, ()))],
        partitions_def=partitions_def,
        pool=POOLS.get(spec.name),
        group_name=spec.group,
        kinds=set(spec.kinds),
        description=stage_doc(spec.name),
        check_specs=check_specs or None,
    )
    def _stage_asset(context: AssetExecutionContext, pipeline: PipelineConfig, dvc: DvcRecorder):
        params, paths = pipeline.load()
        if spec.name == "clip_model" and params.clip.distributed.nproc_per_node > 1:
            # torchrun through Dagster Pipes: logs and metrics stream back into this run.
            from dags_defs.clip_pipes import run_clip_with_pipes

            result = run_clip_with_pipes(context, params, paths)
        elif partitions_def is not None:
            result = stage_module(spec.name).run(params, paths, progress=True,
                                                 batch=context.partition_key)
        else:
            result = stage_module(spec.name).run(params, paths, progress=True)
        metadata = to_metadata(result.metadata)
        metadata["params_file"] = MetadataValue.path(str(pipeline.params_path()))
        if record_in_dvc and not result.blocking_failures:
            metadata["dvc"] = dvc.record(spec.name, paths.root, pipeline.params_path())
        checks = [
            AssetCheckResult(
                check_name=c.name,
                passed=c.passed,
                severity=AssetCheckSeverity.ERROR if c.blocking else AssetCheckSeverity.WARN,
                description=c.description,
                metadata=to_metadata(c.metadata),
            )
            for c in result.checks
        ]
        for c in result.checks:
            if not c.passed:
                context.log.warning(f"check {c.name} failed: {c.description} {c.metadata}")
        return MaterializeResult(metadata=metadata, check_results=checks or None)

    return _stage_asset


pipeline_assets = [build_stage_asset(spec) for spec in STAGES]
# Re-evaluation is scheduled monitoring, not a DVC stage: nothing to record in dvc.lock.
reevaluation_asset = build_stage_asset(REEVALUATION, record_in_dvc=False)
ingest_batch_asset = build_stage_asset(INGEST_BATCH, record_in_dvc=False, partitions_def=ingest_batches)
