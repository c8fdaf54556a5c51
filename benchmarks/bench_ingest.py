"""Ingest benchmark: DICOM decode -> PNG cache throughput, and the header-only catalog scan.

The four real DICOMs in ../shared/data/dicom (RG1 1955x1841 15-bit MONOCHROME1, once uncompressed
and once JPEG 2000 lossless; two SIIM 1024x1024 8-bit JPEG baseline, one MONOCHROME1) are
replicated round-robin to N files (default 2,000; CXR_BENCH_INGEST_N to change) in a temporary
folder. Every copy gets new SOP/Study Instance UIDs (pixel data kept byte for byte), so every
file hashes differently and the content-keyed cache cannot skip a decode. (cache_images then
quarantines later copies as duplicate pixels, after decoding and writing them; expected here.)
Creating the files is not timed.

Candidates, side by side in one process, on the same files (page cache warm for all of them):
  1. naive: one process, pydicom.dcmread + ds.pixel_array + PIL Lanczos resize to 224x224
     (the baseline);
  2. full: cxr_assets.ingest.image_cache.cache_images(workers=2) into an empty cache
     (decode + Modality/VOI LUT + resize + pad + PNG write), spawn pool start-up included;
  3. cached: the same images again: every key is cached, no PNG may be written (nothing decoded);
  4. header scan: read_header + file_sha256 for every file, one process (what the catalog does).
Targets: full >= 2x naive on 2 cores; header scan >= 10x full.

Naive and full alternate over CXR_BENCH_INGEST_BLOCKS blocks of files (default 4; each full block
is one cache_images call and pays its ~1 s pool start) so load from other processes on a shared
machine hits both alike. Every candidate also reports CPU seconds (own + pool workers) per image
and CPU per wall second: naive near 1 and full near 2 mean the machine was quiet; otherwise the
wall-clock ratio is polluted and "CPU per image, naive / full" x 2 is the clean-machine ceiling.
If naive + full on all N files are estimated (from a per-source calibration) to exceed
CXR_BENCH_INGEST_BUDGET_S (default 600 s), they run on the first CXR_BENCH_INGEST_SUBSET files
(default 300, same mix) and the output says so; CXR_BENCH_INGEST_DECODE_N forces that subset.
The header scan always covers all N files. A per-source profile of the full path's stages
(serial, in this process) shows where the time goes.
Writes benchmarks/results/ingest.json.
"""

from __future__ import annotations

import inspect
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DICOM_DIR = HERE.parent.parent / "shared" / "data" / "dicom"
SOURCES = {  # label -> path; round-robin order of the replicated corpus
    "rg1_uncompressed": DICOM_DIR / "pydicom_data_wg04" / "RG1_UNCR.dcm",
    "rg1_j2k_lossless": DICOM_DIR / "pydicom_data_wg04" / "RG1_J2KR.dcm",
    "siim_jpeg": DICOM_DIR / "siim_acr" / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm",
    "siim_jpeg_mono1": DICOM_DIR / "siim_acr" / "Fake_MONOHR1.dcm",
}
SIZE = 224
BITS = 8
WORKERS = 2
TARGET_FULL_VS_NAIVE = 2.0
TARGET_SCAN_VS_FULL = 10.0
RESULTS = HERE / "results" / "ingest.json"


class Clock:
    """Wall time, CPU time of this process and its reaped children, and the load average, so a
    busy shared machine shows in the figures: cpu_per_wall near 1 (serial) or WORKERS (pool)."""

    def __enter__(self):
        self.load_before = os.getloadavg()[0]
        self.cpu0 = self._cpu()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        self.cpu = self._cpu() - self.cpu0
        self.load_after = os.getloadavg()[0]

    @staticmethod
    def _cpu() -> float:
        import resource

        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    def fields(self, n: int) -> dict:
        return {
            "n": n,
            "seconds": round(self.seconds, 3),
            "images_per_s": round(n / self.seconds, 2),
            "cpu_seconds": round(self.cpu, 2),
            "cpu_per_wall": round(self.cpu / self.seconds, 2),
            "cpu_ms_per_image": round(1000 * self.cpu / n, 1),
            "loadavg_1min_before_after": [round(self.load_before, 2), round(self.load_after, 2)],
        }


