"""CLIP training benchmarks, side by side in one run (CPU unless a GPU is present).

1. Throughput (pairs/s): cached report embeddings + adapter vs the same step with the text
   tower run online (a SmolLM2-135M-shaped Llama, random weights, LoRA r=8 on q/k/v/o,
   forward + backward each step, as LLM2CLIP4CXR trains). Target: cached >= 5x online.
2. Peak memory vs effective batch with GradCache (micro-batch 64) from 64 to 4,096 pairs,
   next to plain full-batch steps up to 1,024: each point is a fresh subprocess, peak RSS
   (CPU) or torch.cuda.max_memory_allocated (GPU). Target: flat with GradCache.
open_clip step-time comparison: not run here (see the closing note of issue #6).

Run: `.venv/bin/python benchmarks/bench_clip.py` (or via benchmarks/run.py clip).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TEXT_DIM, IMAGE, BACKBONE, MICRO = 576, 64, "resnet10t", 64


def _model(loss: str = "infonce"):
    from cxr_assets.clip.model import ClipModelConfig, DualTowerClip

    return DualTowerClip(ClipModelConfig(BACKBONE, IMAGE, TEXT_DIM, 256, 2.66, 4.6, loss=loss))


def _online_text_tower(device):
    """A SmolLM2-135M-shaped bidirectional-size Llama with LoRA on attention (random weights)."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaModel

    config = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                         max_position_embeddings=2048)
    model = LlamaModel(config)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    return get_peft_model(model, lora).to(device)


def throughput(batch: int, steps: int, text_tokens: int) -> dict:
    import torch

    from cxr_assets.clip.train import compute_gradients

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = _model().to(device).train()
    images = torch.randn(batch, 1, IMAGE, IMAGE, device=device)
    cached = torch.randn(batch, TEXT_DIM, device=device)
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4)

    def cached_step():
        opt.zero_grad(set_to_none=True)
        compute_gradients(model, images, cached, None)
        opt.step()

    tower = _online_text_tower(device).train()
    tokens = torch.randint(0, 49152, (batch, text_tokens), device=device)
    opt_online = torch.optim.AdamW(params + [p for p in tower.parameters() if p.requires_grad],
                                   lr=1e-4)

    def online_step():
        from cxr_assets.clip.loss import contrastive_loss

        opt_online.zero_grad(set_to_none=True)
        hidden = tower(input_ids=tokens).last_hidden_state.mean(dim=1)  # mean pooling
        img = model.loss_image(images)
        txt = model.loss_text(hidden)
        loss = contrastive_loss(img, txt, img, txt, 0, model.logit_scale)
        loss.backward()
        opt_online.step()

    out = {}
    for name, fn in (("cached_text", cached_step), ("online_lora_text", online_step)):
        fn()  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        out[name] = batch * steps / (time.perf_counter() - start)
    return {"device": str(device), "batch": batch, "text_tokens": text_tokens,
            "pairs_per_s": out, "ratio": out["cached_text"] / out["online_lora_text"]}


def _memory_point(batch: int, micro: int | None) -> dict:
    """One training step at `batch` in this (fresh) process; peak memory of the step."""
    import torch

    from cxr_assets.clip.train import compute_gradients

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = _model().to(device).train()
    images = torch.randn(batch, 1, IMAGE, IMAGE, device=device)
    texts = torch.randn(batch, TEXT_DIM, device=device)
    # Inputs are excluded: they are the data, not the activation memory GradCache bounds.
    # CPU: a sampler thread records the process RSS every millisecond during the step; the
    # figure is its peak above the RSS just before the step. GPU: the allocator's own peak.
    import threading

    import psutil

    proc = psutil.Process()
    base = proc.memory_info().rss
    peak_rss = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak_rss[0] = max(peak_rss[0], proc.memory_info().rss)
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base_gpu = torch.cuda.memory_allocated()
    else:
        sampler.start()
    start = time.perf_counter()
    compute_gradients(model, images, texts, micro)
    seconds = time.perf_counter() - start
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base_gpu) / 2**20
    else:
        stop.set()
        sampler.join()
        peak = (peak_rss[0] - base) / 2**20
    return {"batch": batch, "micro_batch": micro, "peak_step_mib": round(peak, 1),
            "seconds": round(seconds, 2), "device": str(device)}


def memory_curve(batches: list[int], plain_max: int) -> list[dict]:
    rows = []
    for batch in batches:
        for micro in (MICRO, None):
            if micro is None and batch > plain_max:
                continue
            code = (f"import json,sys; sys.path.insert(0, {str(ROOT)!r}); "
                    f"sys.path.insert(0, {str(HERE)!r}); import bench_clip as b; "
                    f"print(json.dumps(b._memory_point({batch}, {micro!r})))")
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                  cwd=ROOT, timeout=1200)
            if done.returncode != 0:
                raise RuntimeError(done.stderr[-2000:])
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"  batch {batch:5d} micro {str(micro):>4}: {rows[-1]['peak_step_mib']:8.1f} MiB"
                  f"  {rows[-1]['seconds']:6.2f} s", flush=True)
    return rows


def main() -> dict:
    quick = os.environ.get("BENCH_QUICK") == "1"
    print("== CLIP throughput: cached text embeddings vs online LoRA text tower ==")
    tp = throughput(batch=8, steps=2 if quick else 3, text_tokens=64)
    for name, value in tp["pairs_per_s"].items():
        print(f"  {name:18s} {value:9.2f} pairs/s")
    print(f"  ratio cached/online: {tp['ratio']:.1f}x (target >= 5x) on {tp['device']}")

    print("== Peak step memory vs effective batch (GradCache micro-batch "
          f"{MICRO} vs plain) ==")
    batches = [64, 256, 1024] if quick else [64, 256, 1024, 4096]
    rows = memory_curve(batches, plain_max=1024)
    cached = [r for r in rows if r["micro_batch"] == MICRO]
    flat = max(r["peak_step_mib"] for r in cached) / max(1.0, min(r["peak_step_mib"] for r in cached))
    plain = [r for r in rows if r["micro_batch"] is None]
    growth = plain[-1]["peak_step_mib"] / max(1.0, plain[0]["peak_step_mib"]) if plain else None
    print(f"  GradCache peak max/min over {batches[0]}..{batches[-1]}: {flat:.2f}x; "
          f"plain {plain[0]['batch']}..{plain[-1]['batch']}: {growth:.2f}x")
    result = {"throughput": tp, "memory": rows, "gradcache_peak_ratio": flat,
              "plain_peak_ratio": growth}
    out = HERE / "results" / "clip.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
