"""DICOM-tree layout (PACS export): grouping by StudyInstanceUID, report sources, pseudonyms,
quarantine reasons and accounting on a generated tree with every kind of defect."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import BasicTextSRStorage, ExplicitVRLittleEndian, generate_uid

from cxr_assets.config import IngestParams
from cxr_assets.ingest.catalog import accounting, catalog_from_listing
from cxr_assets.ingest.layouts import detect_layout
from cxr_assets.ingest.layouts.dicom_tree import detect, list_studies
from cxr_assets.ingest.phi import pseudonymize
from tests.ingest.conftest import gradient, write_dicom

SALT = "unit-salt"
PATIENT_1, PATIENT_2 = "PATIENT-ALPHA-77", "PATIENT-BRAVO-88"
STUDY_A, STUDY_B = "1.2.840.99999.7.1001", "1.2.840.99999.7.2002"  # sidecar / CSV report
STUDY_C, STUDY_D = "1.2.840.99999.7.3003", "1.2.840.99999.7.4004"  # SR / ImageComments report
RAW_IDS = (PATIENT_1, PATIENT_2, STUDY_A, STUDY_B, STUDY_C, STUDY_D)


def _code(meaning: str) -> Dataset:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "99", "99TEST", meaning
    return code


def _image(path: Path, study: str, patient: str, view: str | None = None, frames: int = 1,
           seed: int = 0, **tags) -> Path:
    """A CR chest image without file extension, plus any extra header tags."""
    pixels = gradient(16, 16, 4095, np.uint16) + np.uint16(seed)
    if frames > 1:
        pixels = np.stack([pixels] * frames)
    write_dicom(path, pixels, bits_stored=12, study_uid=study, view=view, frames=frames)
    ds = dcmread(path)
    ds.PatientID, ds.BodyPartExamined = patient, "CHEST"
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.save_as(path)
    return path


def _text_item(name: str, value: str) -> Dataset:
    item = Dataset()
    item.RelationshipType, item.ValueType = "CONTAINS", "TEXT"
    item.ConceptNameCodeSequence = Sequence([_code(name)])
    item.TextValue = value
    return item


def _container(name: str, children: list[Dataset]) -> Dataset:
    item = Dataset()
    item.RelationshipType, item.ValueType = "CONTAINS", "CONTAINER"
    item.ConceptNameCodeSequence = Sequence([_code(name)])
    item.ContinuityOfContent = "SEPARATE"
    item.ContentSequence = Sequence(children)
    return item


def write_sr(path: Path, study: str, patient: str, content: list[Dataset],
             body_part: str | None = None) -> Path:
    """A minimal Basic Text SR document: a titled root CONTAINER holding `content`."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = BasicTextSRStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = BasicTextSRStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
    ds.PatientID, ds.Modality = patient, "SR"
    if body_part:
        ds.BodyPartExamined = body_part
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.ConceptNameCodeSequence = Sequence([_code("Chest X-ray report")])
    ds.ContentSequence = Sequence(content)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


SR_CONTENT = [
    _container("Findings", [_text_item("Finding", "The lungs are clear. No effusion.")]),
    _text_item("Impression", "No acute cardiopulmonary disease."),
]


