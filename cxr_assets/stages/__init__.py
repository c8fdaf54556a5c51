"""Pipeline stages: one module per asset, each exposing `run(params, paths, progress)`.

`STAGES` is the asset graph in dependency order. The Dagster definitions, the CLI (which
dvc.yaml calls) and the tests all read it, so the chain is declared once.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class CheckSpec:
    name: str
    blocking: bool
    description: str


@dataclass(frozen=True)
class StageSpec:
    name: str
    upstream: tuple[str, ...]
    group: str
    kinds: tuple[str, ...]
    checks: tuple[CheckSpec, ...] = ()


def _contract(suite: str) -> CheckSpec:
    return CheckSpec(f"{suite}_contract", True, f"GX suite data_contracts/expectations/{suite}.json")


STAGES: tuple[StageSpec, ...] = (
    StageSpec("demo_data", (), "ingest", ("python", "dicom")),
    StageSpec("raw_studies", ("demo_data",), "ingest", ("duckdb", "polars", "dicom"), (
        CheckSpec("accounting_balanced", True, "every input file is catalogued or quarantined"),
        _contract("studies"), _contract("images"))),
    StageSpec("study_images", ("raw_studies",), "ingest", ("pydicom", "parquet"), (
        CheckSpec("images_accounted", True, "every catalogued image is cached or quarantined"),)),
    StageSpec("report_texts", ("raw_studies",), "reports", ("polars", "parquet"), (
        CheckSpec("reports_accounted", True, "every catalogued report is parsed or quarantined"),)),
    StageSpec("report_profile", ("report_texts",), "reports", ("great_expectations", "parquet"),
              (_contract("reports"),
               CheckSpec("reports_drift", False, "profile shares within quality.drift_tolerance "
                         "of the stored reference profile"))),
    StageSpec("study_splits", ("report_texts",), "reports", ("polars", "parquet"), (
        CheckSpec("no_patient_leakage", True, "no patient appears in two splits"),
        _contract("splits"),
        CheckSpec("no_identical_train_test_text", False,
                  "few test reports are word-identical to a train report"))),
    StageSpec("report_variants", ("report_texts", "study_splits"), "reports", ("polars", "parquet"),
              (_contract("report_variants"),)),
    # text_encoder reads report_profile only through its blocking contract: bad reports stop training.
    StageSpec("text_encoder", ("report_texts", "study_splits", "report_profile", "report_variants"),
              "text",
              ("pytorch", "huggingface")),
    StageSpec("report_embeddings", ("text_encoder", "report_texts"), "text", ("pytorch", "parquet")),
    StageSpec("clip_model", ("study_images", "study_splits", "report_embeddings"),
              "clip", ("pytorch", "mlflow")),
    StageSpec("study_embeddings", ("clip_model",), "evaluation", ("pytorch", "parquet")),
    StageSpec("evaluation_report", ("study_embeddings",), "evaluation", ("mlflow",)),
    StageSpec("model_comparison", ("study_embeddings",), "evaluation", ("pytorch", "mlflow")),
    StageSpec("champion_model", ("evaluation_report",), "evaluation", ("mlflow",), (
        CheckSpec("champion_is_best", True, "the champion alias points at the best evaluated version"),)),
)

# Not part of the training chain: the scheduled re-evaluation of the production model.
REEVALUATION = StageSpec(
    "champion_reevaluation", ("champion_model", "study_splits"), "monitoring", ("mlflow",),
    (CheckSpec("no_metric_drift", False, "no watched metric dropped beyond evaluation.drift_tolerance"),),
)

# Not part of the training chain either: one dynamic partition per batch in ingest.drop_dir,
# registered by a sensor. raw_studies reads every batch folder, so it depends on all partitions.
INGEST_BATCH = StageSpec(
    "ingest_batch", (), "ingest", ("dicom", "polars"),
    (CheckSpec("batch_accounting_balanced", True,
               "every input of the batch is catalogued or quarantined"),),
)
# Assets outside STAGES that feed a stage (Dagster dependencies only).
SIDE_INPUTS: dict[str, tuple[str, ...]] = {"raw_studies": (INGEST_BATCH.name,)}

STAGE_NAMES = tuple(s.name for s in STAGES)


def stage_module(name: str):
    """The module implementing stage `name` (imported lazily: stages pull in torch & co)."""
    if name == REEVALUATION.name:
        name = "reevaluation"
    elif name not in (*STAGE_NAMES, INGEST_BATCH.name):
        raise KeyError(f"unknown stage {name!r}; stages are: {', '.join(STAGE_NAMES)}")
    return importlib.import_module(f"cxr_assets.stages.{name}")


def stage_doc(name: str) -> str:
    """First paragraph docstring of a stage module, without importing heavy dependencies."""
    import ast
    from pathlib import Path

    module = "reevaluation" if name == REEVALUATION.name else name
    source = (Path(__file__).parent / f"{module}.py").read_text()
    return (ast.get_docstring(ast.parse(source)) or name).strip()
