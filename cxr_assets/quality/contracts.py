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

from cxr_assets.fileio import flatten

if TYPE_CHECKING:
    import pandas
    import polars

    from cxr_assets.config import Params

CONTRACTS_DIR = Path(__file__).resolve().parents[2] / "data_contracts"
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
    """Nested mapping (or pydantic model) -> {"a.b": value} (fileio.flatten, each key after
    `prefix`); a 2-item [low, high] also gives a.b_low / a.b_high."""
    if values is None:
        return {}
    flat: dict[str, Any] = {}
    for key, value in flatten(values).items():
        name = f"{prefix}{key}"
        flat[name] = value
        if isinstance(value, (list, tuple)) and len(value) == 2:
            flat[f"{name}_low"], flat[f"{name}_high"] = value
    return flat


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


def _default_values() -> dict[str, Any]:
    from cxr_assets.config import Params

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


# Expectations GX decides row by row: a table passes when every chunk of it passes, so they run
# on bounded chunks. With a `mostly` fraction they are whole-column decisions and do not.
ROW_WISE = frozenset({
    "expect_column_values_to_not_be_null",
    "expect_column_values_to_be_null",
    "expect_column_values_to_be_between",
    "expect_column_values_to_be_in_set",
    "expect_column_values_to_not_be_in_set",
    "expect_column_values_to_match_regex",
    "expect_column_values_to_not_match_regex",
    "expect_column_value_lengths_to_be_between",
})
# Expectations about the column names only: a zero-row frame with the table's schema suffices.
SCHEMA_ONLY = frozenset({
    "expect_table_columns_to_match_set",
    "expect_table_columns_to_match_ordered_list",
    "expect_table_column_count_to_equal",
    "expect_table_column_count_to_be_between",
    "expect_column_to_exist",
})
CONTRACT_CHUNK_ROWS = 50_000
_COUNT_KEYS = ("element_count", "missing_count", "unexpected_count")
_PARTIAL_LIMIT = 20


class _Table:
    """The validated table as pandas pieces: chunks of rows, a column subset, or its schema.

    Accepts a pandas or Polars frame or a Parquet file; only the pieces asked for are ever
    converted to pandas (the memory-hungry form), so a large table is never held whole.
    """

    def __init__(self, data: Any) -> None:
        import pandas as pd
        import polars as pl

        if isinstance(data, (str, Path)):
            path = Path(data)
            if not path.is_file():
                raise FileNotFoundError(f"run_contract: table file {path} does not exist")
            self.kind, self.data = "parquet", path
            self.columns = list(pl.scan_parquet(path, glob=False).collect_schema().names())
            from cxr_assets.parquet_io import parquet_rows

            self.rows = parquet_rows(path)
        elif isinstance(data, pl.DataFrame):
            self.kind, self.data, self.columns, self.rows = "polars", data, data.columns, data.height
        elif isinstance(data, pd.DataFrame):
            self.kind, self.data = "pandas", data
            self.columns, self.rows = [str(c) for c in data.columns], len(data)
        else:
            raise TypeError(
                "run_contract needs a pandas or Polars DataFrame or a Parquet path, got "
                f"{type(data).__name__}"
            )

    def _present(self, columns: list[str]) -> list[str]:
        # A column the table lacks is left out: GX then reports it missing in the expectation.
        return [c for c in self.columns if c in set(columns)]

    def subset(self, columns: list[str]) -> pandas.DataFrame:
        """All rows of `columns` (at least one column, so row counts stay right)."""
        import polars as pl

        columns = self._present(columns) or self.columns[:1]
        if self.kind == "pandas":
            return self.data[columns]
        if self.kind == "polars":
            return self.data.select(columns).to_pandas()
        return pl.read_parquet(self.data, columns=columns, glob=False).to_pandas()

    def schema_frame(self) -> pandas.DataFrame:
        if self.kind == "pandas":
            return self.data.iloc[0:0]
        if self.kind == "polars":
            return self.data.head(0).to_pandas()
        import polars as pl

        return pl.scan_parquet(self.data, glob=False).head(0).collect().to_pandas()

    def chunks(self, columns: list[str], chunk_rows: int):
        """`columns` in frames of at most chunk_rows rows (one frame for an empty table)."""
        from cxr_assets.parquet_io import iter_parquet_chunks

        columns = self._present(columns) or self.columns[:1]
        if self.kind == "parquet":
            for chunk in iter_parquet_chunks(self.data, chunk_rows, columns):
                yield chunk.to_pandas()
            return
        for offset in range(0, max(self.rows, 1), chunk_rows):
            if self.kind == "pandas":
                yield self.data[columns].iloc[offset : offset + chunk_rows]
            else:
                yield self.data.select(columns).slice(offset, chunk_rows).to_pandas()


def _referenced_columns(kwargs: Mapping[str, Any]) -> list[str]:
    names = [kwargs.get(k) for k in ("column", "column_A", "column_B")]
    names += list(kwargs.get("column_list") or [])
    return [str(n) for n in names if n]


