"""ingest_batch: one new data batch dropped in `ingest.drop_dir`, checked before it joins the catalog.

Each sub-folder of the drop folder is one batch and one dynamic partition (registered by the
new_ingest_batch_sensor). This asset scans the batch on its own (headers only, same layout and
PHI policy as raw_studies) and reports its accounting, so a user sees what a batch brings and why
files were refused before raw_studies merges it into the catalog. It writes a summary JSON only.
"""

from __future__ import annotations

from cxr_assets.config import Params
from cxr_assets.paths import ProjectPaths
from cxr_assets.stages.base import CheckOutcome, Markdown, StageResult, TablePreview, write_json


def batch_folder(params: Params, paths: ProjectPaths, batch: str):
    if not params.ingest.drop_dir:
        raise ValueError("ingest.drop_dir is null: there is no drop folder to ingest batches from")
    if not batch or "/" in batch or batch.startswith("."):
        raise ValueError(f"invalid batch name {batch!r}: a batch is a visible sub-folder of the drop folder")
    folder = paths.at(params.ingest.drop_dir) / batch
    if not folder.is_dir():
        raise FileNotFoundError(f"batch {batch!r}: folder {folder} not found in ingest.drop_dir")
    return folder


def run(params: Params, paths: ProjectPaths, progress: bool = True, batch: str = "") -> StageResult:
    from cxr_assets.ingest.catalog import accounting, scan_layout

    folder = batch_folder(params, paths, batch)
    result = scan_layout(folder, params.ingest.layout, source=params.ingest.source_name,
                         progress=progress, options=params.ingest)
    books = accounting(result)
    reasons = (result.quarantine.group_by("reason").len().sort("len", descending=True).head(10).to_dicts()
               if result.quarantine.height else [])
    summary = {"batch": batch, "folder": str(folder), "notes": result.notes, **books,
               "n_studies": result.studies.height, "n_images": result.images.height,
               "quarantine_reasons": reasons}
    out = write_json(paths.catalog_dir / "batches" / f"{batch}.json", summary)
    return StageResult(
        "ingest_batch",
        {"summary": out},
        {
            "batch": batch,
            "folder": folder,
            "layout": Markdown("\n".join(f"- {note}" for note in result.notes)),
            "n_inputs": result.n_inputs,
            "n_studies": result.studies.height,
            "n_images": result.images.height,
            "n_quarantined": result.quarantine.height,
            "quarantine_reasons": TablePreview(reasons),
        },
        [CheckOutcome("batch_accounting_balanced", bool(books["balanced"]), blocking=True,
                      description="every input of the batch is catalogued or quarantined",
                      metadata=dict(books))],
    )
