"""Abbreviation lexicon: detection, expansion, contraction, density."""

from __future__ import annotations

import pytest

from cxr_assets.reports.abbreviations import (
    LEXICON,
    abbreviate,
    abbreviation_density,
    expand,
    find_abbreviations,
)


def test_lexicon_entries_are_unique_and_flagged():
    shorts = [(e.short, e.case_sensitive) for e in LEXICON]
    assert len(shorts) == len(set(shorts))
    assert {e.short for e in LEXICON if e.ambiguous} >= {"PA", "AP", "c/w"}


def test_detection_respects_case_and_boundaries():
    text = "PA and lat views. 5 cm nodule. s/p CABG, no PTX. Capacity w/o change."
    found = [text[a:b] for a, b, _ in find_abbreviations(text)]
    assert found == ["PA", "lat", "s/p", "CABG", "PTX", "w/o"]  # not "cm", not "pa" in Capacity
    assert abbreviation_density(text) == pytest.approx(6 / len(text.split()))
    assert abbreviation_density("") == 0.0


def test_expand_replaces_with_long_forms():
    assert expand("s/p CABG. No PTX. Sm L eff.") == (
        "status post coronary artery bypass graft. No pneumothorax. small L effusion."
    )
    assert expand("Lungs are clear.") == "Lungs are clear."


def test_abbreviate_is_deterministic_and_expand_inverts_it():
    text = "Status post coronary artery bypass graft. No pneumothorax. Small right pleural effusion."
    assert abbreviate(text, seed=1) == abbreviate(text, seed=1)
    full = abbreviate(text, seed=1, rate=1.0)
    assert full == "s/p CABG. No PTX. sm right pleural eff."
    assert expand(full).lower() == text.lower()
    assert abbreviate(text, seed=1, rate=0.0) == text
    assert len({abbreviate(text, seed=s, rate=0.5) for s in range(20)}) > 1
    with pytest.raises(ValueError):
        abbreviate(text, seed=1, rate=2.0)
