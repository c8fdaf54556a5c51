"""Patient-level train/val/test splits by salted hash.

Each patient's split depends only on (salt, patient_id): it is deterministic, needs no stored
state, and does not move when new patients arrive. All studies of a patient share its split,
so no patient leaks across splits.
"""

from __future__ import annotations

import hashlib

import polars as pl

SPLITS = ("train", "val", "test")


def patient_unit(patient_id: str, salt: str) -> float:
    """Uniform number in [0, 1) from sha256(salt:patient_id)."""
    digest = hashlib.sha256(f"{salt}:{patient_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_splits(
    studies: pl.DataFrame, train: float, val: float, test: float, salt: str
) -> pl.DataFrame:
    """study_id, patient_id, split (train/val/test) with the split chosen per patient."""
    fractions = {"train": train, "val": val, "test": test}
    bad = {k: v for k, v in fractions.items() if not 0.0 <= v <= 1.0}
    if bad:
        raise ValueError(f"split fractions must be in [0, 1], got {bad}")
    if abs(train + val + test - 1.0) > 1e-6:
        raise ValueError(f"train + val + test must sum to 1, got {train + val + test:.6f}")
    missing = {"study_id", "patient_id"} - set(studies.columns)
    if missing:
        raise ValueError(f"studies table lacks column(s) {sorted(missing)}")
    if studies["patient_id"].null_count():
        raise ValueError(
            f"{studies['patient_id'].null_count()} studies have no patient_id; cannot split by patient"
        )
    duplicated = studies.filter(pl.col("study_id").is_duplicated())["study_id"].unique().to_list()
    if duplicated:
        raise ValueError(f"duplicate study_id in studies table: {sorted(duplicated)[:5]}")

    def split_of(patient_id: str) -> str:
        u = patient_unit(patient_id, salt)
        if u < train:
            return "train"
        return "val" if u < train + val else "test"

    patients = studies["patient_id"].unique()
    mapping = pl.DataFrame(
        {"patient_id": patients, "split": [split_of(p) for p in patients.to_list()]},
        schema={"patient_id": pl.String, "split": pl.String},
    )
    return (
        studies.select(pl.col("study_id").cast(pl.String), pl.col("patient_id").cast(pl.String))
        .join(mapping, on="patient_id", how="left")
        .sort("study_id")
    )


def leakage(splits: pl.DataFrame) -> list[str]:
    """patient_ids that appear in more than one split (empty list == no leakage)."""
    leaked = (
        splits.group_by("patient_id")
        .agg(pl.col("split").n_unique().alias("n_splits"))
        .filter(pl.col("n_splits") > 1)
    )
    return sorted(leaked["patient_id"].to_list())
