"""Rule-based CheXpert labeler: conventions, negation / uncertainty scope, reference agreement."""

from __future__ import annotations

import polars as pl
import pytest

from cxr_assets.reports.labeler import CHEXPERT_OBSERVATIONS, label_reports, label_text
from tests.helpers import SHARED_DATA

LABELED = SHARED_DATA / "rules" / "chexpert_labeler" / "labeled_reports.csv"


def _mentioned(text: str) -> dict:
    return {k: v for k, v in label_text(text).items() if v is not None}


def test_interface_columns_types_and_order():
    texts = ["No pneumothorax.", "Large left pleural effusion.", "", None]
    frame = label_reports(texts)
    assert frame.columns == list(CHEXPERT_OBSERVATIONS) and len(CHEXPERT_OBSERVATIONS) == 14
    assert all(dtype == pl.Float64 for dtype in frame.dtypes)
    assert frame.height == 4
    assert frame["Pneumothorax"][0] == 0.0 and frame["Pleural Effusion"][1] == 1.0
    assert frame.row(2) == (None,) * 14 and frame.row(3) == (None,) * 14
    assert label_reports([]).height == 0
    with pytest.raises(TypeError):
        label_reports("one string")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("No edema, effusion or pneumothorax.",
         {"No Finding": 1.0, "Edema": 0.0, "Pleural Effusion": 0.0, "Pneumothorax": 0.0}),
        ("Possible small left effusion.", {"Pleural Effusion": -1.0}),
        ("Pneumothorax cannot be excluded.", {"Pneumothorax": -1.0}),
        ("Cannot exclude pneumonia.", {"Pneumonia": -1.0}),
        ("Pneumothorax has resolved.", {"No Finding": 1.0, "Pneumothorax": 0.0}),
        ("No change in the large right effusion.", {"Pleural Effusion": 1.0}),
        ("No pneumothorax, but there is a small effusion.",
         {"Pneumothorax": 0.0, "Pleural Effusion": 1.0}),
        ("Heart size is normal.", {"No Finding": 1.0, "Cardiomegaly": 0.0}),
        ("The heart is mildly enlarged.", {"Cardiomegaly": 1.0}),
        ("Right lower lobe opacity may represent atelectasis or pneumonia.",
         {"Lung Opacity": 1.0, "Atelectasis": -1.0, "Pneumonia": -1.0}),
        ("Endotracheal tube 4 cm above the carina. No pericardial effusion.",
         {"No Finding": 1.0, "Support Devices": 1.0}),
        ("Healed left rib fracture.", {"Fracture": 1.0}),
        ("Right apical pleural thickening.", {"Pleural Other": 1.0}),
    ],
)
def test_negation_uncertainty_and_lexicon(text, expected):
    assert _mentioned(text) == expected


def test_no_finding_ignores_support_devices_and_needs_no_pathology():
    assert label_text("PICC line in the SVC. Lungs are clear.")["No Finding"] == 1.0
    assert label_text("Small left effusion.")["No Finding"] is None
    assert label_text("Possible pneumonia.")["No Finding"] is None


def test_positive_wins_over_negative_and_uncertain():
    text = "No right effusion. Possible left effusion. Small left effusion is present."
    assert label_text(text)["Pleural Effusion"] == 1.0


@pytest.mark.skipif(not LABELED.is_file(), reason="shared rules data not available")
def test_agrees_with_chexpert_expected_output():
    from benchmarks.bench_reports import mentioned_cell_agreement

    reference = pl.read_csv(LABELED)
    ours = label_reports(reference["Reports"].to_list())
    for observation in CHEXPERT_OBSERVATIONS:
        assert ours[observation].to_list() == reference[observation].cast(pl.Float64).to_list(), observation
    # Counted apart: the labelled cells (each polarity present) and the blanks.
    cells = mentioned_cell_agreement(reference, ours)
    assert cells["mentioned_agree"] == cells["mentioned_cells"] >= 10
    assert cells["blank_agree"] == cells["blank_cells"]
    values = {v for o in CHEXPERT_OBSERVATIONS for v in reference[o].to_list() if v is not None}
    assert {1, 0, -1} <= values, "the reference should exercise positive, negative and uncertain"


def test_mentioned_cell_agreement_is_not_flattered_by_blanks():
    from benchmarks.bench_reports import mentioned_cell_agreement

    reference = pl.DataFrame({o: [None, None, None, 1.0] if o == "Edema" else [None] * 4
                              for o in CHEXPERT_OBSERVATIONS})
    ours = reference.with_columns(pl.lit(None, dtype=pl.Float64).alias("Edema"))
    cells = mentioned_cell_agreement(reference, ours)
    assert (cells["mentioned_agree"], cells["mentioned_cells"]) == (0, 1)
    assert cells["blank_agree"] == cells["blank_cells"] == 4 * len(CHEXPERT_OBSERVATIONS) - 1
