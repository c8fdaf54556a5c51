"""report_profile: the heterogeneity profile of the reports, gated by the reports contract.

Per report: length, sections present, impression-only, abbreviation density, hedging, negations,
comparisons, de-identification tokens. Dataset level: a summary and plots under reports/profile.
The reports contract (GX) is blocking: training does not start on reports that break it.
"""

from __future__ import annotations

import polars as pl

from cxr_assets.config import Params
from cxr_assets.paths import ProjectPaths
from cxr_assets.stages.base import (
    Markdown,
    StageResult,
    png_markdown,
    require,
    write_json,
    write_parquet,
)
from cxr_assets.stages.contracts import contract_check


def _summary_markdown(summary: dict, plots: list) -> str:
    rows = [f"| {k} | {v} |" for k, v in summary.items() if not isinstance(v, (dict, list))]
    lines = ["| measure | value |", "|---|---|", *rows]
    lines += ["", *[png_markdown(p) for p in plots]]
    return "\n".join(lines)


def run(params: Params, paths: ProjectPaths, progress: bool = True) -> StageResult:
    from cxr_assets.reports.profile import plot_profile, profile_reports, summarize_profile

    require("report_profile", {"report_texts": [paths.report_texts_table]})
    reports = pl.read_parquet(paths.report_texts_table)
    profile = profile_reports(reports)
    write_parquet(profile, paths.report_profile_table)
    summary = summarize_profile(profile)
    out_dir = paths.report_profile_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = plot_profile(profile, out_dir)
    write_json(out_dir / "summary.json", summary)

    contract_input = reports.join(profile.select("study_id", "impression_only"), on="study_id", how="left")
    check = contract_check(contract_input, "reports", params, blocking=True)
    write_json(out_dir / "contract_reports.json", {"passed": check.passed, **check.metadata})

    return StageResult(
        "report_profile",
        {"report_profile": paths.report_profile_table, "profile_dir": out_dir},
        {
            **{k: v for k, v in summary.items() if isinstance(v, (int, float, str))},
            "profile": Markdown(_summary_markdown(summary, plots)),
            "plots": [str(p) for p in plots],
        },
        [check],
    )