def _build_suite(name: str, items: list[tuple[int, dict]]):
    import great_expectations as gx
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    suite = gx.ExpectationSuite(name=name)
    for index, item in items:
        try:
            config = ExpectationConfiguration(
                type=item["type"], kwargs=item["kwargs"],
                meta={**item["meta"], "_cxr_index": index},  # maps results back to the suite
            )
            suite.add_expectation(config.to_domain_obj())
        except Exception as error:  # noqa: BLE001 - GX validates kwargs with many error types
            raise ContractError(
                f"suite {name!r} [{index}] {item['type']}: invalid expectation ({error})"
            ) from None
    return suite


def _outcome(result) -> tuple[int, dict]:
    """(suite index, {success, details}) of one GX expectation result."""
    config = result.expectation_config
    meta = dict(config.meta or {})
    index = int(meta.pop("_cxr_index"))
    details = {k: v for k, v in dict(result.result or {}).items()
               if k not in ("partial_unexpected_index_list", "partial_unexpected_counts")}
    info = result.exception_info or {}
    if info.get("raised_exception"):
        details["exception"] = info.get("exception_message")
    details["kwargs"] = {k: v for k, v in config.kwargs.items() if k != "batch_id"}
    details["meta"] = meta
    return index, {"success": bool(result.success), "details": details}


def _merge_chunk(previous: dict | None, current: dict) -> dict:
    """Combine one row-wise expectation's outcomes over chunks: counts add up, samples are
    kept up to a limit, and the expectation fails when any chunk fails."""
    if previous is None:
        return {**current, "details": {**current["details"], "chunks": 1,
                                       "chunks_failed": int(not current["success"])}}
    merged, new = dict(previous["details"]), current["details"]
    for key in _COUNT_KEYS:
        if key in new:
            merged[key] = merged.get(key, 0) + new[key]
    sample = list(merged.get("partial_unexpected_list") or [])
    sample += list(new.get("partial_unexpected_list") or [])
    if sample:
        merged["partial_unexpected_list"] = sample[:_PARTIAL_LIMIT]
    if "exception" in new and "exception" not in merged:
        merged["exception"] = new["exception"]
    merged["chunks"] += 1
    merged["chunks_failed"] += int(not current["success"])
    if {"element_count", "unexpected_count"} <= merged.keys():
        considered = merged["element_count"] - merged.get("missing_count", 0)
        merged["unexpected_percent"] = (100.0 * merged["unexpected_count"] / considered
                                        if considered else 0.0)
    return {"success": previous["success"] and current["success"], "details": merged}


def run_contract(
    data: Any,
    suite_name: str,
    contracts_dir: Path,
    overrides: dict | None = None,
    chunk_rows: int = CONTRACT_CHUNK_ROWS,
) -> ContractResult:
    """Validate a table (pandas or Polars frame, or a Parquet file) against
    data_contracts/expectations/<suite_name>.json.

    Memory stays bounded for large tables: row-wise expectations (not null, in set, between,
    regex, lengths; without `mostly`) run on chunks of `chunk_rows` rows and are merged,
    schema expectations on a zero-row frame, and the rest (uniqueness, row counts, column
    statistics) on only the columns they name. The verdict equals a whole-table run.
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    expectations = load_suite(contracts_dir, suite_name, overrides)
    table = _Table(data)
    row_wise, schema, whole = [], [], []
    for index, item in enumerate(expectations):
        if item["type"] in SCHEMA_ONLY:
            schema.append((index, item))
        elif item["type"] in ROW_WISE and item["kwargs"].get("mostly") is None:
            row_wise.append((index, item))
        else:
            whole.append((index, item))

    outcomes: dict[int, dict] = {}
    with _GX_LOCK:  # the shared context is not thread-safe
        batch_definition = _gx_batch_definition()  # also makes the context active for suites

        def validate(items: list[tuple[int, dict]], frame) -> list[tuple[int, dict]]:
            suite = _build_suite(suite_name, items)
            batch = batch_definition.get_batch(batch_parameters={"dataframe": frame})
            return [_outcome(r) for r in batch.validate(suite, result_format="SUMMARY").results]

        if schema:
            outcomes.update(validate(schema, table.schema_frame()))
        if whole:
            columns = sorted({c for _, item in whole for c in _referenced_columns(item["kwargs"])})
            outcomes.update(validate(whole, table.subset(columns)))
        if row_wise:
            columns = sorted({c for _, item in row_wise
                              for c in _referenced_columns(item["kwargs"])})
            for chunk in table.chunks(columns, chunk_rows):
                for index, outcome in validate(row_wise, chunk):
                    outcomes[index] = _merge_chunk(outcomes.get(index), outcome)

    failed = []
    for index in sorted(outcomes):
        if outcomes[index]["success"]:
            continue
        item = expectations[index]
        failed.append({
            "expectation": item["type"],
            "column": item["kwargs"].get("column"),
            "details": _jsonable(outcomes[index]["details"]),
        })
    return ContractResult(
        suite=suite_name,
        success=not failed and len(outcomes) == len(expectations),
        n_expectations=len(outcomes),
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
