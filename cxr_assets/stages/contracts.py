"""Run a data contract (GX suite in data_contracts/) as a stage check.

The contract machinery and its parameter values live in `cxr_assets.quality.contracts`; this
adapter only turns a contract result into the CheckOutcome a stage reports.
"""

from __future__ import annotations

from typing import Any

from cxr_assets.config import Params
from cxr_assets.quality.contracts import CONTRACTS_DIR, contract_overrides, run_contract
from cxr_assets.stages.base import CheckOutcome


def contract_check(table: Any, suite: str, params: Params, blocking: bool) -> CheckOutcome:
    """Validate a table (Polars frame or Parquet file) against data_contracts/expectations/<suite>.json.

    Pass the written Parquet file for tables that grow with the data: the contract then reads
    it in chunks instead of converting the whole table to pandas.
    """
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
