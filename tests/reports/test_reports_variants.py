"""Report variants and hard negatives for text training."""

from __future__ import annotations

import random

import polars as pl
import pytest

from cxr_assets.reports.variants import (
    VARIANT_KINDS,
    VARIANTS_SCHEMA,
    build_variants,
    finding_swap,
    laterality_swap,
    negation_flip,
    report_variants,
)

FINDINGS = "The heart size is normal. There is a small left pleural effusion. No pneumothorax."
IMPRESSION = "Small left pleural effusion."
TEXT = f"{FINDINGS} {IMPRESSION}"


def test_all_kinds_for_a_full_report_and_determinism():
    rows = report_variants("s1", "train", TEXT, FINDINGS, IMPRESSION, seed=5)
    kinds = {r["variant_kind"] for r in rows}
    assert kinds == set(VARIANT_KINDS) - {"expanded"}  # nothing to expand in this report
    assert rows == report_variants("s1", "train", TEXT, FINDINGS, IMPRESSION, seed=5)
    by_kind = {r["variant_kind"]: r for r in rows}
    assert by_kind["findings_to_impression"]["anchor"] == FINDINGS
    assert by_kind["impression_only"]["positive"] == IMPRESSION
    shuffled = by_kind["sentence_shuffled"]["positive"]
    assert sorted(shuffled.split(". ")) != shuffled.split(". ") or shuffled != TEXT
    assert sorted(s.strip(".") for s in shuffled.split(". ")) == sorted(s.strip(".") for s in TEXT.split(". "))
    for row in rows:
        assert row["positive"] != row["anchor"]
        if row["hard_negative"] is not None:
            assert row["hard_negative"] != row["positive"]
            assert row["negative_kind"] in ("negation_flip", "laterality_swap", "finding_swap")


def test_one_sentence_note_still_gets_a_variant():
    rows = report_variants("s2", "test", "Normal chest.", None, "Normal chest.", seed=1)
    assert [r["variant_kind"] for r in rows] == ["style_rewrite"]
    assert rows[0]["positive"] != "Normal chest." and "Abnormal" in rows[0]["hard_negative"]


def test_hard_negative_edits():
    rng = random.Random(0)
    assert negation_flip("No pneumothorax.", rng) == "Pneumothorax."
    assert negation_flip("There is a small effusion.", rng) == "There is no small effusion."
    assert laterality_swap("Left effusion, right clear.") == "Right effusion, left clear."
    assert laterality_swap("Bilateral effusions.") is None
    assert finding_swap("Small effusion.", rng) == "Small pneumothorax."
    assert finding_swap("Lungs are clear.", rng) is None


def test_abbreviated_and_expanded_variants():
    rows = report_variants("s3", "val", "s/p CABG. No pneumothorax.", None, "s/p CABG. No pneumothorax.",
                           seed=2, kinds=("abbreviated", "expanded"), abbreviation_rate=1.0)
    by_kind = {r["variant_kind"]: r["positive"] for r in rows}
    assert by_kind["expanded"] == "status post coronary artery bypass graft. No pneumothorax."
    assert by_kind["abbreviated"] == "s/p CABG. No PTX."
    with pytest.raises(ValueError, match="unknown variant kinds"):
        report_variants("s", "train", "x", None, None, seed=1, kinds=("paraphrase",))


def test_build_variants_covers_every_report_with_a_split():
    reports = pl.DataFrame({
        "study_id": ["a", "b", "c"],
        "report_for_training": [TEXT, "No acute disease.", "Left effusion."],
        "findings": [FINDINGS, None, None],
        "impression": [IMPRESSION, "No acute disease.", "Left effusion."],
    })
    splits = pl.DataFrame({"study_id": ["a", "b", "c"], "split": ["train", "val", "test"]})
    table = build_variants(reports, splits, seed=3, progress=False)
    assert dict(table.schema) == VARIANTS_SCHEMA
    assert set(table["study_id"]) == {"a", "b", "c"}
    assert dict(zip(table["study_id"], table["split"])) == {"a": "train", "b": "val", "c": "test"}
    with pytest.raises(ValueError, match="lacks column"):
        build_variants(reports.drop("findings"), splits, seed=3, progress=False)
