"""Patient-level hash splits: deterministic, leak-free, stable, close to the requested fractions."""

from __future__ import annotations

import polars as pl
import pytest

from cxr_assets.quality.splits import assign_splits, leakage


def studies(n_patients: int, per_patient: int = 3, offset: int = 0) -> pl.DataFrame:
    rows = [
        {"study_id": f"s{(offset + p) * 10 + k:08d}", "patient_id": f"p{offset + p:08d}"}
        for p in range(n_patients)
        for k in range(per_patient)
    ]
    return pl.DataFrame(rows)


def test_deterministic_and_patient_level():
    frame = studies(300)
    a = assign_splits(frame, 0.7, 0.1, 0.2, salt="s1")
    b = assign_splits(frame.sample(fraction=1.0, shuffle=True, seed=3), 0.7, 0.1, 0.2, salt="s1")
    assert a.equals(b)  # input order does not matter
    assert a.columns == ["study_id", "patient_id", "split"]
    assert a.height == frame.height and set(a["split"]) <= {"train", "val", "test"}
    assert leakage(a) == []


def test_fractions_are_approximately_respected():
    splits = assign_splits(studies(6000, per_patient=1), 0.7, 0.1, 0.2, salt="cxr-split-v1")
    shares = splits["split"].value_counts(normalize=True)
    share = dict(zip(shares["split"], shares["proportion"]))
    assert share["train"] == pytest.approx(0.7, abs=0.02)
    assert share["val"] == pytest.approx(0.1, abs=0.02)
    assert share["test"] == pytest.approx(0.2, abs=0.02)


def test_new_patients_do_not_move_old_ones():
    old = assign_splits(studies(200), 0.7, 0.1, 0.2, salt="s")
    grown = assign_splits(
        pl.concat([studies(200), studies(50, offset=1000)]), 0.7, 0.1, 0.2, salt="s"
    )
    assert (
        grown.join(old, on="study_id").filter(pl.col("split") != pl.col("split_right")).height == 0
    )


def test_salt_changes_assignment():
    a = assign_splits(studies(200), 0.5, 0.0, 0.5, salt="a")
    b = assign_splits(studies(200), 0.5, 0.0, 0.5, salt="b")
    assert (a["split"] != b["split"]).sum() > 50
    assert set(a["split"]) == {"train", "test"}  # val fraction 0: no val studies


def test_leakage_is_detected():
    splits = pl.DataFrame(
        {
            "study_id": ["s1", "s2", "s3", "s4"],
            "patient_id": ["p1", "p1", "p2", "p3"],
            "split": ["train", "test", "val", "val"],
        }
    )
    assert leakage(splits) == ["p1"]


def test_invalid_inputs_raise():
    frame = studies(5)
    with pytest.raises(ValueError, match="sum to 1"):
        assign_splits(frame, 0.7, 0.2, 0.2, salt="s")
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        assign_splits(frame, 1.2, -0.2, 0.0, salt="s")
    with pytest.raises(ValueError, match="no patient_id"):
        assign_splits(
            frame.with_columns(pl.lit(None, dtype=pl.String).alias("patient_id")),
            0.7,
            0.1,
            0.2,
            "s",
        )
    with pytest.raises(ValueError, match="duplicate study_id"):
        assign_splits(pl.concat([frame, frame.head(1)]), 0.7, 0.1, 0.2, salt="s")
