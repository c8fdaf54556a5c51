"""Load test: ingestion and embedding of N demo studies, with throughput and peak memory per stage.

The production-operations question: can this machine ingest and embed N studies without memory
growing beyond a bound (streamed, chunked writes)? Figures: studies/s and peak RSS per stage.

N comes from CXR_BENCH_LOAD_N (default 50,000); the test runs at two sizes in one invocation,
N/10 and N, so the output shows whether peak memory grows with N (a streamed stage keeps the same
peak at both sizes; a stage that holds everything shows a constant "growth per 1,000 studies").
Demo studies are generated with 64 px images (cheap); generation is not timed.

Stages, each timed in a fresh subprocess so its peak RSS is its own:
  1. catalog:   ingest_sources + write_catalog (the raw_studies stage: headers, hashes, reports,
                Parquet + DuckDB);
  2. images:    cache_images(workers=2) of the catalog's images table into an empty PNG cache
                (ingest.image_size, default 224), then the study_images Parquet write;
  3. reports:   parse_reports of the catalog's reports joined with studies, Parquet write;
  4. embed:     the trained text encoder (artifacts/text_encoder) over every parsed report in
                chunks (embed_table into an empty cache, streamed to the embeddings Parquet, as the
                report_embeddings stage does); skipped, and said so, when the encoder is missing.
Per stage: seconds (the stage call only; imports and model load excluded and shown apart),
studies/s (and images/s for the image cache), peak RSS of the stage process (VmHWM), its RSS
before the stage (after imports / model load), the growth above that, both per 1,000 studies,
and for the image cache the peak RSS of the largest pool worker (RUSAGE_CHILDREN).

Other settings: CXR_BENCH_LOAD_STAGES (comma list, default catalog,images,reports,embed),
CXR_BENCH_LOAD_SIZES (comma list of study counts, overrides N/10 and N),
CXR_BENCH_LOAD_KEEP=1 keeps the temporary data, CXR_BENCH_LOAD_DATA=<folder> generates into
<folder>/<N>/raw once and reuses it (and the stage outputs) on later runs, so stages can be
re-measured one at a time; CXR_BENCH_LOAD_THREADS (torch threads, 2).
Writes benchmarks/results/load.json.
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
RESULTS = HERE / "results" / "load.json"
ENCODER_DIR = ROOT / "artifacts" / "text_encoder"
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
def _ingest_options():
    from cxr_assets.config import IngestParams

    return IngestParams(layout="mimic_cxr", drop_dir=None)


def stage_catalog(work: Path):
    from cxr_assets.ingest.catalog import accounting, ingest_sources, write_catalog

    def run() -> dict:
        result = ingest_sources(work / "raw", _ingest_options(), drop_dir=None,
                                previous_catalog=None, progress=False)
        write_catalog(result, work / "catalog")
        books = accounting(result)
        if not books["balanced"]:
            raise RuntimeError(f"catalog accounting does not balance: {books}")
        return {"studies": result.studies.height, "images": result.images.height,
                "quarantined": result.quarantine.height}

    return run


def stage_images(work: Path):
    import polars as pl

    from cxr_assets.ingest.image_cache import cache_images

    options = _ingest_options()

    def run() -> dict:
        images = pl.read_parquet(work / "catalog" / "images.parquet")
        cached, quarantine = cache_images(images, work / "cache", size=options.image_size,
                                          bits=options.cache_bits, workers=WORKERS, progress=False)
        cached.write_parquet(work / "catalog" / "study_images.parquet")
        if cached.height + quarantine.height != images.height:
            raise RuntimeError("image cache accounting does not balance")
        return {"studies": images["study_id"].n_unique(), "images": images.height,
                "quarantined": quarantine.height, "image_size": options.image_size}

    return run


def stage_reports(work: Path):
    import polars as pl

    from cxr_assets.reports.sections import parse_reports

    def run() -> dict:
        catalogued = pl.read_parquet(work / "catalog" / "reports.parquet").join(
            pl.read_parquet(work / "catalog" / "studies.parquet").select("study_id", "patient_id", "source"),
            on="study_id", how="inner")
        reports, quarantine = parse_reports(catalogued, progress=False)
        reports.write_parquet(work / "catalog" / "report_texts.parquet")
        return {"studies": catalogued.height, "parsed": reports.height,
                "quarantined": quarantine.height}

    return run


def stage_embed(work: Path):
    from cxr_assets.embed.text_cache import embed_table
    from cxr_assets.text.encoder import TextEncoder

    threads = int(os.environ.get("CXR_BENCH_LOAD_THREADS", "2"))
    t0 = time.perf_counter()
    encoder = TextEncoder.from_pretrained(ENCODER_DIR, threads=threads)
    load_s = time.perf_counter() - t0

    def run() -> dict:
        # As stages/report_embeddings.py does, into an empty embedding cache (everything encoded).
        cache = work / "embedding_cache"
        shutil.rmtree(cache, ignore_errors=True)
        summary = embed_table(
            encoder, work / "catalog" / "report_texts.parquet", "report_for_training",
            ["study_id", "patient_id"], work / "catalog" / "report_embeddings.parquet", cache,
            instruction=encoder.instruction or None, batch_size=EMBED_BATCH, progress=False)
        return {"studies": summary.n_rows, "encoded": summary.n_computed, "dim": summary.dim,
                "model_load_s": round(load_s, 2), "threads": threads, "batch_size": EMBED_BATCH}

    return run


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
    if "embed" in stages and not (ENCODER_DIR / "encoder_config.json").is_file():
        notes.append(f"embed skipped: no trained text encoder at {ENCODER_DIR} (run the pipeline first)")
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
        "generated": {str(k): v for k, v in generated.items()}, "rows": rows, "growth": growth,
    }, indent=2) + "\n")
    print(f"\nwrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--stage":
        child(sys.argv[2], Path(sys.argv[3]))
    else:
        main()