@pytest.fixture
def pacs_tree(tmp_path) -> Path:
    """Four studies of two patients in PATIENT/STUDY/SERIES/IMGnnnn folders, with defects."""
    raw = tmp_path / "pacs"
    a, b = raw / "PAT0001" / "STU0001", raw / "PAT0002" / "STU0001"
    c, d = raw / "PAT0002" / "STU0002", raw / "PAT0001" / "STU0002"
    # Study A (patient 1): PA by ViewPosition, lateral by ViewCodeSequence, a CT slice;
    # sidecar report named by AccessionNumber; an SR that loses to the sidecar.
    _image(a / "SER0001" / "IMG0001", STUDY_A, PATIENT_1, view="PA", AccessionNumber="ACC1001")
    _image(a / "SER0002" / "IMG0001", STUDY_A, PATIENT_1, seed=1, AccessionNumber="ACC1001",
           ViewCodeSequence=Sequence([_code("lateral")]))
    _image(a / "SER0003" / "IMG0001", STUDY_A, PATIENT_1, view="PA", seed=2, Modality="CT")
    (a / "ACC1001.txt").write_text("FINDINGS: Heart size normal.\nIMPRESSION: Normal chest.\n")
    write_sr(a / "SER0099" / "SR0001", STUDY_A, PATIENT_1, SR_CONTENT)
    # Study B (patient 2): AP from SeriesDescription, a hand radiograph; report from the CSV.
    _image(b / "SER0001" / "IMG0001", STUDY_B, PATIENT_2, seed=3,
           SeriesDescription="CHEST AP PORTABLE")
    _image(b / "SER0002" / "IMG0001", STUDY_B, PATIENT_2, view="PA", seed=4,
           BodyPartExamined="HAND")
    pl.DataFrame({
        "StudyInstanceUID": [STUDY_A, STUDY_B, "1.2.840.99999.7.9999"],
        "report": ["IMPRESSION: loses to the sidecar.", "FINDINGS: Line tip in the SVC.",
                   "IMPRESSION: a study of another batch."],
    }).write_csv(raw / "reports.csv")
    # Study C (patient 2): an SR report; a multi-frame image; an abdominal SR; an empty SR.
    _image(c / "SER0001" / "IMG0001", STUDY_C, PATIENT_2, view="PA", seed=5)
    _image(c / "SER0002" / "IMG0001", STUDY_C, PATIENT_2, view="PA", seed=6, frames=3)
    write_sr(c / "SER0099" / "SR0001", STUDY_C, PATIENT_2, SR_CONTENT)
    write_sr(c / "SER0099" / "SR0002", STUDY_C, PATIENT_2, SR_CONTENT, body_part="ABDOMEN")
    write_sr(raw / "misc" / "SR_EMPTY", STUDY_C, PATIENT_2, [])
    # Study D (patient 1): the report is in the image's ImageComments.
    _image(d / "SER0001" / "IMG0001", STUDY_D, PATIENT_1, view="AP", seed=7,
           ImageComments="FINDINGS: Mild cardiomegaly. IMPRESSION: No edema.")
    # Defects.
    good = a / "SER0001" / "IMG0001"
    (raw / "misc").mkdir(exist_ok=True)
    shutil.copy(good, raw / "misc" / "IMG_COPY")  # same SOPInstanceUID
    (raw / "misc" / "TRUNCATED").write_bytes(good.read_bytes()[:300])
    (raw / "misc" / "EMPTY").write_bytes(b"")
    (raw / "misc" / "noise.bin").write_bytes(np.random.default_rng(0).bytes(2048))
    (raw / "misc" / "orphan.txt").write_text("IMPRESSION: which study is this?\n")
    (raw / "DICOMDIR").write_bytes(good.read_bytes())
    (raw / ".DS_Store").write_bytes(b"\x00hidden")  # hidden: not an input
    (raw / ".trash").mkdir()
    (raw / ".trash" / "IMG9999").write_bytes(good.read_bytes())
    return raw


def _listing(raw: Path, **options):
    return list_studies(raw, IngestParams(phi_salt=SALT, reports_csv="reports.csv", **options))


def _reasons(result, root: Path) -> dict[str, str]:
    return {str(Path(path).relative_to(root)): reason
            for path, reason in result.quarantine.select("path", "reason").iter_rows()}


