"""Search benchmark: DuckDB exact scan (array_cosine_distance) vs the vss HNSW index.

For N in {10k, 100k, 1M} random unit vectors of dimension 512: index build time, query latency
p50/p95 for top-10, and HNSW recall@10 against exact search, side by side in one process.
`python benchmarks/bench_search.py --sizes 10000,100000` for a quicker run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "search.json"


def _frame(vectors: np.ndarray):
    import polars as pl

    dim = vectors.shape[1]
    n = len(vectors)
    return pl.DataFrame({
        "study_id": [f"s{i:08d}" for i in range(n)],
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


def bench_size(n: int, dim: int, n_queries: int, k: int, seed: int, workdir: Path) -> dict:
    from tqdm.auto import tqdm

    from cxr_assets.embed.search import StudySearch, write_vector_table

    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = rng.standard_normal((n_queries, dim), dtype=np.float32)
    frame = _frame(vectors)
    row = {"n": n, "dim": dim, "k": k, "n_queries": n_queries}
    for mode, threshold in (("exact", n + 1), ("hnsw", 1)):
        start = time.perf_counter()
        write_vector_table(frame, workdir / f"{mode}_{n}.duckdb", "bench", "1", hnsw_min_rows=threshold)
        row[f"{mode}_build_s"] = round(time.perf_counter() - start, 3)
        with StudySearch(workdir / f"{mode}_{n}.duckdb") as search:
            _latencies(search, queries[:2], k)  # warm-up: extension load, first-page reads
            times, found = _latencies(search, tqdm(queries, desc=f"{mode} n={n}", leave=False), k)
            row[f"{mode}_uses_index"] = search.uses_hnsw("image_embedding")
        row[f"{mode}_p50_ms"] = round(1000 * float(np.percentile(times, 50)), 2)
        row[f"{mode}_p95_ms"] = round(1000 * float(np.percentile(times, 95)), 2)
        row[f"{mode}_found"] = found
    truth = [{f"s{i:08d}" for i in np.argsort(-(vectors @ q))[:k]} for q in queries]
    row["exact_recall@10"] = float(np.mean([len(t & f) / k for t, f in zip(truth, row.pop("exact_found"))]))
    row["hnsw_recall@10"] = float(np.mean([len(t & f) / k for t, f in zip(truth, row.pop("hnsw_found"))]))
    row["p50_speedup_hnsw"] = round(row["exact_p50_ms"] / max(row["hnsw_p50_ms"], 1e-9), 2)
    row["build_ratio_hnsw_over_exact"] = round(row["hnsw_build_s"] / max(row["exact_build_s"], 1e-9), 2)
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_search_") as tmp:
        for n in [int(s) for s in args.sizes.split(",") if s]:
            rows.append(bench_size(n, args.dim, args.queries, args.k, args.seed, Path(tmp)))
            # Written after every size: a long 1M run that is cut off still leaves the smaller rows.
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps({"benchmark": "search", "rows": rows}, indent=2) + "\n")
            print(json.dumps(rows[-1]), flush=True)
            for f in Path(tmp).glob("*.duckdb"):
                f.unlink()
    header = ("n", "exact_build_s", "hnsw_build_s", "exact_p50_ms", "exact_p95_ms", "hnsw_p50_ms",
              "hnsw_p95_ms", "p50_speedup_hnsw", "hnsw_recall@10", "hnsw_uses_index")
    print(" | ".join(header))
    for row in rows:
        print(" | ".join(str(row[h]) for h in header))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "search", "rows": rows}, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
