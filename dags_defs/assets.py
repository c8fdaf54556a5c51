"""Thin Dagster assets: each calls `cxr_assets.stages.<name>.run` and reports what happened.

The assets are generated from `cxr_assets.stages.STAGES`, the one declaration of the chain:
no stage logic lives here.
"""


from collections.abc import Callable
from dataclasses import dataclass
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
    check_specs = _check_specs(spec)

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
        return MaterializeResult(metadata=metadata, check_results=_check_results(context, result))

    return _stage_asset


def _check_specs(spec: StageSpec) -> list[AssetCheckSpec]:
    return [AssetCheckSpec(c.name, asset=spec.name, blocking=c.blocking, description=c.description)
            for c in spec.checks]


def _check_results(context, result) -> list[AssetCheckResult] | None:
    """The stage's checks as Dagster check results (a failed one is also logged)."""
    for c in result.checks:
        if not c.passed:
            context.log.warning(f"check {c.name} failed: {c.description} {c.metadata}")
    return [
        AssetCheckResult(
            check_name=c.name,
            passed=c.passed,
            severity=AssetCheckSeverity.ERROR if c.blocking else AssetCheckSeverity.WARN,
            description=c.description,
            metadata=to_metadata(c.metadata),
        )
        for c in result.checks
    ] or None


@dataclass(frozen=True)
class Sharding:
    """How a stage runs as a fan-out graph: plan -> one step per shard -> merge.

    The setting (read when the run starts) sets how many shard steps the plan maps out; each
    runs `stage.run(..., shard=(I, N))`, which does its share of the work into the stage's
    cache; the merge runs the stage as one process does, which then finds the work done and
    writes the same table. The executor decides where shard steps run: one after another in
    cxr_pipeline (in_process_executor), in parallel processes in the <stage>_sharded jobs
    (multiprocess executor), one pod each on Kubernetes.
    """

    setting: str  # params path of N, e.g. "text_encoder.embed_shards"
    plan_op: str  # op names: unique in the code location
    shard_op: str
    merge_op: str
    shard_description: str
    merge_description: str
    # (the merge's metadata, each shard step's metadata) -> the materialization's metadata
    combine: Callable[[dict, list[dict]], dict]


def _by_shard(shards: list[dict]) -> list[dict]:
    return sorted(shards, key=lambda s: int(s["shard"].split("/")[0]))


def _combine_embeddings(merged: dict, shards: list[dict]) -> dict:
    from cxr_assets.stages.base import TablePreview

    encoded_by_shards = sum(s["n_encoded_now"] for s in shards)
    return {
        **merged,
        # This materialization as a whole: what the shards and the merge encoded.
        "n_encoded_now": encoded_by_shards + merged["n_encoded_now"],
        "n_from_cache": merged["n_reports"] - encoded_by_shards - merged["n_encoded_now"],
        "n_encoded_by_merge": merged["n_encoded_now"],
        "n_shards": len(shards),
        "shards": TablePreview([
            {"shard": s["shard"], "reports in shard": s["n_texts_in_shard"],
             "encoded now": s["n_encoded_now"], "found cached": s["n_from_cache"]}
            for s in _by_shard(shards)]),
    }


def _combine_images(merged: dict, shards: list[dict]) -> dict:
    from cxr_assets.stages.base import TablePreview

    # The merge's figures already cover the whole run: it counts what the shards decoded as
    # decoded by this run (their records), as one process would.
    return {
        **merged,
        "n_decoded_by_shards": sum(s["n_decoded"] for s in shards),
        "n_shards": len(shards),
        "shards": TablePreview([
            {"shard": s["shard"], "images in shard": s["n_images_in_shard"],
             "decoded now": s["n_decoded"], "failed": s["n_failed"],
             "found cached": s["n_reused_from_cache"]}
            for s in _by_shard(shards)]),
    }


SHARDED_STAGES: dict[str, Sharding] = {
    "report_embeddings": Sharding(
        "text_encoder.embed_shards", "plan_shards", "embed_shard", "merge_shards",
        "Encode one shard's reports into the embedding cache.",
        "Write report_embeddings from the cache (encodes only what no shard did).",
        _combine_embeddings),
    "study_images": Sharding(
        "ingest.decode_shards", "plan_decode_shards", "decode_shard", "merge_decode_shards",
        "Decode one shard's images into the image cache.",
        "Write study_images from the cache and the shards' records (decodes only what no shard "
        "did).",
        _combine_images),
}


