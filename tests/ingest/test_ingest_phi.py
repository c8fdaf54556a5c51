"""PHI guard: DICOM identifying tags, PHI patterns in report text, pseudonyms."""

from __future__ import annotations

import csv
import itertools
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from cxr_assets.ingest.phi import (
    PHI_DICOM_TAGS,
    PhiHit,
    dicom_phi_tags,
    find_text_phi,
    is_deidentified,
    mask_text_phi,
    phi_summary,
    pseudonymize,
)

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
IU_CSV = SHARED / "iu_xray" / "indiana_reports.csv"
IU_XML = SHARED / "iu_xray" / "openi_xml_sample" / "ecgen-radiology"
REPORTS_TEXT = SHARED / "reports_text"
COVID_META = SHARED / "images" / "covid_chestxray_2020-04" / "metadata_full_2020-04-21.csv"

# (planted text, kind, the exact PHI substring)
PLANTED = [
    ("Findings discussed with Dr. John Smith at 3 pm.", "name", "John Smith"),
    ("Critical result reported to Dr Jones.", "name", "Jones"),
    ("Called DR. SMITH with the results.", "name", "SMITH"),
    ("Seen by Doctor Alvarez today.", "name", "Alvarez"),
    ("Mr. O'Brien was positioned upright.", "name", "O'Brien"),
    ("Mrs. Anna Lee declined the lateral view.", "name", "Anna Lee"),
    ("Per Ms Chen, no prior films.", "name", "Chen"),
    ("Attending: Mary Ng.", "name", "Mary Ng"),
    ("Electronically signed by Robert Brown MD.", "name", "Robert Brown"),
    ("Dictated by: Alan Turing", "name", "Alan Turing"),
    ("Findings were discussed with Sarah Connor by telephone.", "name", "Sarah Connor"),
    ("Case courtesy of Dr, Chong Keng Sang, Radiopaedia.", "name", "Chong Keng Sang"),
    ("wet read given to dr. house by phone.", "name", "house"),
    ("Wet read given to dr. House by phone.", "name", "House"),
    ("Comparison 01/02/2020.", "date", "01/02/2020"),
    ("Comparison 1/2/20.", "date", "1/2/20"),
    ("Comparison 2020-01-02.", "date", "2020-01-02"),
    ("Comparison 02.01.2020.", "date", "02.01.2020"),
    ("Compared with the study of January 3, 2019.", "date", "January 3, 2019"),
    ("Compared with the study of 3 Jan 2019.", "date", "3 Jan 2019"),
    ("Comparison radiograph dated 11/12 shows a similar effusion.", "date", "11/12"),
    ("Comparison 11/7/ XXXX.", "date", "11/7"),
    ("MRN: 1234567", "mrn", "1234567"),
    ("MR# 123456", "mrn", "123456"),
    ("Outside study 84736251 reviewed.", "mrn", "84736251"),
    ("Reading room (555) 123-4567.", "phone", "(555) 123-4567"),
    ("Page 555-123-4567 with questions.", "phone", "555-123-4567"),
    ("Page 555.123.4567 with questions.", "phone", "555.123.4567"),
    ("Call +1 555 123 4567 with questions.", "phone", "+1 555 123 4567"),
    ("Results sent to jdoe@hospital.org today.", "email", "jdoe@hospital.org"),
    ("SSN 123-45-6789 on the requisition.", "ssn", "123-45-6789"),
]

