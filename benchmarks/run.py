"""Benchmark entry point (`make bench`): runs every benchmarks/bench_*.py module's main().

Each benchmark measures its candidates side by side in one process and prints ratios; results
land in benchmarks/results/<topic>.json. Select some with `python benchmarks/run.py reports clip`.
Benchmarks are never part of the test suite: timing on a shared machine is noise for a test.
"""

from __future__ import annotations

import importlib.util
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent


def discover(selected: list[str]) -> list[Path]:
    found = sorted(HERE.glob("bench_*.py"))
    if selected:
        found = [p for p in found if p.stem.removeprefix("bench_") in selected]
        missing = set(selected) - {p.stem.removeprefix("bench_") for p in found}
        if missing:
            raise SystemExit(f"unknown benchmark(s): {', '.join(sorted(missing))}; "
                             f"available: {', '.join(p.stem[6:] for p in sorted(HERE.glob('bench_*.py')))}")
    return found


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(HERE.parent))
    failures = 0
    for path in discover(argv):
        print(f"\n=== {path.stem} ===", flush=True)
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        start = time.perf_counter()
        try:
            spec.loader.exec_module(module)
            module.main()
        except Exception:  # noqa: BLE001 (one broken benchmark must not hide the others' figures)
            traceback.print_exc()
            failures += 1
        print(f"--- {path.stem}: {time.perf_counter() - start:.1f} s", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