def _shard_ops(spec: StageSpec, sharding: Sharding):
    """The plan, shard and merge ops of a sharded stage (cxr_assets/embed/sharding.py,
    cxr_assets/ingest/image_shards.py)."""
    section, name = sharding.setting.split(".")
    check_outs = {s.get_python_identifier(): Out(Nothing) for s in _check_specs(spec)}

    @op(name=sharding.plan_op, ins={u: In(Nothing) for u in spec.upstream},
        out=DynamicOut(str), description=f"One shard step per shard of {sharding.setting}.")
    def plan(context: OpExecutionContext, pipeline: PipelineConfig):
        params, _ = pipeline.load()
        n_shards = getattr(getattr(params, section), name)
        context.log.info(f"{spec.name} in {n_shards} shard(s) ({sharding.setting})")
        for shard in range(n_shards):
            # "I/N" travels with the step: every shard step uses the N this plan was made with.
            yield DynamicOutput(f"{shard}/{n_shards}", mapping_key=f"shard_{shard}_of_{n_shards}")

    @op(name=sharding.shard_op, description=sharding.shard_description)
    def run_shard(context: OpExecutionContext, pipeline: PipelineConfig, shard: str) -> dict:
        from cxr_assets.sharding import parse_shard

        params, paths = pipeline.load()
        result = stage_module(spec.name).run(params, paths, progress=True,
                                             shard=parse_shard(shard, None, sharding.setting))
        context.add_output_metadata(to_metadata(result.metadata))
        return result.metadata

    # One output for the asset ("result"), one per asset check (the graph passes them on).
    @op(name=sharding.merge_op, pool=POOLS.get(spec.name),
        out={"result": Out(Nothing), **check_outs}, description=sharding.merge_description)
    def merge(context: OpExecutionContext, pipeline: PipelineConfig, dvc: DvcRecorder,
              shards: list[dict]):
        params, paths = pipeline.load()
        result = stage_module(spec.name).run(params, paths, progress=True)
        metadata = to_metadata(sharding.combine(result.metadata, shards))
        metadata["params_file"] = MetadataValue.path(str(pipeline.params_path()))
        if not result.blocking_failures:
            metadata["dvc"] = dvc.record(spec.name, paths.root, pipeline.params_path())
        yield MaterializeResult(metadata=metadata, check_results=_check_results(context, result))

    return plan, run_shard, merge


def _graph_outputs(spec: StageSpec, merged) -> object:
    """What the graph returns: the merge's asset output, and its check outputs when it has any."""
    if not spec.checks:
        return merged
    return {"result": merged.result,
            **{s.get_python_identifier(): getattr(merged, s.get_python_identifier())
               for s in _check_specs(spec)}}


def build_sharded_asset(spec: StageSpec):
    """A sharded stage (SHARDED_STAGES) as a fan-out graph asset: plan -> shards -> merge."""
    sharding = SHARDED_STAGES[spec.name]
    plan, run_shard, merge = _shard_ops(spec, sharding)
    options = {
        "name": spec.name,
        "ins": {name: AssetIn(key=name, dagster_type=Nothing) for name in spec.upstream},
        "group_name": spec.group,
        "kinds": set(spec.kinds),
        "description": stage_doc(spec.name),
        "check_specs": _check_specs(spec) or None,
    }
    if spec.name == "report_embeddings":
        if set(spec.upstream) != {"text_encoder", "report_texts"}:
            raise ValueError(f"report_embeddings' graph is wired for text_encoder and "
                             f"report_texts, STAGES says {spec.upstream}")

        @graph_asset(**options)
        def report_embeddings(text_encoder, report_texts):
            shards = plan(text_encoder=text_encoder, report_texts=report_texts).map(run_shard)
            return _graph_outputs(spec, merge(shards=shards.collect()))

        return report_embeddings
    if spec.name == "study_images":
        if spec.upstream != ("raw_studies",):
            raise ValueError(f"study_images' graph is wired for raw_studies, STAGES says "
                             f"{spec.upstream}")

        @graph_asset(**options)
        def study_images(raw_studies):
            shards = plan(raw_studies=raw_studies).map(run_shard)
            return _graph_outputs(spec, merge(shards=shards.collect()))

        return study_images
    raise ValueError(f"no fan-out graph is wired for {spec.name}")


pipeline_assets = [build_sharded_asset(spec) if spec.name in SHARDED_STAGES
                   else build_stage_asset(spec) for spec in STAGES]
# Re-evaluation is scheduled monitoring, not a DVC stage: nothing to record in dvc.lock.
reevaluation_asset = build_stage_asset(REEVALUATION, record_in_dvc=False)
ingest_batch_asset = build_stage_asset(INGEST_BATCH, record_in_dvc=False, partitions_def=ingest_batches)
