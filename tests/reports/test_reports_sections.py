"""Section splitting on header variants and real IU reports; robust report reading; parse_reports."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
import pytest

from cxr_assets.reports.sections import (
    HEADER_SYNONYMS,
    SECTIONS,
    ReportError,
    parse_reports,
    read_report_file,
    split_sections,
)

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
IU_CSV = SHARED / "iu_xray" / "indiana_reports.csv"
NEGBIO = SHARED / "reports_text" / "negbio_examples"


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def _header_words() -> set[str]:
    return {w for names in HEADER_SYNONYMS.values() for n in names for w in _words(n)}


def assert_no_text_lost(text: str, sections: dict) -> None:
    kept = _words(" ".join(v for v in sections.values() if v))
    assert _words(text) - _header_words() <= kept


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "FINDINGS: Lungs are clear.\nIMPRESSION: No acute disease.",
            {"findings": "Lungs are clear.", "impression": "No acute disease."},
        ),
        (
            "Findings - lungs clear\nConclusion - normal",
            {"findings": "lungs clear", "impression": "normal"},
        ),
        (
            "FINDINGS\nLungs clear.\n\nIMPRESSION\nNormal chest.",
            {"findings": "Lungs clear.", "impression": "Normal chest."},
        ),
        (
            "HISTORY: cough.\nCOMPARISON: None.\nTECHNIQUE: PA and lateral.\nFINDINGS: Clear.\nOPINION: Normal.",
            {
                "indication": "cough.",
                "comparison": "None.",
                "technique": "PA and lateral.",
                "findings": "Clear.",
                "impression": "Normal.",
            },
        ),
        (
            "INDICATION: fever. Findings: small left effusion. Impression: effusion.",
            {"indication": "fever.", "findings": "small left effusion.", "impression": "effusion."},
        ),
        (
            "Lungs are clear. Heart normal IMPRESSION: normal",
            {"findings": "Lungs are clear. Heart normal", "impression": "normal"},
        ),
        (
            "The heart is normal.\nCONCLUSION: Normal chest.",
            {"findings": "The heart is normal.", "impression": "Normal chest."},
        ),
        (
            "Clinical history: dyspnea\nReason for exam: rule out CHF\nImpressions: no CHF",
            {"indication": "dyspnea\nrule out CHF", "impression": "no CHF"},
        ),
    ],
)
def test_header_variants(text, expected):
    sections = split_sections(text)
    assert set(sections) == set(SECTIONS)
    for key in SECTIONS:
        assert sections[key] == expected.get(key), key
    assert_no_text_lost(text, sections)


def test_no_header_is_impression_only():
    text = "No acute cardiopulmonary process.\nStable cardiomegaly."
    assert split_sections(text) == {
        "findings": None,
        "impression": text,
        "indication": None,
        "comparison": None,
        "technique": None,
    }


def test_numbered_list_stays_in_its_section():
    text = "FINDINGS: see below.\nIMPRESSION:\n1. Right lower lobe pneumonia.\n2. Small effusion.\n3. No PTX."
    sections = split_sections(text)
    assert (
        sections["impression"] == "1. Right lower lobe pneumonia.\n2. Small effusion.\n3. No PTX."
    )
    assert sections["findings"] == "see below."


def test_mimic_style_report_keeps_title_and_unknown_headings():
    text = (
        "                                 FINAL REPORT\n"
        " EXAMINATION:  CHEST (PA AND LAT)\n\n INDICATION:  ___ with cough\n\n"
        " COMPARISON:  ___\n\n FINDINGS: \n\n The lungs are clear.\n\n"
        " IMPRESSION: \n\n No acute process.\n\n NOTIFICATION:  Discussed with Dr. ___.\n"
    )
    sections = split_sections(text)
    assert sections["technique"] == "FINAL REPORT\nCHEST (PA AND LAT)"
    assert sections["indication"] == "___ with cough"
    assert sections["findings"] == "The lungs are clear."
    assert sections["impression"].startswith("No acute process.")
    assert (
        "NOTIFICATION:  Discussed with Dr. ___." in sections["impression"]
    )  # unknown heading kept
    assert_no_text_lost(text, sections)


def test_history_word_inside_a_sentence_is_not_a_header():
    text = "IMPRESSION: Patient with history of CHF. Comparison is made to prior."
    sections = split_sections(text)
    assert sections["impression"] == "Patient with history of CHF. Comparison is made to prior."
    assert sections["indication"] is None and sections["comparison"] is None


def test_split_sections_rejects_non_text():
    with pytest.raises(TypeError):
        split_sections(None)  # type: ignore[arg-type]


def read_report(path: Path) -> str:
    return read_report_file(path)[0]


def test_read_report_encodings_and_errors(tmp_path):
    utf8 = tmp_path / "u.txt"
    utf8.write_bytes("\ufeffIMPRESSION: 5 mm nodule \u2013 stable\r\n".encode("utf-8"))
    assert read_report(utf8) == "IMPRESSION: 5 mm nodule \u2013 stable\n"
    cp1252 = tmp_path / "c.txt"
    cp1252.write_bytes("IMPRESSION: effusion \u2013 r\u00e9solved".encode("cp1252"))
    assert read_report(cp1252) == "IMPRESSION: effusion \u2013 r\u00e9solved"
    latin = tmp_path / "l.txt"
    latin.write_bytes(b"IMPRESSION: odd byte \x81 here")  # 0x81 is undefined in cp1252
    assert read_report(latin) == "IMPRESSION: odd byte \x81 here"

    empty = tmp_path / "e.txt"
    empty.write_text("  \n\n ")
    with pytest.raises(ReportError, match=rf"{empty}: empty report"):
        read_report(empty)
    binary = tmp_path / "b.txt"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ReportError, match=rf"{binary}: binary content"):
        read_report(binary)
    with pytest.raises(ReportError, match="not found"):
        read_report(tmp_path / "absent.txt")


def test_parse_reports_table_and_quarantine():
    good = "INDICATION: cough\nFINDINGS: Lungs  are\nclear.\nIMPRESSION: Normal."
    studies = pl.DataFrame(
        {
            "study_id": ["s1", "s2", "s3"],
            "patient_id": ["p1", "p1", "p3"],
            "report_origin": ["s1.txt", "s2.txt", "s4.txt"],
            "report_text": [good, "No acute disease.", "INDICATION: cough\nCOMPARISON: none"],
            "source": ["demo"] * 3,
        }
    )
    reports, quarantine = parse_reports(studies, progress=False)
    assert reports.columns == [
        "study_id",
        "patient_id",
        "source",
        "report_text",
        "findings",
        "impression",
        "indication",
        "comparison",
        "technique",
        "report_for_training",
        "n_chars",
    ]
    first = reports.row(0, named=True)
    assert first["report_text"] == good
    assert first["report_for_training"] == "Lungs are clear. Normal."
    assert first["n_chars"] == len("Lungs are clear. Normal.")
    assert first["indication"] == "cough"
    assert reports.row(1, named=True)["impression"] == "No acute disease."
    assert reports.row(1, named=True)["findings"] is None
    reasons = dict(zip(quarantine["study_id"], quarantine["reason"]))
    assert reasons == {"s3": "no findings or impression text"}
    assert quarantine["path"].to_list() == ["s4.txt"]
    assert set(quarantine["stage"]) == {"report_texts"}


@pytest.mark.skipif(not IU_CSV.is_file(), reason="shared IU reports not available")
def test_real_iu_reports_round_trip():
    """Rebuild IU reports with headers from the CSV columns; the splitter must recover the columns."""
    columns = ["indication", "comparison", "findings", "impression"]
    frame = pl.read_csv(IU_CSV, infer_schema_length=0)
    total = exact = impression_only = 0
    for row in frame.iter_rows(named=True):
        parts = [f"{c.upper()}: {row[c]}" for c in columns if row[c] and row[c].strip()]
        if not parts:
            continue
        text = "\n".join(parts)
        sections = split_sections(text)
        total += 1
        impression_only += sections["findings"] is None and sections["impression"] is not None
        expected = {
            c: " ".join(row[c].split()) if row[c] and row[c].strip() else None for c in columns
        }
        got = {c: " ".join(sections[c].split()) if sections[c] else None for c in columns}
        exact += expected == got
        assert_no_text_lost(text, sections)
    assert total > 3000
    assert exact / total > 0.99
    assert 0.08 < impression_only / total < 0.2  # IU has ~400-500 impression-only notes


@pytest.mark.skipif(not NEGBIO.is_dir(), reason="shared NegBio examples not available")
def test_real_lowercase_reports():
    sections = split_sections(read_report(NEGBIO / "00000086.txt"))
    assert sections["findings"].startswith("pa and lat cxr at 7:34 p.m.")
    assert sections["impression"].startswith("stable chest.")
    sections = split_sections(read_report(NEGBIO / "00019248.txt"))
    assert "mild cardiomegaly." in sections["findings"] and sections["impression"] is None