def test_pacs_tree_catalog(pacs_tree):
    listing = _listing(pacs_tree)
    assert listing.layout == "dicom_tree"
    result = catalog_from_listing(listing, source="pacs", progress=False, phi_policy="strip")

    study = {uid: pseudonymize(uid, SALT, "study") for uid in (STUDY_A, STUDY_B, STUDY_C, STUDY_D)}
    assert sorted(result.studies["study_id"]) == sorted(study.values())
    patients = dict(result.studies.select("study_id", "patient_id").iter_rows())
    assert patients[study[STUDY_A]] == patients[study[STUDY_D]] == pseudonymize(PATIENT_1, SALT)
    assert patients[study[STUDY_B]] == patients[study[STUDY_C]] == pseudonymize(PATIENT_2, SALT)

    origins = dict(result.studies.select("study_id", "report_origin").iter_rows())
    assert origins[study[STUDY_A]] == str(pacs_tree / "PAT0001" / "STU0001" / "ACC1001.txt")
    assert origins[study[STUDY_B]] == f"{pacs_tree / 'reports.csv'}#row=2"
    assert origins[study[STUDY_C]] == str(pacs_tree / "PAT0002" / "STU0002" / "SER0099" / "SR0001")
    assert origins[study[STUDY_D]].endswith("IMG0001#ImageComments")
    texts = dict(result.reports.select("study_id", "report_text").iter_rows())
    assert texts[study[STUDY_B]] == "FINDINGS: Line tip in the SVC."
    assert texts[study[STUDY_C]] == (
        "FINDINGS: The lungs are clear. No effusion.\nIMPRESSION: No acute cardiopulmonary disease."
    )
    assert texts[study[STUDY_D]].startswith("FINDINGS: Mild cardiomegaly.")

    # Views from ViewPosition, ViewCodeSequence CodeMeaning, and SeriesDescription.
    views = {
        str(Path(p).relative_to(pacs_tree)): v
        for p, v in result.images.select("image_path", "view_position").iter_rows()
    }
    assert views == {
        "PAT0001/STU0001/SER0001/IMG0001": "PA",
        "PAT0001/STU0001/SER0002/IMG0001": "LATERAL",
        "PAT0002/STU0001/SER0001/IMG0001": "AP",
        "PAT0002/STU0002/SER0001/IMG0001": "PA",
        "PAT0001/STU0002/SER0001/IMG0001": "AP",
    }

    reasons = _reasons(result, pacs_tree)
    assert reasons.pop("PAT0001/STU0001/SER0003/IMG0001") == "not a radiograph (Modality CT)"
    hand, multi_frame = "PAT0002/STU0001/SER0002/IMG0001", "PAT0002/STU0002/SER0002/IMG0001"
    assert reasons.pop(hand) == "not a chest image (BodyPartExamined HAND)"
    assert reasons.pop(multi_frame) == "multi-frame image (3 frames) not supported"
    assert reasons.pop("PAT0001/STU0001/SER0099/SR0001") == (
        "structured report not used: the study's report comes from its sidecar file")
    assert reasons.pop("PAT0002/STU0002/SER0099/SR0002") == (
        "structured report is not a chest report (BodyPartExamined ABDOMEN)")
    assert reasons.pop("misc/SR_EMPTY") == "structured report has no text content"
    assert reasons.pop("misc/IMG_COPY").startswith("duplicate")  # same SOPInstanceUID
    assert reasons.pop("misc/EMPTY") == "empty file (0 bytes)"
    assert reasons.pop("misc/noise.bin") == "not a DICOM file"
    assert reasons.pop("misc/orphan.txt") == "report file matches no study in the tree"
    assert reasons.pop("DICOMDIR") == "DICOMDIR index file (not an image)"
    truncated = reasons.pop("misc/TRUNCATED")
    assert truncated and not truncated.startswith(str(pacs_tree))  # readable, path not repeated
    assert reasons == {}  # hidden files are not inputs; nothing else was quarantined

    # Every non-hidden file is one input (the reports CSV counts by its used rows instead).
    files = [f for d, dirs, names in os.walk(pacs_tree) if "/." not in d
             for f in names if not f.startswith(".") and f != "reports.csv"]
    assert listing.n_inputs == len(files) + 2  # + the CSV row and the ImageComments report
    assert accounting(result) == {"inputs": listing.n_inputs, "catalogued": 9,
                                  "quarantined": 12, "balanced": True}
    assert any("1 of 3 rows used" in note for note in listing.notes)

    # Raw PatientID / StudyInstanceUID never reach a table.
    for name in ("studies", "images", "reports", "quarantine"):
        table = getattr(result, name)
        cells = [str(v) for column in table.columns for v in table[column].to_list()]
        leaked = [raw for raw in RAW_IDS if any(raw in cell for cell in cells)]
        assert leaked == [], f"raw identifiers in the {name} table"


