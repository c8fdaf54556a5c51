"""raw_studies: header-only scan of the input studies into the DuckDB study catalog.

The dataset layout is set by `ingest.layout` or detected. `paths.raw_dir` is batch "base";
every sub-folder of `ingest.drop_dir` is one more ingest batch. Files unchanged since the last
catalog are not read again, so a re-run adds nothing. Every input (image or report) ends in the
catalog or in quarantine with a reason; the accounting check fails when inputs != catalogued +
quarantined.
"""

from __future__ import annotations

import polars as pl

from cxr_assets.config import Params
from cxr_assets.paths import ProjectPaths
from cxr_assets.stages.base import CheckOutcome, Markdown, StageResult, TablePreview, require
from cxr_assets.stages.contracts import contract_check


def outputs(paths: ProjectPaths) -> list:
    return [paths.catalog_db, paths.studies_table, paths.images_table, paths.quarantine_table,
            paths.catalog_reports_table, paths.batches_table]


def drop_dir(params: Params, paths: ProjectPaths):
    return paths.at(params.ingest.drop_dir) if params.ingest.drop_dir else None


def run(params: Params, paths: ProjectPaths, progress: bool = True) -> StageResult:
    from cxr_assets.failpoints import failpoint
    from cxr_assets.ingest.catalog import accounting, ingest_sources, write_catalog, write_state

    if not paths.raw_dir.is_dir():
        if paths.raw_dir == paths.at(params.demo_data.out_dir):
            require("raw_studies", {"demo_data": [paths.raw_dir]})
        raise FileNotFoundError(f"paths.raw_dir does not exist: {paths.raw_dir} (point it at your data)")

    result = ingest_sources(paths.raw_dir, params.ingest, drop_dir=drop_dir(params, paths),
                            previous_catalog=paths.catalog_dir, progress=progress)
    written = write_catalog(result, paths.catalog_dir)
    write_state(paths.catalog_dir, params.ingest)
    failpoint("raw_studies.before_checks")
    books = accounting(result)

    reasons = (
        result.quarantine.with_columns(
            # Group "image file not found" and friends, not one row per study-specific wording.
            reason=result.quarantine["reason"].str.replace(r" \(first seen at .*\)| to .*$", "")
        ).group_by("reason").len().sort("len", descending=True).head(12).to_dicts()
        if result.quarantine.height else []
    )
    # Summaries from the written files (lazy scans), so the tables need not be loaded here.
    studies = pl.scan_parquet(written["studies"], glob=False)
    images = pl.scan_parquet(written["images"], glob=False)
    checks = [
        CheckOutcome(
            "accounting_balanced", bool(books["balanced"]), blocking=True,
            description="every input is catalogued or quarantined",
            metadata=dict(books),
        ),
        # The written files, read in chunks: the tables themselves may never be loaded whole.
        contract_check(written["studies"], "studies", params, blocking=True),
        contract_check(written["images"], "images", params, blocking=True),
    ]
    return StageResult(
        "raw_studies",
        dict(written),
        {
            "source": params.ingest.source_name,
            "raw_dir": paths.raw_dir,
            "layout": Markdown("\n".join(f"- {note}" for note in result.notes)),
            "n_inputs": result.n_inputs,
            "n_studies": result.height("studies"),
            "n_images": result.height("images"),
            "n_patients": studies.select(pl.col("patient_id").n_unique()).collect().item(),
            "n_quarantined": result.quarantine.height,
            "n_reused_unchanged_files": result.n_reused,
            "n_phi_stripped": result.n_phi_stripped,
            "batches": TablePreview(result.batches.drop("path", "detected").to_dicts()),
            "quarantine_reasons": TablePreview(reasons),
            "view_positions": TablePreview(
                images.group_by("view_position").len().sort("len", descending=True).collect().to_dicts()
            ),
            "image_formats": TablePreview(images.group_by("image_format").len().collect().to_dicts()),
            "catalog": paths.catalog_db,
            "preview": TablePreview(studies.head(5).collect().to_dicts()),
        },
        checks,
    )
