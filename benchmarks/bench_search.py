"""Search benchmark: DuckDB exact scan (array_cosine_distance) vs the vss HNSW index.

For N in {10k, 100k, 1M} unit vectors of dimension 512: table build time, HNSW index build time
(one indexed column, as each search direction uses one), query latency p50/p95 for top-10
through `StudySearch.nearest` (the code `cxr search` runs), and HNSW recall@10 against exact
search, side by side in one process.

Vectors: `--data clustered` (default) draws them around 64 random centres, the way embeddings of
a few thousand kinds of report cluster; `--data random` is the uniform sphere, the worst case for
any graph index. Building an HNSW index costs about N log N; above `--hnsw-max-n` (default
100,000) it is not built on this 2-core machine: that row gives the exact figures and an HNSW
build time extrapolated from the largest measured build, marked `hnsw_build_s_estimated`.
`python benchmarks/bench_search.py --sizes 10000,100000` for a quicker run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import provenance  # machine, ISA flags, date, command of each result

RESULTS = Path(__file__).parent / "results" / "search.json"
CENTRES = 64


def make_vectors(n: int, dim: int, kind: str, rng: np.random.Generator, chunk: int = 100_000) -> np.ndarray:
    """n unit vectors, generated in chunks so 1M x 512 needs no float64 temporaries."""
    centres = rng.standard_normal((CENTRES, dim)).astype(np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        size = min(chunk, n - start)
        noise = rng.standard_normal((size, dim), dtype=np.float32)
        block = noise if kind == "random" else centres[rng.integers(0, CENTRES, size)] + 0.6 * noise
        out[start:start + size] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def _frame(vectors: np.ndarray):
    import polars as pl

    dim = vectors.shape[1]
    return pl.DataFrame({
        "study_id": [f"s{i:08d}" for i in range(len(vectors))],
        "image_embedding": pl.Series(vectors, dtype=pl.Array(pl.Float32, dim)),
        "report_embedding": pl.Series(vectors, dtype=pl.Array(pl.Float32, dim)),
    })


def _latencies(search, queries: np.ndarray, k: int) -> tuple[list[float], list[set[str]]]:
    times, found = [], []
    for query in queries:
        start = time.perf_counter()
        hits = search.nearest("image_embedding", query, k)
        times.append(time.perf_counter() - start)
        found.append(set(hits["study_id"].to_list()))
    return times, found


def _exact_truth(vectors: np.ndarray, queries: np.ndarray, k: int) -> list[set[str]]:
    truth = []
    for q in queries:
        top = np.argpartition(-(vectors @ q), k)[:k]
        truth.append({f"s{i:08d}" for i in top})
    return truth


def bench_size(n: int, dim: int, n_queries: int, k: int, seed: int, kind: str, workdir: Path,
               build_hnsw: bool) -> dict:
    from tqdm.auto import tqdm

    from cxr_assets.embed.search import StudySearch, write_vector_table

    rng = np.random.default_rng(seed)
    vectors = make_vectors(n, dim, kind, rng)
    # Queries: perturbed table vectors (a query lands near its answers, as a real one does).
    picks = rng.integers(0, n, n_queries)
    queries = vectors[picks] + 0.3 * rng.standard_normal((n_queries, dim), dtype=np.float32) / math.sqrt(dim)
    frame = _frame(vectors)
    row = {"n": n, "dim": dim, "k": k, "n_queries": n_queries, "data": kind}
    truth = _exact_truth(vectors, queries, k)
    modes = [("exact", n + 1), ("hnsw", 1)] if build_hnsw else [("exact", n + 1)]
    for mode, threshold in modes:
        start = time.perf_counter()
        info = write_vector_table(frame, workdir / f"{mode}_{n}.duckdb", "bench", "1",
                                  hnsw_min_rows=threshold, hnsw_columns=("image_embedding",))
        row[f"{mode}_build_s"] = round(time.perf_counter() - start, 2)
        with StudySearch(workdir / f"{mode}_{n}.duckdb") as search:
            _latencies(search, queries[:2], k)  # warm-up: extension load, first-page reads
            times, found = _latencies(search, tqdm(queries, desc=f"{mode} n={n}", leave=False), k)
            row[f"{mode}_uses_index"] = search.uses_hnsw("image_embedding")
        if mode == "hnsw":
            row["hnsw_index_columns"] = info["hnsw_columns"]
            row["hnsw_index_s"] = round(row["hnsw_build_s"] - row["exact_build_s"], 2)
        row[f"{mode}_p50_ms"] = round(1000 * float(np.percentile(times, 50)), 2)
        row[f"{mode}_p95_ms"] = round(1000 * float(np.percentile(times, 95)), 2)
        row[f"{mode}_recall@{k}"] = round(float(np.mean([len(t & f) / k for t, f in zip(truth, found)])), 4)
        (workdir / f"{mode}_{n}.duckdb").unlink(missing_ok=True)
    if build_hnsw:
        row["p50_speedup_hnsw"] = round(row["exact_p50_ms"] / max(row["hnsw_p50_ms"], 1e-9), 2)
    return row


def estimate_index_s(measured: dict, n: int) -> float:
    """HNSW insertion cost ~ N log N: scale the largest measured build to n."""
    m = measured["n"]
    return round(measured["hnsw_index_s"] * (n * math.log(n)) / (m * math.log(m)), 1)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", choices=("clustered", "random"), default="clustered")
    parser.add_argument("--hnsw-max-n", type=int, default=100_000,
                        help="largest N whose HNSW index is built (above: estimated)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    rows: list[dict] = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench_search_") as tmp:
        for n in [int(s) for s in args.sizes.split(",") if s]:
            row = bench_size(n, args.dim, args.queries, args.k, args.seed, args.data, Path(tmp),
                             build_hnsw=n <= args.hnsw_max_n)
            built = [r for r in rows + [row] if "hnsw_index_s" in r]
            if "hnsw_index_s" not in row and built:
                largest = max(built, key=lambda r: r["n"])
                row["hnsw_build_s_estimated"] = estimate_index_s(largest, n)
                row["hnsw_note"] = (f"not built (N > --hnsw-max-n {args.hnsw_max_n}); index time "
                                    f"extrapolated as N log N from the N={largest['n']} build")
            rows.append(row)
            # Written after every size: a long run that is cut off still leaves the smaller rows.
            out.write_text(json.dumps({"benchmark": "search", "rows": rows, "provenance": provenance(
                f"python benchmarks/bench_search.py --sizes {args.sizes} --data {args.data}")},
                indent=2) + "\n")
            print(json.dumps(row), flush=True)
    header = ("n", "exact_build_s", "hnsw_index_s", "exact_p50_ms", "exact_p95_ms", "hnsw_p50_ms",
              "hnsw_p95_ms", "p50_speedup_hnsw", f"hnsw_recall@{args.k}", "hnsw_build_s_estimated")
    print(" | ".join(header))
    for row in rows:
        print(" | ".join(str(row.get(h, "-")) for h in header))
    return rows


if __name__ == "__main__":
    main()
