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
    AssetIn,
    AssetKey,
    DynamicOut,
    DynamicOutput,
    DynamicPartitionsDefinition,
    In,
    MaterializeResult,
    MetadataValue,
    Nothing,
    OpExecutionContext,
    Out,
    asset,
    graph_asset,
    op,
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


def build_sharded_embeddings_asset(spec: StageSpec):
    """report_embeddings as a fan-out graph: plan -> one step per shard -> merge.

    text_encoder.embed_shards (read when the run starts) sets how many shard steps the plan
    maps out; each encodes its share of the reports into the embedding cache
    (cxr_assets/embed/sharding.py), and the merge writes the table from the cache exactly as
    the single-process stage does. The executor decides where shard steps run: one after
    another in cxr_pipeline (in_process_executor), in parallel processes in the
    report_embeddings_sharded job (multiprocess executor), one pod each on Kubernetes.
    """
    if set(spec.upstream) != {"text_encoder", "report_texts"}:
        raise ValueError(f"report_embeddings' graph is wired for text_encoder and report_texts, "
                         f"STAGES says {spec.upstream}")

    @op(name="plan_shards", ins={"text_encoder": In(Nothing), "report_texts": In(Nothing)},
        out=DynamicOut(str), description="One shard step per shard of text_encoder.embed_shards.")
    def plan_shards(context: OpExecutionContext, pipeline: PipelineConfig):
        params, _ = pipeline.load()
        n_shards = params.text_encoder.embed_shards
        context.log.info(f"report_embeddings in {n_shards} shard(s) (text_encoder.embed_shards)")
        for shard in range(n_shards):
            # "I/N" travels with the step: every shard step uses the N this plan was made with.
            yield DynamicOutput(f"{shard}/{n_shards}", mapping_key=f"shard_{shard}_of_{n_shards}")

    @op(name="embed_shard", description="Encode one shard's reports into the embedding cache.")
    def embed_shard(context: OpExecutionContext, pipeline: PipelineConfig, shard: str) -> dict:
        from cxr_assets.embed.sharding import parse_shard

        params, paths = pipeline.load()
        result = stage_module(spec.name).run(params, paths, progress=True,
                                             shard=parse_shard(shard))
        context.add_output_metadata(to_metadata(result.metadata))
        return result.metadata

    @op(name="merge_shards", pool=POOLS.get(spec.name), out=Out(Nothing),
        description="Write report_embeddings from the cache (encodes only what no shard did).")
    def merge_shards(context: OpExecutionContext, pipeline: PipelineConfig, dvc: DvcRecorder,
                     shards: list[dict]) -> None:
        from cxr_assets.stages.base import TablePreview

        params, paths = pipeline.load()
        result = stage_module(spec.name).run(params, paths, progress=True)
        merged = result.metadata
        encoded_by_shards = sum(s["n_encoded_now"] for s in shards)
        metadata = to_metadata({
            **merged,
            # This materialization as a whole: what the shards and the merge encoded.
            "n_encoded_now": encoded_by_shards + merged["n_encoded_now"],
            "n_from_cache": merged["n_reports"] - encoded_by_shards - merged["n_encoded_now"],
            "n_encoded_by_merge": merged["n_encoded_now"],
            "n_shards": len(shards),
            "shards": TablePreview([
                {"shard": s["shard"], "reports in shard": s["n_texts_in_shard"],
                 "encoded now": s["n_encoded_now"], "found cached": s["n_from_cache"]}
                for s in sorted(shards, key=lambda s: int(s["shard"].split("/")[0]))]),
        })
        metadata["params_file"] = MetadataValue.path(str(pipeline.params_path()))
        metadata["dvc"] = dvc.record(spec.name, paths.root, pipeline.params_path())
        context.add_output_metadata(metadata)

    @graph_asset(
        name=spec.name,
        ins={name: AssetIn(key=name, dagster_type=Nothing) for name in spec.upstream},
        group_name=spec.group,
        kinds=set(spec.kinds),
        description=stage_doc(spec.name),
    )
    def report_embeddings(text_encoder, report_texts):
        shards = plan_shards(text_encoder=text_encoder, report_texts=report_texts).map(embed_shard)
        return merge_shards(shards=shards.collect())

    return report_embeddings


SHARDED_STAGE = "report_embeddings"
pipeline_assets = [build_sharded_embeddings_asset(spec) if spec.name == SHARDED_STAGE
                   else build_stage_asset(spec) for spec in STAGES]
# Re-evaluation is scheduled monitoring, not a DVC stage: nothing to record in dvc.lock.
reevaluation_asset = build_stage_asset(REEVALUATION, record_in_dvc=False)
ingest_batch_asset = build_stage_asset(INGEST_BATCH, record_in_dvc=False, partitions_def=ingest_batches)
