"""Report sources other than MIMIC-style .txt: OpenI XML, IU CSV, CheXpert Plus columns."""

from __future__ import annotations

import polars as pl
import pytest

from cxr_assets.reports.sections import (
    REPORT_TEXTS_SCHEMA,
    ReportError,
    openi_xml_text,
    parse_iu_csv,
    parse_reports,
    split_sections,
    text_from_columns,
)
from tests.helpers import SHARED_DATA

XML_DIR = SHARED_DATA / "iu_xray" / "openi_xml_sample" / "ecgen-radiology"
IU_CSV = SHARED_DATA / "iu_xray" / "indiana_reports.csv"

XML = """<eCitation><MedlineCitation><Article><Abstract>
<AbstractText Label="COMPARISON">None.</AbstractText>
<AbstractText Label="INDICATION">XXXX-year-old male, cough.</AbstractText>
<AbstractText Label="FINDINGS">Heart size normal. No   effusion.</AbstractText>
<AbstractText Label="IMPRESSION">No acute disease.</AbstractText>
</Abstract></Article></MedlineCitation></eCitation>"""


def test_openi_xml_sections():
    sections = split_sections(openi_xml_text(XML))
    assert sections["findings"] == "Heart size normal. No effusion."
    assert sections["impression"] == "No acute disease."
    assert sections["indication"].startswith("XXXX-year-old")
    with pytest.raises(ReportError, match="not a valid OpenI XML"):
        openi_xml_text("<open>", "r.xml")
    with pytest.raises(ReportError, match="no AbstractText"):
        openi_xml_text("<a></a>", "r.xml")


def test_chexpert_plus_columns():
    text = text_from_columns(section_history="Shortness of breath.", section_findings="Lungs clear.",
                             section_impression="Normal.", section_comparison=None)
    sections = split_sections(text)
    assert (sections["indication"], sections["findings"], sections["impression"]) == (
        "Shortness of breath.", "Lungs clear.", "Normal.")


@pytest.mark.skipif(not XML_DIR.is_dir(), reason="shared OpenI XML sample not available")
def test_real_openi_xml_through_parse_reports():
    files = sorted(XML_DIR.glob("*.xml"))[:30]
    texts = [openi_xml_text(f.read_bytes(), str(f)) for f in files]
    studies = pl.DataFrame({"study_id": [f.stem for f in files], "patient_id": [f.stem for f in files],
                            "report_origin": [str(f) for f in files], "report_text": texts})
    reports, quarantine = parse_reports(studies, progress=False)
    assert reports.height + quarantine.height == 30 and reports.height >= 25
    assert reports["impression"].is_not_null().mean() > 0.9
    assert reports["report_text"].str.contains("IMPRESSION:").all()


@pytest.mark.skipif(not IU_CSV.is_file(), reason="shared IU data not available")
def test_iu_csv_table():
    table = parse_iu_csv(IU_CSV)
    assert dict(table.schema) == REPORT_TEXTS_SCHEMA
    assert 3000 < table.height <= 3251
    impression_only = (table["findings"].is_null() & table["impression"].is_not_null()).mean()
    assert 0.1 < impression_only < 0.25
