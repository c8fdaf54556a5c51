"""Load test: ingestion and embedding of N demo studies, with throughput and peak memory per stage.

The production-operations question: can this machine ingest and embed N studies without memory
growing beyond a bound (streamed, chunked writes)? Figures: studies/s and peak RSS per stage.

N comes from CXR_BENCH_LOAD_N (default 50,000); the test runs at two sizes in one invocation,
N/10 and N, so the output shows whether peak memory grows with N (a streamed stage keeps the same
peak at both sizes; a stage that holds everything shows a constant "growth per 1,000 studies").
Demo studies are generated with 64 px images (cheap); generation is not timed.

Stages, each the pipeline stage itself (`stage_module(name).run`, as `cxr stage <name>` runs it,
checks included) in a project rooted in the work folder, timed in a fresh subprocess so its
peak RSS is its own:
  1. catalog:   raw_studies (headers, hashes, reports, PHI policy, Parquet + DuckDB, contracts);
  2. images:    study_images with 2 workers into an empty PNG cache (ingest.image_size, 224);
  3. reports:   report_texts (sections + CheXpert labels), chunked;
  4. embed:     report_embeddings with the trained text encoder (artifacts/text_encoder) into
                an empty embedding cache; skipped, and said so, when the encoder is missing.
                CXR_BENCH_LOAD_ENCODER=tiny uses a tiny random Llama with the real tokenizer
                instead (same stage code, cache and chunked writes; the model's cost removed),
                so the memory shape at 50,000 reports is measurable in minutes, not hours;
                CXR_BENCH_LOAD_ENCODER=<folder> any saved TextEncoder.
Per stage: seconds (the stage call only; imports and model load excluded and shown apart),
studies/s (and images/s for the image cache), peak RSS of the stage process (VmHWM), its RSS
before the stage (after imports / model load), the growth above that, both per 1,000 studies,
and for the image cache the peak RSS of the largest pool worker (RUSAGE_CHILDREN).

Other settings: CXR_BENCH_LOAD_STAGES (comma list, default catalog,images,reports,embed),
CXR_BENCH_LOAD_SIZES (comma list of study counts, overrides N/10 and N),
CXR_BENCH_LOAD_KEEP=1 keeps the temporary data, CXR_BENCH_LOAD_DATA=<folder> generates into
<folder>/<N>/raw once and reuses it (and the stage outputs) on later runs, so stages can be
re-measured one at a time; CXR_BENCH_LOAD_THREADS (torch threads, 2);
CXR_BENCH_LOAD_ENCODE_PATH (text_encoder.encode_path of the embed stage, default auto: the
figures name the path it picked and why).
Writes benchmarks/results/load.json (CXR_BENCH_LOAD_OUT=<name>.json: another file there).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / os.environ.get("CXR_BENCH_LOAD_OUT", "load.json")
TRAINED_ENCODER_DIR = ROOT / "artifacts" / "text_encoder"
STAGES = ("catalog", "images", "reports", "embed")
IMAGE_PX = 64
SEED = 11
WORKERS = 2
EMBED_BATCH = 16


# ------------------------------------------------------------------ memory probes (child side)
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _mib(kib: int) -> float:
    return round(kib / 1024, 1)


# ------------------------------------------------------------------ stages (run in a child)
def _project(work: Path):
    """Params + paths of a project rooted at `work` (raw/, catalog/, cache/, artifacts/): the
    stages run exactly as `cxr stage <name>` runs them, checks and metadata included."""
    from cxr_assets.config import Params
    from cxr_assets.paths import ProjectPaths

    params = Params.model_validate({
        "paths": {"raw_dir": "raw", "catalog_dir": "catalog", "image_cache_dir": "cache",
                  "artifacts_dir": "artifacts", "reports_dir": "reports", "cache_dir": "cxr_cache"},
        "ingest": {"layout": "mimic_cxr", "drop_dir": None, "workers": WORKERS},
        "clip": {"threads": int(os.environ.get("CXR_BENCH_LOAD_THREADS", "2"))},
        "text_encoder": {"embed_batch_size": EMBED_BATCH,
                         "encode_path": os.environ.get("CXR_BENCH_LOAD_ENCODE_PATH", "auto")},
    })
    return params, ProjectPaths.from_params(params, work)


def _stage_runner(name: str, work: Path, fresh: list[Path], figures):
    from cxr_assets.stages import stage_module

    params, paths = _project(work)
    module = stage_module(name)

    def run() -> dict:
        for folder in fresh:  # measured from scratch every time (no reuse of an earlier run)
            shutil.rmtree(folder, ignore_errors=True)
        result = module.run(params, paths, progress=False)
        failed = [c.name for c in result.blocking_failures]
        if failed:
            raise RuntimeError(f"{name}: blocking checks failed: {failed}")
        return figures(result.metadata)

    return run


def stage_catalog(work: Path):
    # raw_studies: headers, hashes, reports, PHI policy, Parquet + DuckDB, GX contracts.
    return _stage_runner("raw_studies", work, [work / "catalog"], lambda m: {
        "studies": m["n_studies"], "images": m["n_images"], "quarantined": m["n_quarantined"]})


def stage_images(work: Path):
    # study_images: decode + resize into an empty PNG cache (ingest.image_size), streamed write.
    import pyarrow.parquet as pq

    n_studies = pq.ParquetFile(work / "catalog" / "studies.parquet").metadata.num_rows
    return _stage_runner("study_images", work, [work / "cache"], lambda m: {
        "studies": n_studies, "images": m["n_images"], "quarantined": m["n_quarantined"],
        "image_size": m["image_size"]})


def stage_reports(work: Path):
    # report_texts: sections + CheXpert labels, chunked.
    return _stage_runner("report_texts", work, [], lambda m: {
        "studies": m["n_reports"], "quarantined": m["n_quarantined"]})


def encoder_dir() -> Path:
    """The embed stage's encoder: CXR_BENCH_LOAD_ENCODER unset/"trained" = the pipeline's
    artifacts/text_encoder, else a folder (main() turns "tiny" into one it builds)."""
    choice = os.environ.get("CXR_BENCH_LOAD_ENCODER", "trained")
    return TRAINED_ENCODER_DIR if choice == "trained" else Path(choice)


def build_tiny_encoder(base: Path) -> Path:
    """A saved TextEncoder over a tiny random bidirectional Llama (built once under `base`)."""
    from cxr_assets.text.encoder import TextEncoder
    from cxr_assets.text.tiny import make_tiny_causal_lm

    folder = base / "tiny_text_encoder"
    if not (folder / "encoder_config.json").is_file():
        model = make_tiny_causal_lm(base / "tiny_llm", hidden_size=64, layers=2)
        TextEncoder.from_base(model, pooling="mean", max_length=512).save_pretrained(folder)
    return folder


def stage_embed(work: Path):
    # report_embeddings: the chosen text encoder, into an empty embedding cache, streamed write.
    encoder_link = work / "artifacts" / "text_encoder"
    encoder_link.parent.mkdir(parents=True, exist_ok=True)
    if encoder_link.is_symlink() and encoder_link.resolve() != encoder_dir().resolve():
        encoder_link.unlink()  # a reused work folder measured with another encoder before
    if not encoder_link.exists():
        encoder_link.symlink_to(encoder_dir(), target_is_directory=True)
    return _stage_runner("report_embeddings", work, [work / "cxr_cache" / "embeddings"], lambda m: {
        "studies": m["n_reports"], "encoded": m["n_encoded_now"], "dim": m["dim"],
        "encode_path": m["encode_path"], "encode_path_reason": m["encode_path_reason"],
        "threads": int(os.environ.get("CXR_BENCH_LOAD_THREADS", "2")), "batch_size": EMBED_BATCH})


def child(stage: str, work: Path) -> None:
    """Run one stage in this (fresh) process and print one JSON line of figures."""
    import resource

    os.environ.setdefault("POLARS_MAX_THREADS", "2")
    sys.path.insert(0, str(ROOT))
    t_import = time.perf_counter()
    run = {"catalog": stage_catalog, "images": stage_images, "reports": stage_reports,
           "embed": stage_embed}[stage](work)
    setup_s = time.perf_counter() - t_import
    baseline_kib = _status_kib("VmRSS")
    hwm_before = _status_kib("VmHWM")
    cpu0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    info = run()
    seconds = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = sum(b.ru_utime + b.ru_stime - a.ru_utime - a.ru_stime for a, b in zip(cpu0, cpu1))
    print(json.dumps({
        "stage": stage,
        "seconds": round(seconds, 3),
        "setup_s": round(setup_s, 2),
        "cpu_per_wall": round(cpu / seconds, 2),
        "baseline_rss_mib": _mib(baseline_kib),
        "hwm_before_stage_mib": _mib(hwm_before),
        "peak_rss_mib": _mib(_status_kib("VmHWM")),
        # Pool workers (image cache) are separate processes: their largest peak, once reaped.
        "worker_peak_rss_mib": _mib(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss),
        **info,
    }), flush=True)


# ------------------------------------------------------------------ driver (parent side)
def generate(n: int, raw: Path) -> dict:
    from cxr_assets.demo.generate import generate_demo_dataset

    t0 = time.perf_counter()
    summary = generate_demo_dataset(raw, n_studies=n, seed=SEED, image_size=IMAGE_PX, progress=False)
    return {"n_studies": summary.n_studies, "n_images": summary.n_images,
            "seconds_not_timed": round(time.perf_counter() - t0, 1)}


def run_stage(stage: str, work: Path, n: int) -> dict:
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--stage", stage, str(work)],
                          check=False, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"stage {stage} (N={n}) failed:\n{proc.stderr[-3000:]}")
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    studies = figures["studies"]
    figures["studies_per_s"] = round(studies / figures["seconds"], 1)
    if "images" in figures and stage == "images":
        figures["images_per_s"] = round(figures["images"] / figures["seconds"], 1)
    growth = figures["peak_rss_mib"] - figures["baseline_rss_mib"]
    figures["growth_mib"] = round(growth, 1)
    figures["peak_rss_mib_per_1k_studies"] = round(1000 * figures["peak_rss_mib"] / studies, 2)
    figures["growth_mib_per_1k_studies"] = round(1000 * growth / studies, 2)
    return figures


def sizes_to_run() -> list[int]:
    if os.environ.get("CXR_BENCH_LOAD_SIZES"):
        return [int(s) for s in os.environ["CXR_BENCH_LOAD_SIZES"].split(",") if s.strip()]
    n = int(os.environ.get("CXR_BENCH_LOAD_N", "50000"))
    return [max(1, n // 10), n]


def print_table(rows: list[dict]) -> None:
    heads = ("N", "stage", "seconds", "studies/s", "images/s", "base MiB", "peak MiB",
             "growth MiB", "peak/1k", "growth/1k", "worker MiB")
    print("".join(f"{h:>11}" for h in heads))
    for r in rows:
        cells = (r["n"], r["stage"], f"{r['seconds']:.1f}", f"{r['studies_per_s']:.1f}",
                 f"{r['images_per_s']:.1f}" if "images_per_s" in r else "-",
                 f"{r['baseline_rss_mib']:.0f}", f"{r['peak_rss_mib']:.0f}", f"{r['growth_mib']:.0f}",
                 f"{r['peak_rss_mib_per_1k_studies']:.1f}", f"{r['growth_mib_per_1k_studies']:.2f}",
                 f"{r['worker_peak_rss_mib']:.0f}" if r["stage"] == "images" else "-")
        print("".join(f"{c:>11}" for c in cells))


def compare(rows: list[dict], sizes: list[int]) -> dict:
    """Per stage, between the smallest and largest size: peak ratio vs N ratio."""
    out = {}
    if len(sizes) < 2:
        return out
    lo, hi = min(sizes), max(sizes)
    for stage in STAGES:
        a = next((r for r in rows if r["stage"] == stage and r["n"] == lo), None)
        b = next((r for r in rows if r["stage"] == stage and r["n"] == hi), None)
        if not (a and b):
            continue
        extra = b["growth_mib"] - a["growth_mib"]
        out[stage] = {
            "n_ratio": round(hi / lo, 2),
            "peak_ratio": round(b["peak_rss_mib"] / a["peak_rss_mib"], 2),
            "growth_ratio": round(b["growth_mib"] / a["growth_mib"], 2) if a["growth_mib"] > 0 else None,
            "extra_mib_per_1k_extra_studies": round(1000 * extra / (b["studies"] - a["studies"]), 2),
            "seconds_per_1k_studies": round(1000 * b["seconds"] / b["studies"], 2),
        }
    return out


def main() -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("POLARS_MAX_THREADS", "2")
    stages = [s.strip() for s in os.environ.get("CXR_BENCH_LOAD_STAGES", ",".join(STAGES)).split(",") if s.strip()]
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise SystemExit(f"unknown stage(s) {sorted(unknown)}; known: {', '.join(STAGES)}")
    notes = []
    if "embed" in stages and os.environ.get("CXR_BENCH_LOAD_ENCODER") == "tiny":
        base = Path(os.environ.get("CXR_BENCH_LOAD_DATA") or tempfile.mkdtemp(prefix="cxr_bench_tiny_"))
        os.environ["CXR_BENCH_LOAD_ENCODER"] = str(build_tiny_encoder(base))  # children read it
        notes.append("embed uses a tiny random Llama (2 layers, hidden 64, real SmolLM2 tokenizer): "
                     "the stage's memory shape and I/O without the production model's compute")
    if "embed" in stages and not (encoder_dir() / "encoder_config.json").is_file():
        notes.append(f"embed skipped: no text encoder at {encoder_dir()} (run the pipeline first)")
        stages.remove("embed")
    sizes = sizes_to_run()
    keep = os.environ.get("CXR_BENCH_LOAD_KEEP") == "1"
    print(f"load test: sizes {sizes}, stages {stages}, demo images {IMAGE_PX}px, "
          f"{os.cpu_count()} CPUs; each stage in a fresh subprocess", flush=True)
    for note in notes:
        print(note, flush=True)
    rows: list[dict] = []
    generated = {}
    for n in sizes:
        data_root = os.environ.get("CXR_BENCH_LOAD_DATA")
        work = Path(data_root) / str(n) if data_root else Path(tempfile.mkdtemp(prefix=f"cxr_bench_load_{n}_"))
        try:
            if data_root and (work / "raw").is_dir():
                generated[n] = {"n_studies": n, "n_images": None, "seconds_not_timed": 0.0,
                                "reused": str(work / "raw")}
            else:
                generated[n] = generate(n, work / "raw")
            if "reused" in generated[n]:
                print(f"N={n}: reusing the demo data in {generated[n]['reused']}", flush=True)
            else:
                print(f"N={n}: generated {generated[n]['n_images']} images in "
                      f"{generated[n]['seconds_not_timed']} s (not timed)", flush=True)
            for stage in stages:
                figures = run_stage(stage, work, n) | {"n": n}
                rows.append(figures)
                print(f"  {stage:<8} {figures['seconds']:8.1f} s  {figures['studies_per_s']:8.1f} studies/s  "
                      f"peak {figures['peak_rss_mib']:.0f} MiB (base {figures['baseline_rss_mib']:.0f})",
                      flush=True)
        finally:
            if keep or data_root:
                print(f"  kept {work}")
            else:
                shutil.rmtree(work, ignore_errors=True)
    print()
    print_table(rows)
    growth = compare(rows, sizes)
    if growth:
        print(f"\nmemory vs N ({min(sizes)} -> {max(sizes)} studies): a bounded (streamed) stage has "
              "peak ratio ~1 and extra MiB per 1k extra studies ~0")
        for stage, g in growth.items():
            print(f"  {stage:<8} peak x{g['peak_ratio']} for N x{g['n_ratio']}; "
                  f"{g['extra_mib_per_1k_extra_studies']} MiB per 1k extra studies; "
                  f"{g['seconds_per_1k_studies']} s per 1k studies")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "sizes": sizes, "stages": stages, "image_px": IMAGE_PX, "workers": WORKERS,
        "embed_batch_size": EMBED_BATCH, "cpus": os.cpu_count(), "notes": notes,
        "embed_encoder": str(encoder_dir()) if "embed" in stages else None,
        "generated": {str(k): v for k, v in generated.items()}, "rows": rows, "growth": growth,
    }, indent=2) + "\n")
    print(f"\nwrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--stage":
        child(sys.argv[2], Path(sys.argv[3]))
    else:
        main()
