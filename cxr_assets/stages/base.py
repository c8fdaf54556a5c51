"""What every stage returns, and how a stage proves its inputs exist.

A stage is `run(params, paths, progress) -> StageResult`. The result carries plain values the
adapters translate: Dagster turns them into asset metadata and check results, the CLI prints
them and exits non-zero when a blocking check failed (so `dvc repro` stops where Dagster would).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxr_assets.fileio import atomic_dir, write_json_atomic
from cxr_assets.paths import MissingUpstreamError, require

# `require` and its error live with the layout, since library code that reads the catalog
# (the torchrun CLIP ranks) raises them too; stages keep taking them from here.
__all__ = ["CheckOutcome", "Markdown", "MissingUpstreamError", "StageResult", "TablePreview",
           "atomic_dir", "png_markdown", "require", "write_json", "write_parquet"]


@dataclass(frozen=True)
class Markdown:
    """Metadata value rendered as markdown in the Dagster UI."""

    text: str


@dataclass(frozen=True)
class TablePreview:
    """A few rows of a table, shown as a markdown table in the UI."""

    rows: list[dict[str, Any]]

    def to_markdown(self) -> str:
        if not self.rows:
            return "_empty_"
        columns = list(self.rows[0])
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for row in self.rows:
            cells = [str(row.get(c, "")).replace("|", "\\|").replace("\n", " ")[:80] for c in columns]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


@dataclass
class CheckOutcome:
    """A data-quality or model gate evaluated by a stage."""

    name: str
    passed: bool
    blocking: bool
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageResult:
    stage: str
    outputs: dict[str, Path]
    metadata: dict[str, Any] = field(default_factory=dict)
    checks: list[CheckOutcome] = field(default_factory=list)

    @property
    def blocking_failures(self) -> list[CheckOutcome]:
        return [c for c in self.checks if c.blocking and not c.passed]

    def summary(self) -> dict[str, Any]:
        """JSON-able view (CLI output, stage summary file)."""

        def plain(value: Any) -> Any:
            if isinstance(value, Path):
                return str(value)
            if isinstance(value, Markdown):
                return value.text
            if isinstance(value, TablePreview):
                return value.rows
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [plain(v) for v in value]
            return value

        return {
            "stage": self.stage,
            "outputs": plain(self.outputs),
            "metadata": plain(self.metadata),
            "checks": [
                {"name": c.name, "passed": c.passed, "blocking": c.blocking,
                 "description": c.description, "metadata": plain(c.metadata)}
                for c in self.checks
            ],
        }


# The atomic writes live in cxr_assets.fileio / parquet_io (one home for every layer); stages
# keep importing them from here under their stage names.
def write_json(path: Path, payload: Any) -> Path:
    """Atomic JSON write (sorted keys so DVC hashes are stable for equal content)."""
    return write_json_atomic(path, payload)


def write_parquet(frame: Any, path: Path) -> Path:
    """Atomic Parquet write of a Polars frame."""
    from cxr_assets.parquet_io import write_parquet_atomic  # polars loads with the first write

    return write_parquet_atomic(frame, path)


def png_markdown(path: Path, title: str | None = None) -> str:
    """Inline a PNG as a data URI: the Dagster UI renders it in asset metadata."""
    import base64

    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"**{title or path.stem}**\n\n![{path.stem}](data:image/png;base64,{data})"
