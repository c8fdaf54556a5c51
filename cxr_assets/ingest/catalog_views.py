"""The DuckDB study catalog: raw_studies owns its tables, later stages appear as views.

Downstream stages write Parquet files (their DVC outputs). Rewriting `catalog.duckdb` from every
stage would invalidate raw_studies in DVC, so `connect_catalog` binds the later tables as
temporary views over those files: one connection answers SQL over the whole chain.
"""

from __future__ import annotations

import duckdb

from cxr_assets.paths import ProjectPaths


def downstream_tables(paths: ProjectPaths) -> dict[str, object]:
    return {
        "study_images": paths.study_images_table,
        "report_texts": paths.report_texts_table,
        "report_profile": paths.report_profile_table,
        "study_splits": paths.splits_table,
        "report_embeddings": paths.report_embeddings_table,
        "study_embeddings": paths.study_embeddings_table,
    }


def connect_catalog(paths: ProjectPaths, read_only: bool = True) -> duckdb.DuckDBPyConnection:
    """Open the catalog with every materialized stage table queryable by name."""
    if not paths.catalog_db.exists():
        raise FileNotFoundError(f"no catalog at {paths.catalog_db}: materialize raw_studies first")
    con = duckdb.connect(str(paths.catalog_db), read_only=read_only)
    for view, file in downstream_tables(paths).items():
        if file.exists():
            con.execute(f"CREATE OR REPLACE TEMP VIEW {view} AS SELECT * FROM read_parquet('{file}')")
    return con