# Ordinary report language that must not be flagged.
CLEAN = [
    "1. No acute cardiopulmonary disease. 2) Stable cardiomegaly.",
    "PA and lateral views of the chest. A 2.5 cm nodule and a 5 mm nodule.",
    "Compression deformity of T12 and L1. Disc narrowing at T11/12, L4/5 and C5-6.",
    "Portable film at 10:30. Sternotomy in 2010. Lungs 2/3 expanded, on 2/3 of the images.",
    "Grade 2/6 murmur, BP 120/80, pain 5/10, ratio 1:2, 50% stenosis, lines x2.",
    "ICD 786.2, V76.12. Sodium 135, WBC 12.5, count 1,234,567.",
    "Dr. XXXX XXXX was notified at XXXX p.m. Discussed with XXXX. Attending: XXXX.",
    "Prior [**2101-10-12**] reviewed with [**Last Name (NamePattern1) 123**]. Comparison: ___.",
    "The findings were discussed with the referring physician and called to the ED.",
    "Decreased lung volumes. May represent atelectasis. dec 2 breath sounds, apr 3 mm.",
    "UID 1.2.840.10008.5.1.4.1.1.1 and a 1.5 x 2.3 x 4.0 cm mass.",
    "EXAM: DR CHEST PA AND LATERAL. CR CHEST 2 VIEWS. MR SPINE. MS flare.",
]


@pytest.mark.parametrize(("text", "kind", "value"), PLANTED)
def test_each_kind_is_detected_exactly(text, kind, value):
    hits = find_text_phi(text)
    start = text.index(value)
    assert hits == [PhiHit(kind, start, start + len(value))]


@pytest.mark.parametrize("text", CLEAN)
def test_ordinary_report_language_is_not_flagged(text):
    assert find_text_phi(text) == []


def test_masking_replaces_exactly_the_hits():
    text = (
        "Comparison 01/02/2020. No effusion at T12. Discussed with Dr. John Smith, "
        "page 555-123-4567, MRN: 1234567. Lungs clear."
    )
    masked, kinds = mask_text_phi(text, token="<X>")
    assert masked == (
        "Comparison <X>. No effusion at T12. Discussed with Dr. <X>, "
        "page <X>, MRN: <X>. Lungs clear."
    )
    assert kinds == ["date", "mrn", "name", "phone"]
    assert mask_text_phi("Heart size normal.") == ("Heart size normal.", [])


def test_hits_do_not_overlap_and_prefer_the_specific_kind():
    hits = find_text_phi("SSN 123-45-6789, phone 555-123-4567, MRN: 123-45-6789")
    assert [h.kind for h in hits] == ["ssn", "phone", "ssn"]
    assert all(a.end <= b.start for a, b in itertools.pairwise(hits))


def test_summary_never_contains_the_matched_text():
    text = " ".join(t for t, _, _ in PLANTED)
    _, kinds = mask_text_phi(text)
    assert kinds == sorted({"name", "date", "mrn", "phone", "email", "ssn"})
    summary = phi_summary(kinds)
    assert summary == "report text contains date, email, mrn, name, phone, ssn"
    for _, _, value in PLANTED:
        assert value not in summary
    # A value passed by mistake instead of a kind is still not echoed.
    assert phi_summary(["John Smith", "date", "date"]) == "report text contains date, other"
    assert phi_summary([]) == ""


def _dataset(**values) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def test_dicom_phi_tags_reports_keywords_never_values():
    ds = _dataset(
        PatientName="Doe^Jane",
        PatientID="P0001",
        PatientBirthDate="19400305",
        InstitutionName="General Hospital",
        AccessionNumber="A123456",
        ReferringPhysicianName="Who^Doctor",
        PatientSex="F",
        EthnicGroup="X",
        StudyInstanceUID="1.2.3.4",
        Modality="CR",
    )
    found = dicom_phi_tags(ds)
    assert found == [
        "PatientName",
        "PatientBirthDate",
        "ReferringPhysicianName",
        "InstitutionName",
        "AccessionNumber",
    ]
    assert set(found) <= set(PHI_DICOM_TAGS)
    assert not any(v in " ".join(found) for v in ("Doe", "Jane", "19400305", "General", "A123"))


def test_empty_and_pseudonymous_values_are_not_reported():
    ds = _dataset(
        PatientName="",
        PatientBirthDate="",
        InstitutionName="   ",
        AccessionNumber="",
        OtherPatientIDsSequence=[],
        PatientID="16d7f894",
    )
    assert dicom_phi_tags(ds) == []
    # A PatientName that only repeats PatientID (SIIM-style pseudonym) is not a name.
    assert dicom_phi_tags(_dataset(PatientName="16d7f894", PatientID="16d7f894")) == []
    assert dicom_phi_tags(_dataset(PatientName="16d7f894", PatientID="other")) == ["PatientName"]


