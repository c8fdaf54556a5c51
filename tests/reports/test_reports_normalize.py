"""Meaning-preserving normalisation: whitespace, numbering, de-identification markers."""

from __future__ import annotations

import pytest

from cxr_assets.reports.normalize import DEID_TOKEN, count_deid, normalize_text


def test_deid_spans_become_one_marker():
    text = "Seen by Dr. ___ on [** 2101-01-01 **]. Normal chest x-XXXX. XXXX XXXX."
    out = normalize_text(text)
    assert out == f"Seen by Dr. {DEID_TOKEN} on {DEID_TOKEN}. Normal chest x-{DEID_TOKEN}. {DEID_TOKEN}."
    assert count_deid(text) == 4


def test_numbering_and_whitespace_keep_words():
    text = "1)  Left   effusion.\n\n\n2) No pneumothorax.\t(3) Stable."
    assert normalize_text(text) == "1. Left effusion.\n2. No pneumothorax. 3. Stable."
    assert normalize_text(text, keep_newlines=False) == "1. Left effusion. 2. No pneumothorax. 3. Stable."
    assert normalize_text("Compare (see 1) above.") == "Compare (see 1) above."


def test_rejects_non_text():
    with pytest.raises(TypeError):
        normalize_text(None)