def make_corpus(n: int, folder: Path) -> list[tuple[str, Path]]:
    """Write n copies (round-robin over SOURCES) with fresh UIDs; return (source label, path)."""
    import pydicom
    from pydicom.uid import generate_uid

    datasets = {label: pydicom.dcmread(path) for label, path in SOURCES.items()}
    labels = list(SOURCES)
    corpus = []
    for i in range(n):
        label = labels[i % len(labels)]
        ds = datasets[label]
        sop = generate_uid(entropy_srcs=["cxr-bench-ingest", "sop", str(i)])
        ds.SOPInstanceUID = sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.StudyInstanceUID = generate_uid(entropy_srcs=["cxr-bench-ingest", "study", str(i)])
        path = folder / f"d{i // 100:03d}" / f"{i:05d}_{label}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path)
        corpus.append((label, path))
    return corpus


def naive_one(path: Path):
    import pydicom
    from PIL import Image

    ds = pydicom.dcmread(path)
    return Image.fromarray(ds.pixel_array).resize((SIZE, SIZE), Image.Resampling.LANCZOS)


def run_naive(corpus: list[tuple[str, Path]]) -> dict:
    per_source: dict[str, list[float]] = {}
    with Clock() as clock:
        for label, path in corpus:
            t0 = time.perf_counter()
            naive_one(path)
            per_source.setdefault(label, []).append(time.perf_counter() - t0)
    return clock.fields(len(corpus)) | {
        "ms_per_image_by_source": {k: round(1000 * statistics.mean(v), 1) for k, v in per_source.items()},
        "count_by_source": {k: len(v) for k, v in per_source.items()},
    }


def combine(parts: list[dict]) -> dict:
    """Totals over the blocks of one candidate (rates from summed files, seconds and CPU)."""
    n = sum(p["n"] for p in parts)
    seconds = sum(p["seconds"] for p in parts)
    cpu = sum(p["cpu_seconds"] for p in parts)
    out = {
        "n": n,
        "seconds": round(seconds, 3),
        "images_per_s": round(n / seconds, 2),
        "cpu_seconds": round(cpu, 2),
        "cpu_per_wall": round(cpu / seconds, 2),
        "cpu_ms_per_image": round(1000 * cpu / n, 1),
        "loadavg_1min_before_after": [parts[0]["loadavg_1min_before_after"][0],
                                      parts[-1]["loadavg_1min_before_after"][1]],
        "blocks": [{k: p[k] for k in ("n", "seconds", "images_per_s", "cpu_per_wall")} for p in parts],
    }
    if "count_by_source" in parts[0]:
        counts: dict[str, int] = {}
        total_ms: dict[str, float] = {}
        for p in parts:
            for label, count in p["count_by_source"].items():
                counts[label] = counts.get(label, 0) + count
                total_ms[label] = total_ms.get(label, 0.0) + count * p["ms_per_image_by_source"][label]
        out["ms_per_image_by_source"] = {k: round(total_ms[k] / counts[k], 1) for k in counts}
    for key in ("was_cached", "written", "quarantined_as_duplicate_pixels"):
        if key in parts[0]:
            out[key] = sum(p[key] for p in parts)
    return out


def images_frame(corpus: list[tuple[str, Path]], shas: dict[Path, str], uids: dict[Path, str]):
    """The catalog's images table for these files. Both path column names are given (the column
    is being renamed dicom_path -> image_path) so cache_images finds whichever it requires."""
    import polars as pl

    paths = [path for _, path in corpus]
    return pl.DataFrame({
        "image_id": [uids[p] for p in paths],
        "study_id": [f"s{i:08d}" for i in range(len(paths))],
        "patient_id": [f"p{i:08d}" for i in range(len(paths))],
        "dicom_path": [str(p) for p in paths],
        "image_path": [str(p) for p in paths],
        "file_sha256": [shas[p] for p in paths],
    })


