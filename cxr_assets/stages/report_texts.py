"""report_texts: split each catalogued study's free-text report into sections.

The original text (as raw_studies decoded it, PHI policy applied) is kept beside the parsed
FINDINGS / IMPRESSION / INDICATION / COMPARISON / TECHNIQUE sections; reports with neither
findings nor impression are quarantined with a reason. Each report is
also labelled for the 14 CheXpert observations by the project's rule-based labeler
(1 positive, 0 negative, -1 uncertain, null not mentioned) into report_labels.parquet.
"""

from __future__ import annotations

from collections.abc import Iterator

import polars as pl

from cxr_assets.config import Params
from cxr_assets.paths import ProjectPaths
from cxr_assets.stages.base import CheckOutcome, StageResult, TablePreview, require, write_parquet


def run(params: Params, paths: ProjectPaths, progress: bool = True, *,
        chunk_rows: int | None = None) -> StageResult:
    from cxr_assets.parquet_io import ParquetChunkWriter, iter_parquet_chunks, parquet_rows
    from cxr_assets.reports.labeler import CHEXPERT_OBSERVATIONS, label_reports
    from cxr_assets.reports.sections import REPORT_CHUNK_ROWS, iter_parse_reports
    from cxr_assets.schemas import QUARANTINE_SCHEMA

    require("report_texts", {"raw_studies": [paths.studies_table, paths.catalog_reports_table]})
    chunk_rows = chunk_rows or REPORT_CHUNK_ROWS
    # Streamed: the catalog's reports are read, parsed, labelled and written chunk by chunk. Only
    # the studies' three short identifiers are held whole, to join each chunk with.
    studies = pl.read_parquet(paths.studies_table, columns=["study_id", "patient_id", "source"])
    counts = {"catalogued": 0}

    def catalogued() -> Iterator[pl.DataFrame]:
        for chunk in iter_parquet_chunks(paths.catalog_reports_table, chunk_rows):
            joined = chunk.join(studies, on="study_id", how="inner", maintain_order="left")
            counts["catalogued"] += joined.height
            yield joined

    quarantined: list[pl.DataFrame] = []
    with (ParquetChunkWriter(paths.report_texts_table) as texts_out,
          ParquetChunkWriter(paths.labels_table) as labels_out):
        for reports, quarantine in iter_parse_reports(
            catalogued(), progress=progress, total=parquet_rows(paths.catalog_reports_table)
        ):
            texts_out.write(reports)
            labels_out.write(label_reports(reports["report_for_training"].to_list())
                             .insert_column(0, reports["study_id"]))
            if quarantine.height:
                quarantined.append(quarantine)
    quarantine = (pl.concat(quarantined) if quarantined
                  else pl.DataFrame(schema=QUARANTINE_SCHEMA))  # reports without text: few rows
    quarantine_path = paths.catalog_dir / "report_texts_quarantine.parquet"
    write_parquet(quarantine, quarantine_path)

    # Whole-table figures by lazy scans of the written files, not from memory.
    texts = pl.scan_parquet(paths.report_texts_table)
    n_reports, with_findings, with_impression, mean_chars = texts.select(
        pl.len(),
        pl.col("findings").is_not_null().mean(),
        pl.col("impression").is_not_null().mean(),
        pl.col("n_chars").mean(),
    ).collect().row(0)
    positive_share = pl.scan_parquet(paths.labels_table).select(
        (pl.col(o) == 1.0).fill_null(False).mean().alias(f"positive_{o.lower().replace(' ', '_')}")
        for o in CHEXPERT_OBSERVATIONS
    ).collect().row(0, named=True) if n_reports else {}
    positive_share = {name: round(float(share), 3) for name, share in positive_share.items()}

    def share(value: float | None) -> float:
        return round(float(value), 3) if n_reports else 0.0

    return StageResult(
        "report_texts",
        {"report_texts": paths.report_texts_table, "quarantine": quarantine_path,
         "labels": paths.labels_table},
        {
            "n_reports": n_reports,
            "n_quarantined": quarantine.height,
            "share_with_findings": share(with_findings),
            "share_with_impression": share(with_impression),
            "mean_chars": round(float(mean_chars), 1) if n_reports else 0.0,
            **positive_share,
            "preview": TablePreview(
                texts.select("study_id", "findings", "impression").head(5).collect().to_dicts()
            ),
        },
        [CheckOutcome(
            "reports_accounted", n_reports + quarantine.height == counts["catalogued"],
            blocking=True, description="every catalogued report is parsed or quarantined",
            metadata={"catalogued": counts["catalogued"], "parsed": n_reports,
                      "quarantined": quarantine.height},
        )],
    )
