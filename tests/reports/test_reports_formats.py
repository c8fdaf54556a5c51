"""Report sources other than MIMIC-style .txt: OpenI XML, IU CSV, CheXpert Plus columns."""

from __future__ import annotations

import polars as pl
import pytest

from cxr_assets.reports.sections import (
    REPORT_TEXTS_SCHEMA,
    ReportError,
    openi_xml_text,
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
    """The IU reports CSV through the one IU reader, its columns as headed text, then split like
    any catalogued report (what ingesting the iu_xray layout does)."""
    from cxr_assets.ingest.layouts.iu_xray import SECTIONS, read_reports_csv

    frame = read_reports_csv(IU_CSV)
    ids = [f"CXR{uid}" for uid in frame["uid"].to_list()]
    texts = [text_from_columns(**{s: row[s] for s in SECTIONS})
             for row in frame.iter_rows(named=True)]
    studies = pl.DataFrame({"study_id": ids, "patient_id": ids, "report_text": texts,
                            "report_origin": [str(IU_CSV)] * len(ids)})
    table, quarantine = parse_reports(studies, progress=False)
    assert dict(table.schema) == REPORT_TEXTS_SCHEMA
    assert 3000 < table.height <= 3251 and table.height + quarantine.height == frame.height
    impression_only = (table["findings"].is_null() & table["impression"].is_not_null()).mean()
    assert 0.1 < impression_only < 0.25


def test_iu_reader_names_the_missing_column(tmp_path):
    from cxr_assets.ingest.layouts.iu_xray import read_reports_csv

    csv = tmp_path / "indiana_reports.csv"
    csv.write_text("uid,findings\n1,Clear.\n")
    with pytest.raises(ValueError, match=r"indiana_reports.csv: missing column\(s\) 'impression'"):
        read_reports_csv(csv)
    csv.write_text("uid,findings,impression\n007,Clear.,\n")
    frame = read_reports_csv(csv)
    assert frame["uid"].to_list() == ["007"] and frame["impression"].to_list() == [None]