def test_dicom_phi_tags_does_not_raise_on_undecodable_values():
    ds = _dataset(PatientID="P1")
    tag = Tag("AccessionNumber")  # wrong VR and odd length: pydicom raises on access
    ds[tag] = RawDataElement(tag, "US", 3, b"\x01\x02\x03", 0, True, True)
    with pytest.raises(Exception):  # noqa: B017 - the precondition this test relies on
        _ = ds.AccessionNumber
    assert dicom_phi_tags(ds) == ["AccessionNumber"]


def test_is_deidentified():
    assert is_deidentified(_dataset(PatientIdentityRemoved="YES"))
    assert is_deidentified(_dataset(DeidentificationMethod="Basic Application Profile"))
    assert not is_deidentified(_dataset(PatientIdentityRemoved="NO"))
    assert not is_deidentified(_dataset(PatientName="Doe^Jane"))


def test_pseudonymize_is_stable_and_salted():
    a = pseudonymize("1234567", salt="s1")
    assert a == pseudonymize("1234567", salt="s1")
    assert a.startswith("pid-") and len(a) == len("pid-") + 16
    assert a != pseudonymize("1234567", salt="s2")
    assert a != pseudonymize("1234568", salt="s1")
    assert pseudonymize("1234567", salt="s1", prefix="study").startswith("study-")
    assert "1234567" not in a
    with pytest.raises(ValueError, match="salt"):
        pseudonymize("1234567", salt="")


def _shared_report_texts() -> dict[str, list[str]]:
    """findings+impression of every de-identified report in ../shared/data, per source."""
    with IU_CSV.open(newline="") as f:
        iu = [f"{r['findings'] or ''}\n{r['impression'] or ''}" for r in csv.DictReader(f)]
    xml = []
    for path in sorted(IU_XML.glob("*.xml")):
        sections = {a.get("Label"): a.text or "" for a in ET.parse(path).iter("AbstractText")}
        xml.append(f"{sections.get('FINDINGS', '')}\n{sections.get('IMPRESSION', '')}")
    plain = [p.read_text() for p in sorted(REPORTS_TEXT.rglob("*.txt"))]
    return {"iu_csv": iu, "iu_xml": xml, "reports_text": plain}


@pytest.mark.shared_data
@pytest.mark.skipif(
    not (IU_CSV.is_file() and IU_XML.is_dir()), reason="../shared/data not available"
)
def test_false_positive_rate_on_deidentified_reports():
    texts = _shared_report_texts()
    assert len(texts["iu_csv"]) > 3000 and len(texts["iu_xml"]) > 0
    for source, reports in texts.items():
        flagged = [t for t in reports if find_text_phi(t)]
        assert len(flagged) < 0.005 * len(reports), (source, len(flagged), len(reports))


@pytest.mark.shared_data
@pytest.mark.skipif(not COVID_META.is_file(), reason="../shared/data not available")
def test_real_credit_lines_with_names_are_caught():
    # Real third-party text with real (public) names: "Case courtesy of Dr Ali ...".
    with COVID_META.open(newline="", encoding="utf-8") as f:
        notes = {r["other notes"] for r in csv.DictReader(f)}
    credited = [n for n in notes if "Dr" in n or "Prof." in n]
    assert len(credited) >= 10
    for note in credited:
        assert "name" in mask_text_phi(note)[1], "a credited name was missed"


def test_role_then_title_masks_the_whole_name():
    text = "IMPRESSION: Normal. Dictated by Dr. Harold Whitfield on 03/14/2021."
    masked, kinds = mask_text_phi(text)
    assert "Harold" not in masked and "Whitfield" not in masked
    assert masked.startswith("IMPRESSION: Normal. Dictated by Dr. [PHI]") and "name" in kinds
