"""raw_studies: header-only scan of the input studies into the DuckDB study catalog.

Every input file ends in the catalog or in quarantine with a reason; the accounting check fails
when inputs != catalogued + quarantined.
"""

from __future__ import annotations

from cxr_assets.config import Params
from cxr_assets.paths import ProjectPaths
from cxr_assets.stages.base import CheckOutcome, StageResult, TablePreview, require
from cxr_assets.stages.contracts import contract_check


def outputs(paths: ProjectPaths) -> list:
    return [paths.catalog_db, paths.studies_table, paths.images_table, paths.quarantine_table]


def run(params: Params, paths: ProjectPaths, progress: bool = True) -> StageResult:
    from cxr_assets.ingest.catalog import accounting, scan_mimic_layout, write_catalog

    if not paths.raw_dir.is_dir():
        if paths.raw_dir == paths.at(params.demo_data.out_dir):
            require("raw_studies", {"demo_data": [paths.raw_dir]})
        raise FileNotFoundError(f"paths.raw_dir does not exist: {paths.raw_dir} (point it at your data)")

    result = scan_mimic_layout(paths.raw_dir, source=params.ingest.source_name, progress=progress)
    written = write_catalog(result, paths.catalog_dir)
    books = accounting(result)

    reasons = (
        result.quarantine.group_by("reason").len().sort("len", descending=True).head(10).to_dicts()
        if result.quarantine.height else []
    )
    checks = [
        CheckOutcome(
            "accounting_balanced", bool(books["balanced"]), blocking=True,
            description="every input file is catalogued or quarantined",
            metadata={k: v for k, v in books.items()},
        ),
        contract_check(result.studies, "studies", params, blocking=True),
        contract_check(result.images, "images", params, blocking=True),
    ]
    return StageResult(
        "raw_studies",
        {k: v for k, v in written.items()},
        {
            "source": params.ingest.source_name,
            "raw_dir": paths.raw_dir,
            "n_inputs": result.n_inputs,
            "n_studies": result.studies.height,
            "n_images": result.images.height,
            "n_patients": result.studies["patient_id"].n_unique() if result.studies.height else 0,
            "n_quarantined": result.quarantine.height,
            "quarantine_reasons": TablePreview(reasons),
            "view_positions": TablePreview(
                result.images.group_by("view_position").len().sort("len", descending=True).to_dicts()
            ),
            "catalog": paths.catalog_db,
            "preview": TablePreview(result.studies.head(5).to_dicts()),
        },
        checks,
    )
