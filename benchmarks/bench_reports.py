"""Reports path benchmark: parse + label + profile throughput, and labeler agreement.

1. Throughput: the real IU reports (../shared/data/iu_xray/indiana_reports.csv) replicated to
   N reports (default 100,000; BENCH_REPORTS_N to change) go through the same code the
   report_texts and report_profile stages run: section splitting + normalisation
   (the report_texts stage's per-row path), the CheXpert labeler and the style profile. Each report is
   processed from scratch (no caching of repeated texts), so replication does not flatter it.
   Target: >= 1,000 reports/s on a 2-core machine.
2. Agreement: our labeler against the CheXpert labeler's expected output
   (../shared/data/rules/chexpert_labeler/labeled_reports.csv), per observation.
Writes benchmarks/results/reports.json.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
IU_CSV = SHARED / "iu_xray" / "indiana_reports.csv"
LABELED = SHARED / "rules" / "chexpert_labeler" / "labeled_reports.csv"
TARGET = 1000.0


def _replicated_iu(n: int):
    import polars as pl

    from cxr_assets.ingest.layouts.iu_xray import read_reports_csv

    frame = read_reports_csv(IU_CSV)
    reps = -(-n // frame.height)
    return pl.concat([frame] * reps).head(n).with_row_index("row")


def throughput(n: int) -> dict:
    import polars as pl

    from cxr_assets.reports.labeler import label_reports
    from cxr_assets.reports.profile import profile_reports
    from cxr_assets.reports.sections import split_sections, text_from_columns, training_text

    raw = _replicated_iu(n)
    timings: dict[str, float] = {}

    start = time.perf_counter()
    rows = []
    for row in raw.iter_rows(named=True):
        text = text_from_columns(indication=row["indication"], comparison=row["comparison"],
                                 findings=row["findings"], impression=row["impression"])
        sections = split_sections(text) if text else {}
        train = training_text(sections) if text else None
        if train:
            rows.append({"study_id": str(row["row"]), "patient_id": str(row["row"]),
                         "source": "iu_xray", **sections, "report_for_training": train})
    reports = pl.DataFrame(rows)
    timings["parse"] = time.perf_counter() - start

    start = time.perf_counter()
    labels = label_reports(reports["report_for_training"].to_list())
    timings["label"] = time.perf_counter() - start

    start = time.perf_counter()
    profile = profile_reports(reports)
    timings["profile"] = time.perf_counter() - start

    total = sum(timings.values())
    return {
        "n_input": n,
        "n_reports": reports.height,
        "seconds": {k: round(v, 2) for k, v in timings.items()} | {"total": round(total, 2)},
        "reports_per_s": {k: round(n / v, 1) for k, v in timings.items()} | {"total": round(n / total, 1)},
        "positive_share": {c: round(float((labels[c] == 1.0).fill_null(False).mean()), 4)
                           for c in labels.columns},
        "impression_only_share": round(float(profile["impression_only"].mean()), 4),
    }


def agreement() -> dict:
    import polars as pl

    from cxr_assets.reports.labeler import CHEXPERT_OBSERVATIONS, label_reports

    reference = pl.read_csv(LABELED)
    ours = label_reports(reference["Reports"].to_list())
    table = {}
    for observation in CHEXPERT_OBSERVATIONS:
        expected = reference[observation].cast(pl.Float64).to_list()
        got = ours[observation].to_list()
        table[observation] = {
            "agree": sum(e == g for e, g in zip(expected, got)),
            "n": len(expected),
            "mentioned_in_reference": sum(e is not None for e in expected),
        }
    agree = sum(v["agree"] for v in table.values())
    n = sum(v["n"] for v in table.values())
    cells = mentioned_cell_agreement(reference, ours)
    return {"n_reports": reference.height, "per_observation": table, "overall": round(agree / n, 4),
            **cells}


def mentioned_cell_agreement(reference, ours) -> dict:
    """Agreement counted apart on cells the reference labels (1 / 0 / -1) and on its blanks:
    blanks dominate any report x observation grid, so one overall share flatters a labeler."""
    from cxr_assets.reports.labeler import CHEXPERT_OBSERVATIONS

    mentioned = blank = mentioned_agree = blank_agree = 0
    for observation in CHEXPERT_OBSERVATIONS:
        got = ours[observation].to_list()
        for expected, value in zip(reference[observation].cast(float).to_list(), got):
            if expected is None:
                blank += 1
                blank_agree += value is None
            else:
                mentioned += 1
                mentioned_agree += value == expected
    return {"mentioned_cells": mentioned, "mentioned_agree": mentioned_agree,
            "blank_cells": blank, "blank_agree": blank_agree}


def main() -> None:
    os.environ.setdefault("POLARS_MAX_THREADS", "2")
    n = int(os.environ.get("BENCH_REPORTS_N", "100000"))
    result: dict = {"target_reports_per_s": TARGET}
    if IU_CSV.is_file():
        t = throughput(n)
        result["throughput"] = t
        total = t["reports_per_s"]["total"]
        print(f"parse + label + profile on {n:,} IU reports (replicated from {IU_CSV.name})")
        print(f"{'step':<10}{'seconds':>10}{'reports/s':>12}{'share of time':>15}")
        for step in ("parse", "label", "profile", "total"):
            share = t["seconds"][step] / t["seconds"]["total"]
            print(f"{step:<10}{t['seconds'][step]:>10.2f}{t['reports_per_s'][step]:>12.0f}{share:>15.2f}")
        print(f"throughput / target = {total:.0f} / {TARGET:.0f} = {total / TARGET:.2f}x")
    else:
        print(f"skipped throughput: {IU_CSV} not found")
    if LABELED.is_file():
        a = agreement()
        result["agreement"] = a
        print(f"\nlabeler agreement with CheXpert expected output ({a['n_reports']} reports)")
        print(f"{'observation':<28}{'agree/n':>9}{'mentioned':>11}")
        for name, v in a["per_observation"].items():
            print(f"{name:<28}{v['agree']:>5}/{v['n']:<3}{v['mentioned_in_reference']:>11}")
        print(f"overall cell agreement: {a['overall']:.3f} (mentioned cells "
              f"{a['mentioned_agree']}/{a['mentioned_cells']}, blanks {a['blank_agree']}/{a['blank_cells']})")
    out = HERE / "results" / "reports.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
