"""Run a data contract (GX suite in data_contracts/) as a stage check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cxr_assets.config import Params
from cxr_assets.stages.base import CheckOutcome

CONTRACTS_DIR = Path(__file__).resolve().parents[2] / "data_contracts"


def contract_overrides(params: Params) -> dict[str, Any]:
    """Values the suites reference as ${...} placeholders, so thresholds live in params.yaml."""
    q = params.quality
    low, high = q.impression_only_share
    return {
        "quality.min_report_chars": q.min_report_chars,
        "quality.max_report_chars": q.max_report_chars,
        "quality.impression_only_share_low": low,
        "quality.impression_only_share_high": high,
        "quality.min_studies": q.min_studies,
        # A study kept only for its report (ingest.require_images false) has no image.
        "ingest.min_images_per_study": 1 if params.ingest.require_images else 0,
    }


def contract_check(table: Any, suite: str, params: Params, blocking: bool) -> CheckOutcome:
    """Validate a table (Polars frame or Parquet file) against data_contracts/expectations/<suite>.json.

    Pass the written Parquet file for tables that grow with the data: the contract then reads
    it in chunks instead of converting the whole table to pandas.
    """
    from cxr_assets.quality.contracts import run_contract

    result = run_contract(table, suite, CONTRACTS_DIR, overrides=contract_overrides(params))
    failed = [f"{f.get('expectation')}({f.get('column') or ''})" for f in result.failed]
    return CheckOutcome(
        name=f"{suite}_contract",
        passed=result.success,
        blocking=blocking,
        description=f"Great Expectations suite data_contracts/expectations/{suite}.json",
        metadata={
            "expectations": result.n_expectations,
            "failed": len(result.failed),
            "failed_expectations": ", ".join(failed) or "none",
            "details": result.failed,
        },
    )