def run_cache(images, cache_dir: Path, expect_cached: bool) -> dict:
    import polars as pl

    from cxr_assets.ingest import image_cache

    expected = [image_cache.cache_path_for(cache_dir, image_cache.cache_key(sha, SIZE, BITS))
                for sha in images["file_sha256"].to_list()]
    before = {p: p.stat().st_mtime_ns for p in expected if p.is_file()}
    with Clock() as clock:
        table, quarantine = image_cache.cache_images(images, cache_dir, size=SIZE, bits=BITS,
                                                     workers=WORKERS, progress=False)
    # Every copy keeps its source's pixel data, so cache_images quarantines later copies as
    # "duplicate image: identical pixels" (it finds out after decoding and writing them: the work
    # is done all the same). Any other reason is a failure.
    other = quarantine.filter(~pl.col("reason").str.starts_with("duplicate image"))
    if other.height:
        raise RuntimeError(f"{other.height} images quarantined: {other.head(3)}")
    after = {p: p.stat().st_mtime_ns for p in expected if p.is_file()}
    if len(after) != len(expected):
        raise RuntimeError(f"{len(expected) - len(after)} cached PNGs missing after cache_images")
    written = sum(before.get(p) != mtime for p, mtime in after.items())
    if expect_cached and (written or not table["was_cached"].all()):
        raise RuntimeError(f"the all-cached run wrote {written} PNGs again")
    if not expect_cached and before:
        raise RuntimeError(f"{len(before)} of these images were already cached")
    return clock.fields(images.height) | {
        "was_cached": len(before),
        "written": written,
        "quarantined_as_duplicate_pixels": quarantine.height,
    }


def run_header_scan(corpus: list[tuple[str, Path]]) -> tuple[dict, dict, dict]:
    from cxr_assets.hashing import file_sha256
    from cxr_assets.ingest.dicom import read_header

    shas, uids = {}, {}
    header_s = 0.0
    with Clock() as clock:
        for _, path in corpus:
            t0 = time.perf_counter()
            header = read_header(path)
            header_s += time.perf_counter() - t0
            shas[path] = file_sha256(path)
            uids[path] = header.sop_instance_uid
    if len(set(shas.values())) != len(corpus):
        raise RuntimeError("replicated files are not all distinct")
    mib = sum(path.stat().st_size for _, path in corpus) / 2**20
    return clock.fields(len(corpus)) | {
        "share_of_time_in_read_header": round(header_s / clock.seconds, 3),
        "mib_hashed": round(mib, 1),
    }, shas, uids


def profile_stages(reps: int = 3) -> dict:
    """Median ms per stage of the full path, serial in this process, per source file."""
    import pydicom
    from PIL import Image

    from cxr_assets.ingest.dicom import decode_pixels
    from cxr_assets.ingest.image_cache import resize_and_pad, write_png_atomic

    def median_ms(fn) -> tuple[float, object]:
        out = fn()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
        return round(1000 * statistics.median(times), 1), out

    # The cache decodes with the output size when decode_pixels takes it (cheaper JPEG 2000).
    decode_kwargs = ({"target_size": SIZE}
                     if "target_size" in inspect.signature(decode_pixels).parameters else {})
    table = {}
    with tempfile.TemporaryDirectory(prefix="cxr_bench_png_") as tmp:
        png = Path(tmp) / "x.png"
        for label, path in SOURCES.items():
            read_ms, raw = median_ms(lambda p=path: pydicom.dcmread(p).pixel_array)
            naive_resize_ms, _ = median_ms(
                lambda a=raw: Image.fromarray(a).resize((SIZE, SIZE), Image.Resampling.LANCZOS))
            decode_ms, image = median_ms(lambda p=path: decode_pixels(p, **decode_kwargs))
            resize_ms, small = median_ms(lambda a=image: resize_and_pad(a, SIZE))
            png_ms, _ = median_ms(lambda a=small: write_png_atomic(a, png, BITS))
            table[label] = {
                "dcmread_pixel_array": read_ms,
                "naive_resize": naive_resize_ms,
                "decode_pixels": decode_ms,
                "resize_and_pad": resize_ms,
                "write_png": png_ms,
                "full_path_serial": round(decode_ms + resize_ms + png_ms, 1),
                "naive_serial": round(read_ms + naive_resize_ms, 1),
            }
    return table


