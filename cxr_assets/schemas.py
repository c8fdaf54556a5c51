"""Schemas of tables written by more than one room.

A table that several rooms append to (the quarantine table: ingest, the image cache and
report_texts all add rows) needs one definition on the ground floor, so a reader of one room
does not have to import another room for it. Tables owned by one room keep their schema there.
"""

from __future__ import annotations

import polars as pl

QUARANTINE_SCHEMA: dict[str, pl.DataType] = {
    "path": pl.String,
    "study_id": pl.String,
    "reason": pl.String,
    "stage": pl.String,
}
