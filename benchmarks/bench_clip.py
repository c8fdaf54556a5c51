"""CLIP training benchmarks, side by side in one run (CPU unless a GPU is present).

1. Throughput (pairs/s): cached report embeddings + adapter vs the same step with the text
   tower run online (a SmolLM2-135M-shaped Llama, random weights, LoRA r=8 on q/k/v/o,
   forward + backward each step, as LLM2CLIP4CXR trains). Target: cached >= 5x online.
2. Peak memory vs effective batch with GradCache (micro-batch 64) from 64 to 4,096 pairs,
   next to plain full-batch steps up to 1,024: each point is a fresh subprocess, peak RSS
   (CPU) or torch.cuda.max_memory_allocated (GPU). Target: flat with GradCache.
3. Step time against open_clip (open-clip-torch==3.3.0, installed into the venv): the same
   timm backbone (resnet10t, random init), same batch, fp32, AdamW, its ClipLoss. Its text
   tower is the smallest open_clip offers (1-layer, width-128 transformer on 16 tokens), ours
   is the cached-embedding adapter: both are negligible next to the image tower. open_clip's
   timm tower takes 3-channel input (grayscale replicated), ours 1 channel.

Run: `.venv/bin/python benchmarks/bench_clip.py` (or via benchmarks/run.py clip).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import provenance  # machine, ISA flags, date, command of each result

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

    from cxr_assets.clip.gradcache import compute_gradients

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

    import statistics

    times: dict[str, list[float]] = {"cached_text": [], "online_lora_text": []}
    cached_step(), online_step()  # warm-up
    # Interleaved and median-of-steps: on a shared machine, load changes hit both alike.
    for _ in range(steps):
        for name, fn in (("cached_text", cached_step), ("online_lora_text", online_step)):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    out = {k: batch / statistics.median(v) for k, v in times.items()}
    return {"device": str(device), "batch": batch, "text_tokens": text_tokens,
            "threads": torch.get_num_threads(), "pairs_per_s": out,
            "ratio": out["cached_text"] / out["online_lora_text"]}


def _memory_point(batch: int, micro: int | None) -> dict:
    """One training step at `batch` in this (fresh) process; peak memory of the step."""
    import torch

    from cxr_assets.clip.gradcache import compute_gradients

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
                                  cwd=ROOT, timeout=1200, check=False)
            if done.returncode != 0:
                raise RuntimeError(done.stderr[-2000:])
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"  batch {batch:5d} micro {micro!s:>4}: {rows[-1]['peak_step_mib']:8.1f} MiB"
                  f"  {rows[-1]['seconds']:6.2f} s", flush=True)
    return rows


def versus_open_clip(batch: int, steps: int) -> dict:
    """Median step time (s) of our trainer step vs open_clip's on the same backbone and batch."""
    import statistics

    import open_clip
    import torch

    from cxr_assets.clip.gradcache import compute_gradients

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    ours = _model().to(device).train()
    ours_opt = torch.optim.AdamW(ours.parameters(), lr=1e-4)
    theirs = open_clip.CLIP(
        embed_dim=256,
        vision_cfg={"timm_model_name": BACKBONE, "timm_model_pretrained": False,
                    "timm_pool": "avg", "timm_proj": "linear", "image_size": IMAGE},
        text_cfg={"context_length": 16, "vocab_size": 49408, "width": 128, "heads": 2,
                  "layers": 1},
    ).to(device).train()
    theirs_opt = torch.optim.AdamW(theirs.parameters(), lr=1e-4)
    loss_fn = open_clip.ClipLoss()
    images = torch.randn(batch, 1, IMAGE, IMAGE, device=device)
    cached = torch.randn(batch, TEXT_DIM, device=device)
    tokens = torch.randint(0, 49408, (batch, 16), device=device)

    def our_step():
        ours_opt.zero_grad(set_to_none=True)
        compute_gradients(ours, images, cached, None)
        torch.nn.utils.clip_grad_norm_(ours.parameters(), 1.0)
        ours_opt.step()

    def their_step():
        theirs_opt.zero_grad(set_to_none=True)
        img, txt, scale = theirs(images.expand(-1, 3, -1, -1), tokens)
        loss_fn(img, txt, scale).backward()
        torch.nn.utils.clip_grad_norm_(theirs.parameters(), 1.0)
        theirs_opt.step()

    times: dict[str, list[float]] = {"cxr_assets": [], "open_clip": []}
    our_step(), their_step()  # warm-up
    for _ in range(steps):  # interleaved, so machine noise hits both alike
        for name, fn in (("cxr_assets", our_step), ("open_clip", their_step)):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    median = {k: statistics.median(v) for k, v in times.items()}
    return {"device": str(device), "batch": batch, "median_step_s": median,
            "ratio_open_clip_over_ours": median["open_clip"] / median["cxr_assets"]}


def main() -> dict:
    quick = os.environ.get("BENCH_QUICK") == "1"
    print("== CLIP throughput: cached text embeddings vs online LoRA text tower ==")
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    tp = throughput(batch=16, steps=3 if quick else 5, text_tokens=64)
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
    print("== Step time vs open_clip (same timm backbone, batch, fp32) ==")
    try:
        vs = versus_open_clip(batch=64, steps=3 if quick else 5)
        for name, value in vs["median_step_s"].items():
            print(f"  {name:12s} {value:8.3f} s/step")
        print(f"  open_clip / ours: {vs['ratio_open_clip_over_ours']:.2f}x (>= 1 = ours not slower)")
    except ImportError:
        vs = {"skipped": "open-clip-torch not installed (pip install open-clip-torch==3.3.0)"}
        print(f"  {vs['skipped']}")
    result = {"throughput": tp, "memory": rows, "gradcache_peak_ratio": flat,
              "plain_peak_ratio": growth, "open_clip": vs,
              "provenance": provenance("python benchmarks/bench_clip.py")}
    out = HERE / "results" / "clip.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
