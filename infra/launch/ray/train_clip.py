"""Run the CLIP trainer on a Ray cluster (e.g. submitted from Dagster with dagster-ray).

    ray job submit --working-dir . -- python infra/launch/ray/train_clip.py \
        artifacts/clip_spec.json --workers 4 --gpu

Ray's TorchTrainer starts one worker per rank and sets up the torch process group
environment (MASTER_ADDR, RANK, WORLD_SIZE, LOCAL_RANK), which is all `cxr_assets.clip.launch`
needs: each worker calls its `main(spec)`; rank 0 writes the model and result.json into the
spec's output folder (a path every node can reach). Not exercised in CI (needs ray[train]).
"""

from __future__ import annotations

import argparse


def _worker(config: dict) -> None:
    from cxr_assets.clip.launch import main

    main(config["spec"])


def run(spec: str, workers: int, gpu: bool) -> None:
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        _worker,
        train_loop_config={"spec": spec},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpu),
    )
    trainer.fit()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--gpu", action="store_true")
    args = parser.parse_args()
    run(args.spec, args.workers, args.gpu)
