"""Patient-level train/val/test splits by salted hash.

Each patient's split depends only on (salt, patient_id): it is deterministic, needs no stored
state, and does not move when new patients arrive. All studies of a patient share its split,
so no patient leaks across splits.

`assign_stratified_splits` adds two things real data needs: strata (source x normal/abnormal)
get the split fractions each, by ranking the patients of a stratum on the same salted hash
(still deterministic, no stored state), and official splits (the MIMIC-CXR split CSV, the R2Gen
IU annotation) win for the studies they list.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

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


# --- official splits ---------------------------------------------------------------------------
_SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                "validate": "val", "validation": "val", "dev": "val", "test": "test"}


def _keys(identifier: str) -> list[str]:
    """Lookup keys of a study id across layouts: as is, before "_" (R2Gen "CXR1_IM-0001"),
    and its digits (MIMIC "s50414267" vs 50414267)."""
    identifier = str(identifier).strip()
    keys = [identifier, identifier.split("_")[0]]
    digits = re.sub(r"\D", "", identifier.split("_")[0])
    if digits:
        keys.append(digits.lstrip("0") or "0")
    return keys


def load_official_splits(path: str | Path) -> dict[str, str]:
    """key -> split from a MIMIC-CXR split CSV (study_id, split) or an R2Gen annotation JSON.

    "validate" is renamed "val". Keys are every lookup key of each listed study (see `_keys`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"official split file not found: {path}")
    pairs: list[tuple[str, str]] = []
    if path.suffix.lower() == ".json":
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected {{split: [{{id, ...}}]}} (R2Gen annotation)")
        for split, items in data.items():
            pairs += [(str(item["id"]), split) for item in items]
    else:
        frame = pl.read_csv(path, infer_schema_length=0)
        if not {"study_id", "split"} <= set(frame.columns):
            raise ValueError(f"{path}: expected columns study_id and split (MIMIC-CXR split CSV)")
        pairs = list(zip(frame["study_id"].to_list(), frame["split"].to_list()))
    mapping: dict[str, str] = {}
    for identifier, split in pairs:
        name = _SPLIT_NAMES.get(str(split).strip().lower())
        if name is None:
            raise ValueError(f"{path}: unknown split name {split!r} for {identifier}")
        for key in _keys(identifier):
            mapping.setdefault(key, name)
    return mapping


def official_split_of(study_id: str, official: dict[str, str]) -> str | None:
    for key in _keys(study_id):
        if key in official:
            return official[key]
    return None


def patient_strata(studies: pl.DataFrame, labels: pl.DataFrame | None = None) -> pl.DataFrame:
    """patient_id, stratum = "<source>|normal" / "<source>|abnormal" / "<source>|unlabeled".

    A patient is normal when every study is labelled "No Finding" = 1.
    """
    frame = studies.select(
        pl.col("study_id").cast(pl.String), pl.col("patient_id").cast(pl.String),
        (pl.col("source").cast(pl.String) if "source" in studies.columns else pl.lit(None, pl.String))
        .fill_null("unknown").alias("source"),
    )
    if labels is not None and "No Finding" in labels.columns:
        frame = frame.join(labels.select(pl.col("study_id").cast(pl.String), "No Finding"),
                           on="study_id", how="left")
        state = (pl.when(pl.col("No Finding").is_null().all()).then(pl.lit("unlabeled"))
                 .when((pl.col("No Finding") == 1.0).fill_null(False).all()).then(pl.lit("normal"))
                 .otherwise(pl.lit("abnormal")))
    else:
        frame = frame.with_columns(pl.lit(None, pl.Float64).alias("No Finding"))
        state = pl.lit("unlabeled")
    return frame.group_by("patient_id").agg(
        (pl.col("source").first() + "|" + state).alias("stratum")
    )


def assign_stratified_splits(
    studies: pl.DataFrame,
    train: float,
    val: float,
    test: float,
    salt: str,
    labels: pl.DataFrame | None = None,
    official: dict[str, str] | None = None,
) -> pl.DataFrame:
    """study_id, patient_id, split: official splits first, then per-stratum hash ranking.

    Within a stratum, patients sorted by their salted hash take train / val / test in the given
    fractions (rounded), so every source and normal/abnormal group is represented in each split.
    A patient with an officially split study puts all its studies in that split.
    """
    base = assign_splits(studies, train, val, test, salt)  # validates inputs and fractions
    patient_split: dict[str, str] = {}
    if official:
        for study_id, patient_id in zip(base["study_id"].to_list(), base["patient_id"].to_list()):
            split = official_split_of(study_id, official)
            if split is not None and patient_id not in patient_split:
                patient_split[patient_id] = split
    strata = patient_strata(studies, labels)
    for (stratum,), group in strata.sort("patient_id").group_by(["stratum"], maintain_order=True):
        free = [p for p in group["patient_id"].to_list() if p not in patient_split]
        free.sort(key=lambda p: patient_unit(p, f"{salt}:{stratum}"))
        # Systematic sampling: rank i sits at (i + offset) / n in [0, 1), offset from the hash of
        # the stratum, so a stratum of n patients gets the fractions to within one patient and a
        # stratum of one patient is split like the plain hash would.
        n, offset = len(free), patient_unit(stratum, salt)
        for i, patient in enumerate(free):
            u = (i + offset) / n
            patient_split[patient] = "train" if u < train else "val" if u < train + val else "test"
    mapping = pl.DataFrame(
        {"patient_id": list(patient_split), "split": list(patient_split.values())},
        schema={"patient_id": pl.String, "split": pl.String},
    )
    return base.drop("split").join(mapping, on="patient_id", how="left").sort("study_id")


def identical_texts_across(
    splits: pl.DataFrame, reports: pl.DataFrame, a: str = "train", b: str = "test"
) -> pl.DataFrame:
    """Studies of split `b` whose report text (case and spacing ignored) also occurs in split `a`."""
    texts = reports.select(
        "study_id",
        pl.col("report_for_training").str.to_lowercase().str.replace_all(r"\s+", " ")
        .str.strip_chars().alias("key"),
    ).join(splits.select("study_id", "split"), on="study_id")
    seen = texts.filter(pl.col("split") == a).select("key").unique()
    return texts.filter(pl.col("split") == b).join(seen, on="key", how="semi").select("study_id", "key")
