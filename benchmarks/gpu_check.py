"""GPU check (`make gpu-check`): the GPU paths run, and what they deliver, in one short command.

On a machine with a CUDA GPU (at most about 8 minutes):
1. the GPU-marked tests (tests/clip/test_clip_gpu.py: bf16 autocast CLIP steps, the online LoRA
   text tower, an all-reduce and DDP training under torchrun on every visible GPU with NCCL,
   checkpoint resume on the GPU);
2. report-encoder throughput on the GPU in fp32 and bf16 (the released encoder; 256 IU reports
   when ../shared/data is there, else three sample reports repeated), with bf16's cosine to fp32;
   and the encode path report_embeddings picks there (`auto`: cuda_bf16, probed against fp32);
3. CLIP step throughput and peak GPU memory at two batch sizes, fp32 and bf16.
Figures go to benchmarks/results/gpu_check.json. Without a CUDA GPU it says so and exits 0.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
IU_CSV = REPO.parent / "shared" / "data" / "iu_xray" / "indiana_reports.csv"
CLIP_BATCHES = (64, 256)


def gpu_tests() -> dict:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu",
         "tests/clip/test_clip_gpu.py"], cwd=REPO, capture_output=True, text=True,
        env=os.environ | {"CXR_GPU_TEST_DEVICE": "cuda", "CI": ""}, timeout=300, check=False)
    tail = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-500:]
    return {"returncode": done.returncode, "summary": tail,
            "seconds": round(time.perf_counter() - start, 1)}


def _reports(n: int = 256) -> list[str]:
    if IU_CSV.is_file():
        import polars as pl

        frame = pl.read_csv(IU_CSV)
        texts = [f"{f or ''} {i or ''}".strip() for f, i in
                 zip(frame["findings"].to_list(), frame["impression"].to_list())]
        return [t for t in texts if t][:n]
    samples = ["Heart size is normal. Lungs are clear. No pleural effusion or pneumothorax.",
               "Moderate cardiomegaly. Small right pleural effusion with basilar atelectasis.",
               "Endotracheal tube terminates 5 cm above the carina. Right PICC in the SVC."]
    return [f"{samples[i % 3]} (report {i})" for i in range(n)]


def encoder_throughput() -> dict:
    import numpy as np
    import torch

    from cxr_assets.config import load_params
    from cxr_assets.text.encoder import TextEncoder

    params = load_params(REPO / "params.yaml")
    source = params.text_encoder.init_from or params.text_encoder.base_model
    encoder = (TextEncoder.from_pretrained(REPO / source) if params.text_encoder.init_from
               else TextEncoder.from_base(source))
    texts = _reports()
    out: dict = {"encoder": str(source), "n_reports": len(texts)}
    reference = None
    for label, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        encoder.model.to(device="cuda", dtype=dtype)
        encoder.encode(texts[:32], batch_size=32, progress=False)  # warm-up (kernels, allocator)
        torch.cuda.synchronize()
        start = time.perf_counter()
        vectors = encoder.encode(texts, batch_size=64, progress=False, postprocess=False)
        torch.cuda.synchronize()
        out[f"{label}_reports_per_s"] = round(len(texts) / (time.perf_counter() - start), 1)
        unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        if reference is None:
            reference = unit
        else:
            cosine = (unit * reference).sum(1)
            out[f"{label}_cosine_to_fp32"] = {"mean": round(float(cosine.mean()), 5),
                                              "min": round(float(cosine.min()), 5)}
    return out


def stage_encode_path() -> dict:
    """What report_embeddings does on this machine: encode_path 'auto' (cuda_bf16 where a GPU is
    visible, probed against fp32 on the CPU), then its steady-state speed on the chosen path."""
    from cxr_assets.config import load_params
    from cxr_assets.text.encode_paths import choose_path
    from cxr_assets.text.encoder import TextEncoder

    params = load_params(REPO / "params.yaml")
    if not params.text_encoder.init_from:
        return {"skipped": "params.yaml has no released encoder (text_encoder.init_from)"}
    encoder = TextEncoder.from_pretrained(REPO / params.text_encoder.init_from)
    texts = _reports()
    choice = choose_path(encoder, texts, "auto", batch_size=64)
    encoder.encode(texts[:64], batch_size=64, progress=False)
    start = time.perf_counter()
    encoder.encode(texts, batch_size=64, progress=False)
    return {**choice.as_metadata(),
            "reports_per_s": round(len(texts) / (time.perf_counter() - start), 1)}


def clip_steps() -> dict:
    import torch

    from cxr_assets.clip.loss import clip_loss
    from cxr_assets.clip.model import ClipModelConfig, DualTowerClip
    from cxr_assets.config import load_params

    clip = load_params(REPO / "params.yaml").clip
    size = 224
    rows = []
    for precision in ("fp32", "bf16"):
        for batch in CLIP_BATCHES:
            model = DualTowerClip(ClipModelConfig(clip.vision_backbone, size, 576, clip.embed_dim,
                                                  clip.init_logit_scale, clip.max_logit_scale))
            model.to("cuda")
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
            images = torch.randn(batch, 1, size, size, device="cuda")
            texts = torch.randn(batch, 576, device="cuda")
            torch.cuda.reset_peak_memory_stats()
            timings = []
            for step in range(8):
                torch.cuda.synchronize()
                start = time.perf_counter()
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
                    image, text, scale = model(images, texts)
                    loss = clip_loss(image.float(), text.float(), scale)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                torch.cuda.synchronize()
                if step >= 3:  # the first steps pay for cuDNN autotuning and allocation
                    timings.append(time.perf_counter() - start)
            step_s = sum(timings) / len(timings)
            rows.append({"precision": precision, "batch_size": batch, "image_size": size,
                         "backbone": clip.vision_backbone, "step_s": round(step_s, 4),
                         "pairs_per_s": round(batch / step_s, 1),
                         "peak_mib": round(torch.cuda.max_memory_allocated() / 2**20)})
            del model, optimizer
            torch.cuda.empty_cache()
    return {"steps": rows}


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("gpu-check: no CUDA GPU on this machine (torch.cuda.is_available() is False); "
              "nothing to check")
        return 0
    sys.path.insert(0, str(REPO))
    result: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "command": "make gpu-check",
        "gpu": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "torch": torch.__version__, "cuda": torch.version.cuda, "host": platform.node(),
    }
    start = time.perf_counter()
    result["tests"] = gpu_tests()
    print(f"gpu tests: {result['tests']['summary']}")
    result["text_encoder"] = encoder_throughput()
    print(f"text encoder: {result['text_encoder']}")
    result["report_embeddings_path"] = stage_encode_path()
    print(f"report_embeddings encode path: {result['report_embeddings_path']}")
    result["clip"] = clip_steps()
    for row in result["clip"]["steps"]:
        print(f"clip {row['precision']} batch {row['batch_size']}: {row['pairs_per_s']} pairs/s, "
              f"peak {row['peak_mib']} MiB")
    result["seconds"] = round(time.perf_counter() - start, 1)
    out = HERE / "results" / "gpu_check.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out} ({result['seconds']} s)")
    return 0 if result["tests"]["returncode"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
