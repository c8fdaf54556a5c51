"""Large-batch and fault-tolerance guarantees of the CLIP trainer.

- GradCache gives the gradient of the full-batch loss (all loss kinds), to float64 precision;
- the per-process "local" losses add up to the global loss (the DDP decomposition);
- 2 CPU processes under torchrun (gloo) reach the single-process weights at the same global batch;
- a run killed with SIGKILL and resumed from its checkpoint ends bit-identical to an
  uninterrupted run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cxr_assets.clip.gradcache import compute_gradients
from cxr_assets.clip.loss import contrastive_loss
from cxr_assets.clip.model import ClipModelConfig, DualTowerClip
from cxr_assets.clip.train import train_clip
from cxr_assets.config import ClipParams
from tests.clip._gradcheck import assert_micro_batches_match, grads

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("_train_worker.py")
N_TRAIN, N_VAL, TEXT_DIM = 16, 8, 24


@pytest.mark.parametrize("kind", ["infonce", "siglip", "reference"])
def test_gradcache_equals_full_batch_gradient(kind):
    torch.manual_seed(0)
    # test_vit: LayerNorm only, so chunking cannot change the function (no batch statistics).
    config = ClipModelConfig("test_vit", 32, TEXT_DIM, 16, 2.0, 4.6, loss=kind, text_adapter="mlp")
    model = DualTowerClip(config).double().train()
    images = torch.randn(16, 1, 32, 32, dtype=torch.float64)
    texts = torch.randn(16, TEXT_DIM, dtype=torch.float64)

    model.zero_grad(set_to_none=True)
    full = compute_gradients(model, images, texts, micro_batch=None)
    reference = grads(model)
    assert_micro_batches_match(model, images, texts, full, reference, kind)
    # The check can fail: a gradient with one chunk's cached gradient zeroed is different.
    model.zero_grad(set_to_none=True)
    compute_gradients(model, images[:8], texts[:8], micro_batch=4)
    assert any(not torch.allclose(grads(model)[n], reference[n]) for n in reference)


def test_gradcache_keeps_batchnorm_running_stats_single_update():
    torch.manual_seed(0)
    model = DualTowerClip(ClipModelConfig("resnet10t", 32, TEXT_DIM, 16, 2.0, 4.6)).train()
    images, texts = torch.randn(8, 1, 32, 32), torch.randn(8, TEXT_DIM)
    before = model.visual.bn1.num_batches_tracked.item() if hasattr(model.visual, "bn1") else None
    compute_gradients(model, images, texts, micro_batch=4)
    tracked = [b for n, b in model.named_buffers() if n.endswith("num_batches_tracked")]
    # Two chunks, one graph pass each: every BatchNorm counted exactly 2 batches, not 4.
    assert tracked and all(int(t) == 2 for t in tracked), before


@pytest.mark.parametrize("kind", ["infonce", "siglip", "reference"])
def test_local_losses_average_to_global_loss(kind):
    g = torch.Generator().manual_seed(1)
    img, txt = torch.randn(12, 6, generator=g, dtype=torch.float64), torch.randn(12, 6, generator=g,
                                                                                 dtype=torch.float64)
    scale, bias = torch.tensor(1.1, dtype=torch.float64), torch.tensor(-2.0, dtype=torch.float64)
    full = contrastive_loss(img, txt, img, txt, 0, scale, bias, kind)
    parts = [contrastive_loss(img[r * 4:(r + 1) * 4], txt[r * 4:(r + 1) * 4], img, txt, r * 4,
                              scale, bias, kind) for r in range(3)]
    assert float(sum(parts) / 3) == pytest.approx(float(full), rel=1e-12)
    with pytest.raises(ValueError, match="row_offset 10 does not fit 4 rows"):
        contrastive_loss(img[:4], txt[:4], img, txt, 10, scale, bias, kind)


# ------------------------------------------------------------------------- subprocess runs


@pytest.fixture
def pair_file(png_factory, tmp_path):
    rng = np.random.default_rng(0)
    labels = np.arange(N_TRAIN + N_VAL) % 4
    paths = [str(p) for p in png_factory(labels, size=32)]
    centres = rng.normal(size=(4, TEXT_DIM))
    texts = (centres[labels] + 0.2 * rng.normal(size=(len(labels), TEXT_DIM))).astype(np.float32)
    file = tmp_path / "pairs.npz"
    np.savez(file, train_paths=paths[:N_TRAIN], train_text=texts[:N_TRAIN],
             val_paths=paths[N_TRAIN:], val_text=texts[N_TRAIN:])
    return file


def _params(**overrides) -> dict:
    values = {"vision_backbone": "test_vit", "image_size": 32, "embed_dim": 16, "epochs": 3,
              "batch_size": 8, "lr": 3e-3, "warmup_steps": 1, "threads": 1, "device": "cpu"}
    values.update(overrides)
    return values


def _in_process(pair_file: Path, params: dict, checkpoint_dir: Path | None = None):
    data = np.load(pair_file)
    return train_clip(
        [Path(p) for p in data["train_paths"]], data["train_text"],
        [Path(p) for p in data["val_paths"]], data["val_text"],
        params=ClipParams(**params), text_encoder_hash="h", seed=5, progress=False,
        checkpoint_dir=checkpoint_dir,
    )


def _launch(tmp_path: Path, name: str, spec: dict, nproc: int = 1) -> subprocess.CompletedProcess:
    spec_file = tmp_path / f"{name}.json"
    spec_file.write_text(json.dumps(spec))
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", str(WORKER), str(spec_file)]
    else:
        cmd = [sys.executable, str(WORKER), str(spec_file)]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
                          check=False)


def _load(file: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(file))


@pytest.mark.slow
def test_two_gloo_processes_match_single_process(pair_file, tmp_path):
    single = _in_process(pair_file, _params())
    expected = {k: v for k, v in single.model.state_dict().items()}
    for name, extra in (("ddp", {}), ("ddp_gradcache", {"micro_batch_size": 2})):
        out = tmp_path / f"{name}.safetensors"
        spec = {"pairs": str(pair_file), "params": _params(**extra), "seed": 5, "out": str(out)}
        done = _launch(tmp_path, name, spec, nproc=2)
        assert done.returncode == 0, done.stderr[-3000:]
        assert json.loads(Path(str(out) + ".json").read_text())["world_size"] == 2
        got = _load(out)
        assert got.keys() == expected.keys()
        # float32 sums in another order, amplified by Adam's normalization over 6 steps, leave
        # differences of ~3e-5; one optimizer step moves weights by ~lr = 3e-3.
        for key, value in expected.items():
            torch.testing.assert_close(got[key], value, rtol=1e-3, atol=1e-4,
                                       msg=f"{name}: {key}")
        history = json.loads(Path(str(out) + ".json").read_text())["history"]
        for mine, theirs in zip(history, single.history, strict=True):
            assert mine["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-5)
            assert mine["val_loss"] == pytest.approx(theirs["val_loss"], rel=1e-4)
    # Not trivially equal: one more epoch moves the weights well beyond that tolerance.
    longer = _in_process(pair_file, _params(epochs=4)).model.state_dict()
    assert any(not torch.allclose(longer[k], expected[k], rtol=1e-3, atol=1e-4)
               for k in expected if expected[k].is_floating_point())


@pytest.mark.slow
def test_sigkill_midway_then_resume_matches_uninterrupted_run(pair_file, tmp_path):
    # 16 pairs / batch 8 = 2 steps per epoch, 3 epochs = 6 steps; checkpoints every 3 steps
    # (mid-epoch 2), killed at step 5: the resume restarts inside an epoch from step 3.
    params = _params(checkpoint={"every_n_steps": 3})
    params["vision_backbone"] = "resnet10t"  # BatchNorm buffers must survive the restart too
    reference = _in_process(pair_file, params)

    ckpt_dir = tmp_path / "ckpt"
    spec = {"pairs": str(pair_file), "params": params, "seed": 5, "kill_at_step": 5,
            "checkpoint_dir": str(ckpt_dir), "out": str(tmp_path / "never.safetensors")}
    killed = _launch(tmp_path, "killed", spec)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert not (tmp_path / "never.safetensors").exists()
    meta = json.loads((ckpt_dir / "last" / "meta.json").read_text())
    assert meta["step"] == 3

    resumed = _in_process(pair_file, params, checkpoint_dir=ckpt_dir)
    assert resumed.resumed_from_step == 3 and resumed.steps == 6
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    assert resumed.best_epoch == reference.best_epoch
    expected, got = reference.model.state_dict(), resumed.model.state_dict()
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    assert json.loads((ckpt_dir / "last" / "meta.json").read_text())["step"] == 6
    assert (ckpt_dir / "best" / "model.safetensors").is_file()
    # Without the checkpoint (fresh dir, resume on) the same call retrains from step 0.
    fresh = _in_process(pair_file, params, checkpoint_dir=tmp_path / "empty")
    assert fresh.resumed_from_step == 0