def test_headers_are_read_once_by_the_adapter(pacs_tree, monkeypatch):
    from cxr_assets.ingest import images

    listing = _listing(pacs_tree)
    assert all(ref.header is not None for s in listing.studies for ref in s.images)

    def no_second_read(path):
        raise AssertionError(f"header of {path} read twice")

    monkeypatch.setattr(images, "read_image_header", no_second_read)
    catalog_from_listing(listing, progress=False, phi_policy="allow")


def test_sidecar_by_study_uid_and_precedence(tmp_path):
    raw = tmp_path / "tree"
    _image(raw / "1" / "IMG", STUDY_A, PATIENT_1, view="PA", AccessionNumber="ACC7")
    (raw / "notes").mkdir()
    (raw / "notes" / f"{STUDY_A}.txt").write_text("IMPRESSION: by study uid.\n")
    (raw / "ACC7.txt").write_text("IMPRESSION: by accession.\n")
    listing = list_studies(raw, IngestParams(phi_salt=SALT))
    (only,) = listing.studies
    assert only.report.path == raw / "ACC7.txt"  # the first in walk order (sorted, top down)
    assert [s.reason for s in listing.stray] == ["another report file of its study was used"]
    assert listing.stray[0].study_id == only.study_id


def test_patient_id_missing_and_study_without_report(tmp_path):
    raw = tmp_path / "tree"
    path = _image(raw / "IMG1", STUDY_A, PATIENT_1, view="PA")
    ds = dcmread(path)
    del ds.PatientID
    ds.save_as(path)
    _image(raw / "IMG2", STUDY_B, PATIENT_2, view="PA", seed=1)
    listing = list_studies(raw, IngestParams(phi_salt=SALT))
    by_id = {s.study_id: s for s in listing.studies}
    a, b = by_id[pseudonymize(STUDY_A, SALT, "study")], by_id[pseudonymize(STUDY_B, SALT, "study")]
    assert a.patient_id == pseudonymize(f"unknown-{STUDY_A}", SALT, "pid")
    assert (a.report, b.report) == (None, None)
    result = catalog_from_listing(listing, progress=False)
    assert set(result.quarantine["reason"]) == {"study has no report"}
    assert accounting(result)["balanced"]


def test_image_comment_without_report_headers_is_not_a_report(tmp_path):
    raw = tmp_path / "tree"
    _image(raw / "IMG1", STUDY_A, PATIENT_1, view="PA", ImageComments="PORTABLE, pt supine")
    assert list_studies(raw, IngestParams(phi_salt=SALT)).studies[0].report is None


def test_reports_csv_by_accession_and_bad_columns(tmp_path):
    raw = tmp_path / "tree"
    _image(raw / "IMG1", STUDY_A, PATIENT_1, view="PA", AccessionNumber="ACC55")
    outside = tmp_path / "reports_elsewhere.csv"
    reports = {"AccessionNumber": ["ACC55"], "report_text": ["IMPRESSION: ok."]}
    pl.DataFrame(reports).write_csv(outside)
    listing = list_studies(raw, IngestParams(phi_salt=SALT, reports_csv=str(outside)))
    assert listing.studies[0].report.origin == f"{outside}#row=1"
    assert listing.studies[0].report.text == "IMPRESSION: ok."

    pl.DataFrame({"study": ["x"], "body": ["y"]}).write_csv(outside)
    with pytest.raises(ValueError, match=r"reports_elsewhere\.csv.*found columns: study, body"):
        list_studies(raw, IngestParams(phi_salt=SALT, reports_csv=str(outside)))
    with pytest.raises(FileNotFoundError, match="absent.csv"):
        list_studies(raw, IngestParams(phi_salt=SALT, reports_csv="absent.csv"))


def test_detect(pacs_tree, mimic_tree, tmp_path):
    assert "DICM" in detect(pacs_tree)
    assert detect(mimic_tree) is None
    assert detect_layout(mimic_tree)[0] == "mimic_cxr"
    assert detect_layout(pacs_tree)[0] == "dicom_tree"
    (tmp_path / "text_only").mkdir()
    (tmp_path / "text_only" / "a.txt").write_text("no images here\n")
    assert detect(tmp_path / "text_only") is None
