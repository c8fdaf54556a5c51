"""Launch distributed CLIP training from the clip_model asset through Dagster Pipes.

When `clip.distributed.nproc_per_node > 1` the asset does not train in its own process: it
runs `torchrun ... -m cxr_assets.clip.launch` with `PipesSubprocessClient`, so rank 0's log
lines (one per step, with the metrics) and its final custom message stream into the Dagster
run, and a failing rank fails the asset. The rest of the stage (saving, MLflow registration,
model card) runs in the asset's process as for a single-process run.
"""

from __future__ import annotations

from dagster import AssetExecutionContext, PipesSubprocessClient


def run_clip_with_pipes(context: AssetExecutionContext, params, paths):
    """The clip_model stage with its training launched via torchrun under Dagster Pipes."""
    from cxr_assets.stages import clip_model

    client = PipesSubprocessClient()

    def launcher(command: list[str], env: dict[str, str]) -> None:
        context.log.info(f"launching: {' '.join(command)}")
        invocation = client.run(command=command, context=context, env=env, cwd=str(paths.root))
        for message in invocation.get_custom_messages():
            context.log.info(f"torchrun rank 0 reported: {message}")

    return clip_model.run(params, paths, progress=False, launcher=launcher)