def main() -> None:
    os.environ.setdefault("POLARS_MAX_THREADS", "2")
    missing = [str(p) for p in SOURCES.values() if not p.is_file()]
    if missing:
        print(f"skipped: source DICOM(s) not found: {', '.join(missing)}")
        return
    n = int(os.environ.get("CXR_BENCH_INGEST_N", "2000"))
    budget_s = float(os.environ.get("CXR_BENCH_INGEST_BUDGET_S", "600"))
    subset = int(os.environ.get("CXR_BENCH_INGEST_SUBSET", "300"))
    forced = os.environ.get("CXR_BENCH_INGEST_DECODE_N")
    n_blocks = max(1, int(os.environ.get("CXR_BENCH_INGEST_BLOCKS", "4")))

    profile = profile_stages()
    print(f"per-image stages, median ms, serial in one process ({SIZE}px, {BITS}-bit PNG); "
          "naive = read+px + naive_rsz, full = decode (decode_pixels: read, decode, LUT) + rsz+pad + png:")
    cols = ["dcmread_pixel_array", "naive_resize", "decode_pixels", "resize_and_pad",
            "write_png", "naive_serial", "full_path_serial"]
    heads = ["read+px", "naive_rsz", "decode", "rsz+pad", "png", "naive", "full"]
    print(f"{'source':<18}" + "".join(f"{h:>10}" for h in heads))
    for label, row in profile.items():
        print(f"{label:<18}" + "".join(f"{row[c]:>10.1f}" for c in cols))
    cycle_naive = sum(r["naive_serial"] for r in profile.values()) / 1000 / len(profile)
    cycle_full = sum(r["full_path_serial"] for r in profile.values()) / 1000 / len(profile)
    # naive serial + full on WORKERS cores (+10% pool overhead), seconds for all n files
    estimate = n * (cycle_naive + 1.1 * cycle_full / WORKERS)
    if forced:
        decode_n = min(n, int(forced))
        why = f"CXR_BENCH_INGEST_DECODE_N={forced}"
    elif estimate > budget_s:
        decode_n = min(n, subset)
        why = (f"naive + full on all {n:,} files estimated at {estimate:.0f} s > budget "
               f"{budget_s:.0f} s (CXR_BENCH_INGEST_BUDGET_S)")
    else:
        decode_n = n
        why = f"naive + full on all files estimated at {estimate:.0f} s <= budget {budget_s:.0f} s"

    result: dict = {
        "n_files": n,
        "n_files_decoded": decode_n,
        "decode_subset_reason": why,
        "size": SIZE,
        "bits": BITS,
        "workers": WORKERS,
        "blocks": n_blocks,
        "cpu_count": os.cpu_count(),
        "targets": {"full_vs_naive": TARGET_FULL_VS_NAIVE, "header_scan_vs_full": TARGET_SCAN_VS_FULL},
        "stage_profile_ms": profile,
    }
    with tempfile.TemporaryDirectory(prefix="cxr_bench_ingest_") as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        corpus = make_corpus(n, tmp / "dicom")
        print(f"\nwrote {n:,} distinct DICOM copies in {time.perf_counter() - start:.1f} s (not timed)")
        if decode_n < n:
            print(f"NOTE: naive and full path run on a SUBSET of {decode_n:,} files (same mix): {why}")
        else:
            print(f"naive and full path run on all {n:,} files ({why})")
        decoded = corpus[:decode_n]

        scan, shas, uids = run_header_scan(corpus)
        # Naive and full alternate over blocks of files (whole rounds of the 4-source mix), so
        # load from other processes on a shared machine hits both alike; each full block is one
        # cache_images call and pays its own pool start (~1-2 s), which counts against it.
        step = -(-decode_n // (4 * n_blocks)) * 4
        blocks = [decoded[i : i + step] for i in range(0, decode_n, step)]
        naive_parts, full_parts = [], []
        print(f"{len(blocks)} alternating block(s) of <= {step} files:")
        for b, block in enumerate(blocks, 1):
            naive_parts.append(run_naive(block))
            full_parts.append(run_cache(images_frame(block, shas, uids), tmp / "cache",
                                        expect_cached=False))
            a, f = naive_parts[-1], full_parts[-1]
            print(f"  block {b}: {len(block)} files  naive {a['images_per_s']:.1f} img/s "
                  f"(cpu/wall {a['cpu_per_wall']:.2f})  full {f['images_per_s']:.1f} img/s "
                  f"(cpu/wall {f['cpu_per_wall']:.2f})  ratio {f['images_per_s'] / a['images_per_s']:.2f}x",
                  flush=True)
        naive, full = combine(naive_parts), combine(full_parts)
        cached = run_cache(images_frame(decoded, shas, uids), tmp / "cache", expect_cached=True)
        # What one cache_images call pays to start its spawn pool: two small JPEG images.
        small = [c for c in corpus if c[0] == "siim_jpeg"][:2]
        pool_start = run_cache(images_frame(small, shas, uids), tmp / "pool_start", False)["seconds"]
        full["pool_start_seconds_per_call"] = pool_start

    ratios = {
        "full_vs_naive": round(full["images_per_s"] / naive["images_per_s"], 2),
        "header_scan_vs_full": round(scan["images_per_s"] / full["images_per_s"], 2),
        "cached_vs_full": round(cached["images_per_s"] / full["images_per_s"], 1),
        # per-image CPU work of naive / full: WORKERS x this is the full/naive ceiling on an
        # otherwise idle machine with perfect scaling (JPEG 2000 decoding is shared by both)
        "naive_cpu_over_full_cpu_per_image": round(
            naive["cpu_ms_per_image"] / full["cpu_ms_per_image"], 2),
    }
    result |= {"naive": naive, "full": full, "cached": cached, "header_scan": scan, "ratios": ratios}

    print(f"\n{'candidate':<48}{'files':>6}{'seconds':>9}{'images/s':>10}{'cpu/wall':>10}"
          f"{'cpu ms/img':>11}{'load 1m':>12}")
    rows = [
        ("1. naive (1 proc: dcmread+pixel_array+resize)", naive),
        (f"2. full path cache_images, workers={WORKERS}, empty", full),
        ("3. full path again, all cached", cached),
        ("4. header scan (read_header + sha256)", scan),
    ]
    for name, r in rows:
        load = "{:.1f}->{:.1f}".format(*r["loadavg_1min_before_after"])
        print(f"{name:<48}{r['n']:>6}{r['seconds']:>9.2f}{r['images_per_s']:>10.1f}"
              f"{r['cpu_per_wall']:>10.2f}{r['cpu_ms_per_image']:>11.1f}{load:>12}")
    print(f"naive ms/image by source: {naive['ms_per_image_by_source']}")
    print(f"one cache_images call starts its pool in ~{full['pool_start_seconds_per_call']:.1f} s; the "
          f"{len(full['blocks'])} full-path blocks paid it {len(full['blocks'])} times (a single call: once)")
    print(f"header scan: {scan['mib_hashed']:,.0f} MiB hashed, "
          f"{scan['share_of_time_in_read_header']:.0%} of its time in read_header")
    ok = lambda got, want: "OK" if got >= want else "MISSED"
    print(f"full path / naive  = {ratios['full_vs_naive']:.2f}x (target >= {TARGET_FULL_VS_NAIVE:.0f}x: "
          f"{ok(ratios['full_vs_naive'], TARGET_FULL_VS_NAIVE)})")
    print(f"header scan / full = {ratios['header_scan_vs_full']:.2f}x (target >= {TARGET_SCAN_VS_FULL:.0f}x: "
          f"{ok(ratios['header_scan_vs_full'], TARGET_SCAN_VS_FULL)})")
    print(f"CPU per image, naive / full = {ratios['naive_cpu_over_full_cpu_per_image']:.2f} "
          f"(so {WORKERS} cores give at most {WORKERS * ratios['naive_cpu_over_full_cpu_per_image']:.2f}x; "
          f"full path used {full['cpu_per_wall']:.2f} of {WORKERS} cores)")
    if naive["cpu_per_wall"] < 0.9 or scan["cpu_per_wall"] < 0.9:
        print("NOTE: a serial candidate got < 0.9 CPU per wall second: the machine was busy "
              "(other processes or I/O); rerun on a quiet machine for clean ratios")
    print(f"cached / full      = {ratios['cached_vs_full']:.1f}x ({cached['was_cached']}/{cached['n']} "
          f"were cached, {cached['written']} PNGs written: nothing decoded)")
    print(f"cache_images quarantined {full['quarantined_as_duplicate_pixels']} (first run) and "
          f"{cached['quarantined_as_duplicate_pixels']} (cached run) copies as duplicate pixels, "
          "after decoding them: expected, every copy keeps its source's pixel data")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
