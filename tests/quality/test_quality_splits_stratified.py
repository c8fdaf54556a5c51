"""Stratified splits, official split files and identical-text detection."""

from __future__ import annotations

import json

import polars as pl

from cxr_assets.quality.splits import (
    assign_stratified_splits,
    identical_texts_across,
    leakage,
    load_official_splits,
)
from tests.helpers import SHARED_DATA

R2GEN = SHARED_DATA / "iu_xray" / "r2gen_annotation.json"


def _studies(n_patients: int = 400) -> tuple[pl.DataFrame, pl.DataFrame]:
    rows, labels = [], []
    for p in range(n_patients):
        source = "mimic" if p % 4 else "iu"  # a 25 % minority source
        for k in range(1 + p % 3):
            study = f"s{p}_{k}"
            rows.append({"study_id": study, "patient_id": f"p{p}", "source": source})
            labels.append({"study_id": study, "No Finding": 1.0 if p % 5 == 0 else None})
    return pl.DataFrame(rows), pl.DataFrame(labels, schema={"study_id": pl.String, "No Finding": pl.Float64})


def test_strata_get_the_fractions_and_no_patient_leaks():
    studies, labels = _studies()
    splits = assign_stratified_splits(studies, 0.7, 0.1, 0.2, "salt", labels=labels)
    assert leakage(splits) == []
    assert splits.height == studies.height
    joined = splits.join(studies.select("study_id", "source"), on="study_id")
    patients = joined.unique("patient_id")
    for source in ("iu", "mimic"):
        part = patients.filter(pl.col("source") == source)
        share = part.filter(pl.col("split") == "test").height / part.height
        assert abs(share - 0.2) < 0.02, (source, share)
    again = assign_stratified_splits(studies, 0.7, 0.1, 0.2, "salt", labels=labels)
    assert again.equals(splits)


def test_official_splits_win(tmp_path):
    studies, _ = _studies(50)
    csv = tmp_path / "split.csv"
    csv.write_text("dicom_id,study_id,subject_id,split\nx,s3_0,3,test\ny,s4_0,4,validate\n")
    official = load_official_splits(csv)
    splits = assign_stratified_splits(studies, 0.7, 0.1, 0.2, "salt", official=official)
    split_of = dict(zip(splits["study_id"], splits["split"]))
    assert split_of["s3_0"] == "test" and split_of["s4_0"] == "val" and split_of["s4_1"] == "val"
    assert leakage(splits) == []
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"holdout": [{"id": "CXR1_IM-1"}]}))
    try:
        load_official_splits(bad)
    except ValueError as error:
        assert "unknown split name" in str(error)
    else:
        raise AssertionError("unknown split name accepted")


def test_r2gen_split_maps_iu_ids():
    if not R2GEN.is_file():
        import pytest

        pytest.skip("shared IU data not available")
    official = load_official_splits(R2GEN)
    first = json.loads(R2GEN.read_text())["test"][0]["id"]  # "CXR<uid>_IM-..."
    assert official[first.split("_")[0]] == "test"
    assert set(official.values()) == {"train", "val", "test"}


def test_identical_texts_across_train_and_test():
    splits = pl.DataFrame({"study_id": ["a", "b", "c"], "split": ["train", "test", "test"]})
    reports = pl.DataFrame({"study_id": ["a", "b", "c"],
                            "report_for_training": ["No acute disease.", "no  acute disease.", "Effusion."]})
    assert identical_texts_across(splits, reports)["study_id"].to_list() == ["b"]
