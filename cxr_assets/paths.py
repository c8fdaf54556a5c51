"""One place that knows where every artifact lives.

Stages exchange files, never in-memory objects, so the layout below *is* the interface between
them. dvc.yaml lists the same paths as deps/outs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cxr_assets.config import Params

ROOT_ENV = "CXR_PROJECT_ROOT"


def project_root() -> Path:
    """$CXR_PROJECT_ROOT, else the current directory (commands run from the repo root)."""
    return Path(os.environ.get(ROOT_ENV) or os.getcwd()).resolve()


@dataclass(frozen=True)
class ProjectPaths:
    root: Path
    raw_dir: Path
    catalog_dir: Path
    image_cache_dir: Path
    artifacts_dir: Path
    reports_dir: Path
    cache_dir: Path

    @classmethod
    def from_params(cls, params: Params, root: str | os.PathLike | None = None) -> ProjectPaths:
        base = Path(root).resolve() if root else project_root()

        def at(value: str) -> Path:
            path = Path(value)
            return path if path.is_absolute() else base / path

        p = params.paths
        return cls(
            root=base,
            raw_dir=at(p.raw_dir),
            catalog_dir=at(p.catalog_dir),
            image_cache_dir=at(p.image_cache_dir),
            artifacts_dir=at(p.artifacts_dir),
            reports_dir=at(p.reports_dir),
            cache_dir=at(p.cache_dir),
        )

    def at(self, value: str) -> Path:
        """A params path resolved against the project root."""
        path = Path(value)
        return path if path.is_absolute() else self.root / path

    # --- ingestion -------------------------------------------------------------------------
    @property
    def catalog_db(self) -> Path:
        return self.catalog_dir / "catalog.duckdb"

    @property
    def studies_table(self) -> Path:
        return self.catalog_dir / "studies.parquet"

    @property
    def images_table(self) -> Path:
        return self.catalog_dir / "images.parquet"

    @property
    def quarantine_table(self) -> Path:
        return self.catalog_dir / "quarantine.parquet"

    @property
    def catalog_reports_table(self) -> Path:
        """Raw report text per catalogued study (decoded, PHI policy applied)."""
        return self.catalog_dir / "reports.parquet"

    @property
    def batches_table(self) -> Path:
        return self.catalog_dir / "ingest_batches.parquet"

    @property
    def study_images_table(self) -> Path:
        return self.catalog_dir / "study_images.parquet"

    @property
    def report_texts_table(self) -> Path:
        return self.catalog_dir / "report_texts.parquet"

    @property
    def report_profile_table(self) -> Path:
        return self.catalog_dir / "report_profile.parquet"

    @property
    def report_profile_dir(self) -> Path:
        return self.reports_dir / "profile"

    @property
    def splits_table(self) -> Path:
        return self.catalog_dir / "study_splits.parquet"

    @property
    def labels_table(self) -> Path:
        """CheXpert-style labels of each report (written by report_texts)."""
        return self.catalog_dir / "report_labels.parquet"

    @property
    def report_variants_table(self) -> Path:
        return self.catalog_dir / "report_variants.parquet"

    # --- models and embeddings -------------------------------------------------------------
    @property
    def base_model_cache(self) -> Path:
        return self.cache_dir / "base_models"

    @property
    def text_encoder_dir(self) -> Path:
        return self.artifacts_dir / "text_encoder"

    @property
    def embedding_cache_dir(self) -> Path:
        return self.cache_dir / "embeddings"

    @property
    def report_embeddings_table(self) -> Path:
        return self.artifacts_dir / "report_embeddings.parquet"

    @property
    def clip_model_dir(self) -> Path:
        return self.artifacts_dir / "clip_model"

    @property
    def training_report_dir(self) -> Path:
        """DVC metrics and plots of CLIP training (kept outside the model folder)."""
        return self.reports_dir / "training"

    @property
    def study_embeddings_table(self) -> Path:
        return self.artifacts_dir / "study_embeddings.parquet"

    # --- evaluation and registry -----------------------------------------------------------
    @property
    def evaluation_dir(self) -> Path:
        return self.reports_dir / "evaluation"

    @property
    def champion_file(self) -> Path:
        return self.reports_dir / "champion.json"

    @property
    def reevaluation_dir(self) -> Path:
        return self.reports_dir / "reevaluation"


class MissingUpstreamError(RuntimeError):
    """A stage was asked to run before the assets it reads were materialized."""

    def __init__(self, stage: str, missing: dict[str, list[Path]]):
        names = sorted(missing)
        files = "; ".join(f"{n}: {', '.join(str(p) for p in missing[n])}" for n in names)
        super().__init__(
            f"{stage} cannot run: upstream asset(s) {', '.join(names)} were never materialized "
            f"(missing {files}). Build them first with "
            f"`dagster asset materialize --select '+{stage}'` or `dvc repro {stage}`."
        )
        self.stage = stage
        self.missing = missing


def require(stage: str, needed: dict[str, list[Path]]) -> None:
    """Raise MissingUpstreamError naming every upstream asset whose files are absent.

    It lives with the layout (not in `stages`) because library entry points that read the
    catalog themselves, such as the torchrun CLIP ranks, check their inputs the same way.
    """
    missing = {name: [p for p in files if not p.exists()] for name, files in needed.items()}
    missing = {name: files for name, files in missing.items() if files}
    if missing:
        raise MissingUpstreamError(stage, missing)
