"""`text.baselines.BASELINES`: the one place a baseline text encoder is chosen by name (the
text_encoder evaluation and the model_comparison towers both build through it)."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest

from cxr_assets.config import ComparisonParams, TextEvalParams
from cxr_assets.text.baselines import BASELINES, BaselineSetup, TfidfEncoder, build_baseline


def _literal_names(model, field: str) -> set[str]:
    (literal,) = typing.get_args(model.model_fields[field].annotation)
    return set(typing.get_args(literal))


def test_every_configurable_baseline_is_registered():
    assert _literal_names(TextEvalParams, "baselines") == set(BASELINES)
    assert _literal_names(ComparisonParams, "text_towers") - {"adapted"} <= set(BASELINES)


def test_unknown_name_and_missing_inputs_are_clear_value_errors():
    with pytest.raises(ValueError, match="unknown baseline 'bm25'"):
        build_baseline("bm25", BaselineSetup())
    with pytest.raises(ValueError, match="training pairs"):
        build_baseline("minilm_finetuned", BaselineSetup())
    with pytest.raises(ValueError, match="base model"):
        build_baseline("raw_llm", BaselineSetup())
    with pytest.raises(ValueError, match="raw_llm_tapped needs the adapted encoder's mean taps"):
        build_baseline("raw_llm_tapped", BaselineSetup(base_model=lambda: Path(".")))


def test_raw_llm_tapped_reads_the_adapted_encoders_layers(tiny_dir: Path) -> None:
    from cxr_assets.text.pooling import MeanTaps

    taps = MeanTaps((1, -1), skip_first_token=True)
    encoder = build_baseline("raw_llm_tapped", BaselineSetup(base_model=lambda: tiny_dir,
                                                             mean_taps=taps, max_length=32))
    assert encoder.name == "raw_llm_tapped" and encoder.mean_taps == taps
    assert not encoder.bidirectional and encoder.dim == 2 * encoder.hidden_size


def test_tfidf_is_fitted_on_the_given_corpus_and_the_base_model_is_not_resolved():
    def no_download():
        raise AssertionError("only raw_llm* may resolve the base model")

    setup = BaselineSetup(base_model=no_download, fit_corpus=["no effusion", "small effusion"])
    encoder = build_baseline("tfidf", setup)
    assert isinstance(encoder, TfidfEncoder) and encoder.name == "tfidf"
    assert encoder.encode(["effusion"]).shape == (1, encoder.dim)
