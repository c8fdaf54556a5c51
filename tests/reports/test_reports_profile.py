"""Report style profile: per-report measures, dataset summary and plots."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from PIL import Image

from cxr_assets.reports.profile import (
    ABBREVIATIONS_ANY_CASE,
    ABBREVIATIONS_CASE_SENSITIVE,
    PROFILE_SCHEMA,
    plot_profile,
    profile_reports,
    profile_text,
    summarize_profile,
)
from cxr_assets.reports.sections import split_sections, training_text

IU_CSV = Path(__file__).resolve().parents[3] / "shared" / "data" / "iu_xray" / "indiana_reports.csv"


def _report(study_id, text, source="demo", patient_id=None):
    sections = split_sections(text)
    return {
        "study_id": study_id,
        "patient_id": patient_id or f"p{study_id}",
        "source": source,
        "report_text": text,
        **sections,
        "report_for_training": training_text(sections),
    }


def test_abbreviation_lists_do_not_double_count():
    assert not {a.lower() for a in ABBREVIATIONS_CASE_SENSITIVE} & {
        a.lower() for a in ABBREVIATIONS_ANY_CASE
    }


def test_profile_text_counts():
    text = (
        "PA and AP views. s/p CABG. b/l eff. ETT 5 CM above carina. No PTX. Possible RLL pna, "
        "cannot exclude aspiration. 1. foo 2. bar. XXXX ___ [**Hospital 1**]"
    )
    measures = profile_text(text, findings=text, impression=None)
    # PA, AP, s/p, CABG, b/l, eff, ETT, CM, PTX, RLL, pna
    assert measures["abbreviation_count"] == 11
    assert measures["abbreviation_density"] == pytest.approx(11 / len(text.split()))
    assert measures["hedging_count"] == 2  # possible, cannot exclude
    assert measures["negation_count"] == 1  # No
    assert measures["deid_tokens"] == 3
    assert measures["numbered_list"] is True
    assert (
        measures["has_findings"]
        and not measures["has_impression"]
        and not measures["impression_only"]
    )
    assert measures["n_words"] == len(text.split()) and measures["n_chars"] == len(text)


def test_lowercase_words_are_not_acronyms():
    measures = profile_text("the pa tient had a cap and 5 cm nodule, no effusion", findings="x")
    assert measures["abbreviation_count"] == 0


def test_comparison_and_templated_normal():
    normal = profile_text(
        "The lungs are clear. Heart size is normal. No acute cardiopulmonary process.",
        findings="The lungs are clear. Heart size is normal.",
        impression="No acute cardiopulmonary process.",
    )
    assert normal["templated_normal"] and not normal["comparison_to_prior"]
    narrative = profile_text(
        "Compared to the prior study, the right effusion has increased.",
        findings=None,
        impression="Compared to the prior study, the right effusion has increased.",
    )
    assert narrative["comparison_to_prior"] and not narrative["templated_normal"]
    assert narrative["impression_only"]
    assert profile_text("Effusion.", impression="Effusion.", comparison="Chest x-ray 2010")[
        "comparison_to_prior"
    ]
    assert not profile_text("Effusion.", impression="Effusion.", comparison="None.")[
        "comparison_to_prior"
    ]


def test_profile_and_summary_numbers(tmp_path):
    reports = pl.DataFrame(
        [
            _report("s1", "FINDINGS: Lungs are clear.\nIMPRESSION: Normal chest."),
            _report("s2", "No acute cardiopulmonary process. XXXX."),
            _report("s3", "IMPRESSION: Possible RLL pneumonia.", source="other"),
            _report("s4", "FINDINGS: b/l eff, may be CHF.\nIMPRESSION: CHF.", source="other"),
        ]
    )
    profile = profile_reports(reports)
    assert dict(profile.schema) == PROFILE_SCHEMA
    assert profile["impression_only"].to_list() == [False, True, True, False]
    summary = summarize_profile(profile)
    assert summary["n_reports"] == 4
    assert summary["impression_only_share"] == 0.5
    assert summary["hedging_share"] == 0.5
    assert summary["deid_share"] == 0.25
    assert set(summary["by_source"]) == {"demo", "other"}
    assert summary["by_source"]["other"]["n_reports"] == 2
    assert summary["by_source"]["other"]["impression_only_share"] == 0.5
    assert summary["mean_abbreviation_density"] == pytest.approx(
        float(profile["abbreviation_density"].mean()), abs=1e-4
    )

    plots = plot_profile(profile, tmp_path / "plots")
    assert [p.name for p in plots] == [
        "length_by_source.png",
        "section_mix.png",
        "abbreviation_density.png",
    ]
    for path in plots:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] > 100


def test_profile_requires_training_text():
    with pytest.raises(ValueError, match="report_for_training"):
        profile_reports(pl.DataFrame({"study_id": ["s1"]}))


@pytest.mark.skipif(not IU_CSV.is_file(), reason="shared IU reports not available")
def test_real_iu_profile_is_heterogeneous():
    frame = pl.read_csv(IU_CSV, infer_schema_length=0).head(800)
    rows = []
    for row in frame.iter_rows(named=True):
        parts = [
            f"{c.upper()}: {row[c]}"
            for c in ("indication", "comparison", "findings", "impression")
            if row[c] and row[c].strip()
        ]
        if (
            parts
            and (report := _report(row["uid"], "\n".join(parts), source="iu"))[
                "report_for_training"
            ]
        ):
            rows.append(report)
    summary = summarize_profile(profile_reports(pl.DataFrame(rows)))
    assert 0.05 < summary["impression_only_share"] < 0.25
    assert summary["deid_share"] > 0.2  # IU de-identification writes XXXX
    assert 0.05 < summary["hedging_share"] < 0.5
    assert 0.1 < summary["templated_normal_share"] < 0.8
