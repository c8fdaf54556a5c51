"""GPU paths of CLIP training, run by `make gpu-check` on a machine with a CUDA GPU: bf16
autocast steps, the online LoRA text tower, torchrun over every visible GPU (NCCL), and
checkpoint resume on the GPU.

Without a CUDA device these tests skip (allow-listed in tests/skip_allowlist.txt: no GPU is lent
to CI). CXR_GPU_TEST_DEVICE=cpu runs the same checks on the CPU (gloo, CPU autocast, two
processes), which is how the tests themselves are checked on a machine without a GPU.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cxr_assets.clip.train import train_clip
from cxr_assets.config import ClipParams, ClipTextLoraParams

DEVICE = os.environ.get("CXR_GPU_TEST_DEVICE", "cuda")
ON_CUDA = DEVICE.startswith("cuda")
REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("_train_worker.py")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(ON_CUDA and not torch.cuda.is_available(),
                       reason="needs a CUDA GPU (`make gpu-check` on a GPU machine)"),
]


def _params(**overrides) -> ClipParams:
    values = {"vision_backbone": "resnet10t", "image_size": 32, "embed_dim": 16, "epochs": 3,
              "batch_size": 8, "lr": 3e-3, "warmup_steps": 1, "threads": 1, "device": DEVICE}
    values.update(overrides)
    return ClipParams(**values)


@pytest.fixture
def pairs(png_factory):
    rng = np.random.default_rng(0)
    labels = np.arange(24) % 4
    paths = png_factory(labels, size=32)
    centres = rng.normal(size=(4, 24))
    texts = (centres[labels] + 0.2 * rng.normal(size=(len(labels), 24))).astype(np.float32)
    return paths[:16], texts[:16], paths[16:], texts[16:]


def _train(pairs, **overrides):
    return train_clip(*pairs, params=_params(**overrides), text_encoder_hash="h", seed=0,
                      progress=False)


def test_bf16_autocast_steps_on_the_device(pairs):
    fp32 = _train(pairs)
    bf16 = _train(pairs, precision="bf16")
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"])
               for r in bf16.history)
    assert bf16.history[-1]["train_loss"] < bf16.history[0]["train_loss"]
    # bf16 really ran (not bit-identical to fp32) and stays close to it.
    assert bf16.history[0]["train_loss"] != fp32.history[0]["train_loss"]
    assert bf16.history[0]["train_loss"] == pytest.approx(fp32.history[0]["train_loss"], rel=0.05)
    if ON_CUDA:
        fp16 = _train(pairs, precision="fp16")  # the grad-scaler path exists only on CUDA
        assert all(math.isfinite(r["train_loss"]) for r in fp16.history)


def test_online_lora_text_tower_on_the_device(tiny_llm, png_factory, tmp_path):
    from cxr_assets.text.encoder import TextEncoder

    folder = tmp_path / "text_encoder"
    TextEncoder.from_base(tiny_llm, max_length=48, bidirectional=True).save_pretrained(folder)
    labels = np.arange(12) % 4
    paths = png_factory(labels, size=32)
    reports = [f"Finding number {i}. Pleural effusion {'present' if i % 2 else 'absent'}."
               for i in labels]
    params = _params(epochs=2, batch_size=4, micro_batch_size=2, precision="bf16",
                     text_tower="lora", text_lora=ClipTextLoraParams(r=4))
    result = train_clip(paths[:8], reports[:8], paths[8:], reports[8:], params=params,
                        text_encoder_hash="h", seed=0, progress=False, text_encoder_dir=folder)
    assert all(math.isfinite(r["train_loss"]) for r in result.history)
    lora_b = [p for n, p in result.model.text_tower.body.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b)


def _torchrun(script: Path, args: list[str], nproc: int) -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "DEVICE": DEVICE}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", str(script), *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
                          check=False)


def _world() -> int:
    return torch.cuda.device_count() if ON_CUDA else 2


def test_process_group_all_reduce_over_every_visible_gpu(tmp_path):
    """NCCL (gloo on CPU) across torchrun ranks, one per visible GPU, even when there is one."""
    script = tmp_path / "allreduce.py"
    script.write_text(
        "import os, torch, torch.distributed as dist\n"
        "cuda = os.environ['DEVICE'].startswith('cuda')\n"
        "dist.init_process_group('nccl' if cuda else 'gloo')\n"
        "rank = dist.get_rank()\n"
        "device = torch.device(f\"cuda:{os.environ['LOCAL_RANK']}\" if cuda else 'cpu')\n"
        "x = torch.full((4,), float(rank + 1), device=device)\n"
        "dist.all_reduce(x)\n"
        "n = dist.get_world_size()\n"
        "assert torch.allclose(x.cpu(), torch.full((4,), n * (n + 1) / 2)), x\n"
        "print('backend', dist.get_backend(), 'world', n)\n"
        "dist.destroy_process_group()\n")
    done = _torchrun(script, [], _world())
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"backend {'nccl' if ON_CUDA else 'gloo'} world {_world()}" in done.stdout


def _pair_file(pairs, tmp_path: Path) -> Path:
    file = tmp_path / "pairs.npz"
    np.savez(file, train_paths=[str(p) for p in pairs[0]], train_text=pairs[1],
             val_paths=[str(p) for p in pairs[2]], val_text=pairs[3])
    return file


def _spec_params(**overrides) -> dict:
    return _params(**overrides).model_dump()


def test_torchrun_ddp_training_matches_one_process(pairs, tmp_path):
    # A ViT: no BatchNorm, whose per-rank statistics would differ from one process's.
    single = _train(pairs, vision_backbone="test_vit")
    out = tmp_path / "ddp.safetensors"
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"pairs": str(_pair_file(pairs, tmp_path)), "seed": 0,
                                "params": _spec_params(vision_backbone="test_vit"),
                                "out": str(out)}))
    done = _torchrun(WORKER, [str(spec)], _world())
    assert done.returncode == 0, done.stderr[-3000:]
    meta = json.loads(Path(str(out) + ".json").read_text())
    assert meta["world_size"] == _world()
    for mine, theirs in zip(meta["history"], single.history, strict=True):
        assert mine["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-2)


def test_checkpoint_resume_on_the_device(pairs, tmp_path):
    params = _spec_params(checkpoint={"every_n_steps": 3})
    reference = train_clip(*pairs, params=ClipParams(**params), text_encoder_hash="h", seed=0,
                           progress=False)
    ckpt = tmp_path / "ckpt"
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"pairs": str(_pair_file(pairs, tmp_path)), "seed": 0,
                                "params": params, "kill_at_step": 5, "checkpoint_dir": str(ckpt),
                                "out": str(tmp_path / "never.safetensors")}))
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    killed = subprocess.run([sys.executable, str(WORKER), str(spec)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600, check=False)
    assert killed.returncode == -9, killed.stderr[-3000:]
    resumed = train_clip(*pairs, params=ClipParams(**params), text_encoder_hash="h", seed=0,
                         progress=False, checkpoint_dir=ckpt)
    assert resumed.resumed_from_step == 3 and resumed.steps == reference.steps
    assert resumed.history[-1]["train_loss"] == pytest.approx(reference.history[-1]["train_loss"],
                                                              rel=1e-2)
