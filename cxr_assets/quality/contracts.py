"""Data contracts: Great Expectations 1.x suites stored as JSON in data_contracts/expectations.

A suite file is a list of {"type": "expect_...", "kwargs": {...}, "meta": {...}}. A kwarg value
may be a "${section.key}" placeholder resolved from `overrides` (or params defaults), so
thresholds live in params.yaml, not in the suite. GX is imported only when a suite runs, and
one ephemeral context is reused across runs because building it is the slow part.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas
    import polars

_PLACEHOLDER = re.compile(r"\$\{([A-Za-z0-9_.\-]+)\}")
_GX_LOCK = threading.Lock()
_GX_STATE: dict[str, Any] = {}


class ContractError(ValueError):
    """A suite is missing, malformed, or references a value nobody supplied."""


@dataclass
class ContractResult:
    suite: str
    success: bool
    n_expectations: int
    failed: list[dict] = field(default_factory=list)  # {expectation, column, details}


def flatten_overrides(values: Mapping | Any | None, prefix: str = "") -> dict[str, Any]:
    """Nested mapping (or pydantic model) -> {"a.b": value}; a 2-item [low, high] also gives a.b_low / a.b_high."""
    if values is None:
        return {}
    if hasattr(values, "model_dump"):
        values = values.model_dump()
    flat: dict[str, Any] = {}
    for key, value in dict(values).items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) or hasattr(value, "model_dump"):
            flat.update(flatten_overrides(value, f"{name}."))
            continue
        flat[name] = value
        if isinstance(value, (list, tuple)) and len(value) == 2:
            flat[f"{name}_low"], flat[f"{name}_high"] = value
    return flat


def _default_values() -> dict[str, Any]:
    from cxr_assets.config import Params
    from cxr_assets.stages.contracts import contract_overrides

    # Params defaults plus the values derived from them (e.g. ingest.min_images_per_study).
    return {**flatten_overrides(Params()), **contract_overrides(Params())}


def resolve_placeholders(value: Any, values: Mapping[str, Any], where: str) -> Any:
    """Replace "${key}" (whole string -> the typed value; inside text -> str) recursively."""
    if isinstance(value, dict):
        return {k: resolve_placeholders(v, values, where) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_placeholders(v, values, where) for v in value]
    if not isinstance(value, str):
        return value

    def lookup(key: str) -> Any:
        if key not in values:
            raise ContractError(
                f"{where}: placeholder ${{{key}}} has no value (pass it in overrides)"
            )
        return values[key]

    whole = _PLACEHOLDER.fullmatch(value)
    if whole:
        return lookup(whole.group(1))
    return _PLACEHOLDER.sub(lambda m: str(lookup(m.group(1))), value)


def suite_path(contracts_dir: Path, suite_name: str) -> Path:
    """data_contracts/expectations/<suite>.json (contracts_dir may also be the expectations folder)."""
    contracts_dir = Path(contracts_dir)
    for candidate in (
        contracts_dir / "expectations" / f"{suite_name}.json",
        contracts_dir / f"{suite_name}.json",
    ):
        if candidate.is_file():
            return candidate
    raise ContractError(
        f"{contracts_dir}: no suite {suite_name!r} (expected expectations/{suite_name}.json)"
    )


def load_suite(
    contracts_dir: Path, suite_name: str, overrides: Mapping | None = None
) -> list[dict]:
    """Read a suite file and resolve its placeholders; validate its shape."""
    path = suite_path(contracts_dir, suite_name)
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ContractError(f"{path}: invalid JSON ({error})") from None
    if isinstance(raw, dict):
        raw = raw.get("expectations")
    if not isinstance(raw, list) or not raw:
        raise ContractError(f"{path}: expected a non-empty list of expectations")
    values = {**_default_values(), **flatten_overrides(overrides)}
    expectations = []
    for i, item in enumerate(raw):
        where = f"{path} [{i}]"
        if not isinstance(item, dict) or not str(item.get("type", "")).startswith("expect_"):
            raise ContractError(f"{where}: each expectation needs a 'type' starting with 'expect_'")
        expectations.append(
            {
                "type": item["type"],
                "kwargs": resolve_placeholders(item.get("kwargs") or {}, values, where),
                "meta": item.get("meta") or {},
            }
        )
    return expectations


def _gx_batch_definition():
    """The cached (context, whole-dataframe batch definition); built once per process."""
    if "batch_definition" not in _GX_STATE:
        # No network here: keep GX from trying to send usage statistics.
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(
            globally=False, metric_calculations=False
        )
        asset = context.data_sources.add_pandas("cxr_contracts").add_dataframe_asset("frame")
        _GX_STATE["context"] = context
        _GX_STATE["batch_definition"] = asset.add_batch_definition_whole_dataframe("whole_frame")
    return _GX_STATE["batch_definition"]


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def run_contract(
    df: pandas.DataFrame,
    suite_name: str,
    contracts_dir: Path,
    overrides: dict | None = None,
) -> ContractResult:
    """Validate a pandas DataFrame against data_contracts/expectations/<suite_name>.json."""
    import pandas as pd

    if not isinstance(df, pd.DataFrame):
        raise TypeError(
            f"run_contract needs a pandas DataFrame, got {type(df).__name__} (use .to_pandas())"
        )
    expectations = load_suite(contracts_dir, suite_name, overrides)

    with _GX_LOCK:  # the shared context is not thread-safe
        import great_expectations as gx
        from great_expectations.expectations.expectation_configuration import (
            ExpectationConfiguration,
        )

        batch_definition = _gx_batch_definition()  # also makes the context active for the suite
        suite = gx.ExpectationSuite(name=suite_name)
        for i, item in enumerate(expectations):
            try:
                config = ExpectationConfiguration(
                    type=item["type"], kwargs=item["kwargs"], meta=item["meta"]
                )
                suite.add_expectation(config.to_domain_obj())
            except Exception as error:  # noqa: BLE001 - GX validates kwargs with many error types
                raise ContractError(
                    f"suite {suite_name!r} [{i}] {item['type']}: invalid expectation ({error})"
                ) from None
        batch = batch_definition.get_batch(batch_parameters={"dataframe": df})
        outcome = batch.validate(suite, result_format="SUMMARY")

    failed = []
    for result in outcome.results:
        if result.success:
            continue
        config = result.expectation_config
        details = {
            k: v
            for k, v in dict(result.result or {}).items()
            if k != "partial_unexpected_index_list"
        }
        info = result.exception_info or {}
        if info.get("raised_exception"):
            details["exception"] = info.get("exception_message")
        failed.append(
            {
                "expectation": config.type,
                "column": config.kwargs.get("column"),
                "details": _jsonable(
                    {
                        **details,
                        "kwargs": {k: v for k, v in config.kwargs.items() if k != "batch_id"},
                        "meta": config.meta or {},
                    }
                ),
            }
        )
    return ContractResult(
        suite=suite_name,
        success=bool(outcome.success),
        n_expectations=len(outcome.results),
        failed=failed,
    )


def load_schema(contracts_dir: Path, table: str) -> dict[str, str]:
    """data_contracts/schemas/<table>.json: column name -> Polars type name."""
    path = Path(contracts_dir) / "schemas" / f"{table}.json"
    if not path.is_file():
        raise ContractError(f"{path}: schema file not found")
    schema = json.loads(path.read_text())
    if not isinstance(schema, dict) or not schema:
        raise ContractError(f"{path}: expected a JSON object of column -> type")
    return schema


def schema_problems(df: polars.DataFrame, table: str, contracts_dir: Path) -> list[str]:
    """Differences between a Polars frame and its schema file (empty list == conforms)."""
    expected = load_schema(contracts_dir, table)
    actual = {name: str(dtype) for name, dtype in df.schema.items()}
    problems = [f"missing column {c!r}" for c in expected if c not in actual]
    problems += [f"unexpected column {c!r}" for c in actual if c not in expected]
    problems += [
        f"column {c!r} is {actual[c]}, expected {t}"
        for c, t in expected.items()
        if c in actual and actual[c] != t
    ]
    return problems
