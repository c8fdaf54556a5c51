"""CSV / XML dataset layouts: IU X-ray, OpenI XML, CheXpert (+ Plus), PadChest, generic manifest.

Small generated fixtures check placement, strays and the catalog accounting for each layout;
the shared_data tests run the same adapters on the real metadata files (pixels of IU, CheXpert
and PadChest are not available offline, so those images are quarantined as not found).
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_assets.config import IngestParams, ManifestColumns
from cxr_assets.ingest.catalog import accounting, catalog_from_listing, scan_layout
from cxr_assets.ingest.layouts import detect_layout, get_layout
from tests.ingest.conftest import needs_shared

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
IU_REPORTS = SHARED / "iu_xray" / "indiana_reports.csv"
IU_PROJECTIONS = SHARED / "iu_xray" / "indiana_projections.csv"
OPENI_DIR = SHARED / "iu_xray" / "openi_xml_sample"
CHEXPERT_CSV = SHARED / "public_metadata" / "chexpert_train.csv.gz"
PADCHEST_CSV = SHARED / "public_metadata" / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"
COVID_DIR = SHARED / "images" / "covid_chestxray_2020-04"
COVID_CSV = COVID_DIR / "metadata_licensed_xray.csv"

_serial = itertools.count(1)  # every fixture image gets distinct pixels (the catalog de-duplicates)


def write_image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = next(_serial)
    pixels = np.full((12, 16), n % 251, np.uint8)
    pixels[0, 0] = n // 251
    Image.fromarray(pixels).save(path)
    return path


def write_csv(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.lstrip())
    return path


def listing_of(layout: str, raw: Path, **options):
    return get_layout(layout).list_studies(raw, IngestParams(layout=layout, **options))


def catalogue(listing, **kw):
    result = catalog_from_listing(listing, progress=False, **kw)
    books = accounting(result)
    assert books["balanced"], books
    assert books["inputs"] == listing.n_inputs
    return result, {(Path(r["path"]).name, r["reason"]) for r in result.quarantine.iter_rows(named=True)}


def by_id(listing) -> dict:
    return {s.study_id: s for s in listing.studies}


# --- IU X-ray (Kaggle) -----------------------------------------------------------------------------

@pytest.fixture
def iu_dir(tmp_path) -> Path:
    raw = tmp_path / "iu"
    write_csv(raw / "indiana_reports.csv", """
uid,MeSH,Problems,image,indication,comparison,findings,impression
1,normal,normal,PA,Cough.,None.,Lungs are clear.,Normal chest.
2,x,x,PA,,,Heart is enlarged.,Cardiomegaly.
3,x,x,PA,,,No effusion.,Normal.
,x,x,PA,,,Orphan report.,Normal.
""")
    write_csv(raw / "indiana_projections.csv", """
uid,filename,projection
1,1_IM-0001-4001.dcm.png,Frontal
1,1_IM-0001-3001.dcm.png,Lateral
2,2_IM-0002-1001.dcm.png,Frontal
2,2_IM-0002-2001.dcm.png,Lateral
5,5_IM-0005-1001.dcm.png,Frontal
5,,Lateral
""")
    for name in ("1_IM-0001-4001", "1_IM-0001-3001", "2_IM-0002-1001", "5_IM-0005-1001"):
        write_image(raw / "images_normalized" / f"{name}.dcm.png")
    return raw  # 2_IM-0002-2001 is missing on purpose


def test_iu_xray_listing(iu_dir):
    listing = listing_of("iu_xray", iu_dir)
    studies = by_id(listing)
    assert list(studies) == ["CXR1", "CXR2", "CXR3", "CXR5"]
    assert studies["CXR1"].patient_id == "CXR1"
    assert [i.view_hint for i in studies["CXR1"].images] == ["Frontal", "Lateral"]
    assert studies["CXR1"].report.text == (
        "INDICATION: Cough.\nFINDINGS: Lungs are clear.\nIMPRESSION: Normal chest.")
    assert studies["CXR1"].report.origin == f"{iu_dir / 'indiana_reports.csv'}#row=0"
    assert studies["CXR3"].images == [] and studies["CXR5"].report is None
    assert {(s.reason, s.study_id) for s in listing.stray} == {
        ("report row without uid", None), ("projection row without filename", "CXR5")}


def test_iu_xray_catalog(iu_dir):
    result, reasons = catalogue(listing_of("iu_xray", iu_dir))
    assert result.studies["study_id"].to_list() == ["CXR1", "CXR2"]
    assert result.studies["n_images"].to_list() == [2, 1]
    views = dict(zip(result.images["image_id"], result.images["view_position"], strict=True))
    assert views["1_IM-0001-4001.dcm"] == "FRONTAL" and views["1_IM-0001-3001.dcm"] == "LATERAL"
    assert ("2_IM-0002-2001.dcm.png", "image file not found") in reasons
    assert ("5_IM-0005-1001.dcm.png", "study has no report") in reasons
    assert ("indiana_reports.csv#row=2", "study has no valid image") in reasons
    assert ("indiana_reports.csv#row=3", "report row without uid") in reasons
    assert ("indiana_projections.csv#row=5", "projection row without filename") in reasons


# --- OpenI XML -------------------------------------------------------------------------------------

def openi_xml(uid: str | None, images: list[str], sections: dict[str, str]) -> str:
    texts = "".join(f'<AbstractText Label="{k}">{v}</AbstractText>' for k, v in sections.items())
    parents = "".join(f'<parentImage id="{i}"><caption>Xray Chest PA and Lateral</caption></parentImage>'
                      for i in images)
    uid_tag = f'<uId id="{uid}"/>' if uid else ""
    return (f'<?xml version="1.0" encoding="utf-8"?><eCitation><meta type="rr"/>{uid_tag}'
            f"<MedlineCitation><Article><Abstract>{texts}</Abstract></Article></MedlineCitation>"
            f"{parents}</eCitation>")


@pytest.fixture
def openi_dir(tmp_path) -> Path:
    raw = tmp_path / "openi"
    reports = raw / "ecgen-radiology"
    reports.mkdir(parents=True)
    (reports / "1.xml").write_text(openi_xml(
        "CXR1", ["CXR1_1_IM-0001-4001", "CXR1_1_IM-0001-3001"],
        {"COMPARISON": "None.", "FINDINGS": "Lungs are clear.", "IMPRESSION": "Normal chest."}))
    (reports / "2.xml").write_text(openi_xml(None, ["CXR2_1_IM-0002-1001"], {"IMPRESSION": "Normal."}))
    (reports / "3.xml").write_text("<eCitation><uId id='CXR3'/><Abstract>")  # truncated download
    (reports / "4.xml").write_text(openi_xml("CXR4", ["CXR4_1_IM-0004-1001"], {"FINDINGS": "  "}))
    write_image(raw / "NLMCXR_png" / "CXR1_1_IM-0001-4001.png")
    write_image(raw / "NLMCXR_png" / "CXR1_1_IM-0001-3001.jpg")  # a JPG copy is accepted too
    write_image(raw / "NLMCXR_png" / "CXR4_1_IM-0004-1001.png")
    return raw  # CXR2's image is missing


def test_openi_listing(openi_dir):
    listing = listing_of("openi_xml", openi_dir)
    studies = by_id(listing)
    assert list(studies) == ["CXR1", "CXR2", "CXR4"]  # CXR2 named after its file: no <uId>
    assert [i.path.name for i in studies["CXR1"].images] == [
        "CXR1_1_IM-0001-4001.png", "CXR1_1_IM-0001-3001.jpg"]
    assert studies["CXR1"].report.text == (
        "COMPARISON: None.\nFINDINGS: Lungs are clear.\nIMPRESSION: Normal chest.")
    assert studies["CXR1"].report.origin == str(openi_dir / "ecgen-radiology" / "1.xml")
    assert studies["CXR4"].report is None
    reasons = {Path(s.path).name: s.reason for s in listing.stray}
    assert "not a readable OpenI XML file" in reasons["3.xml"]
    assert "no AbstractText sections" in reasons["4.xml"]


def test_openi_catalog(openi_dir):
    result, reasons = catalogue(listing_of("openi_xml", openi_dir))
    assert result.studies["study_id"].to_list() == ["CXR1"]
    assert result.studies["n_images"].to_list() == [2]
    assert ("CXR2_1_IM-0002-1001.png", "image file not found") in reasons
    assert ("CXR4_1_IM-0004-1001.png", "study has no report") in reasons
    assert {name for name, _ in reasons} >= {"3.xml", "4.xml"}


# --- CheXpert (+ CheXpert Plus) ---------------------------------------------------------------------

CHEXPERT_HEADER = "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Cardiomegaly"


@pytest.fixture
def chexpert_dir(tmp_path) -> Path:
    raw = tmp_path / "CheXpert-v1.0-small"  # paths in the CSV start with this folder's name
    write_csv(raw / "train.csv", CHEXPERT_HEADER + """
CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,1.0,
CheXpert-v1.0-small/train/patient00001/study1/view2_lateral.jpg,Female,68,Lateral,,1.0,
CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg,Male,50,Frontal,PA,,1.0
CheXpert-v1.0-small/train/odd.jpg,Male,50,Frontal,PA,,1.0
""")
    write_image(raw / "train/patient00001/study1/view1_frontal.jpg")
    write_image(raw / "train/patient00001/study1/view2_lateral.jpg")
    return raw  # patient00002's image is missing


@pytest.fixture
def chexpert_plus(tmp_path) -> Path:
    # No section_history / section_technique columns: releases differ, missing ones are skipped.
    return write_csv(tmp_path / "df_chexpert_plus_240401.csv", """
path_to_image,frontal_lateral,ap_pa,report,section_findings,section_impression
train/patient00001/study1/view1_frontal.jpg,Frontal,AP,full text,Lungs are clear.,No acute disease.
train/patient00001/study1/view2_lateral.jpg,Lateral,,full text,Lungs are clear.,No acute disease.
train/patient00002/study1/view1_frontal.jpg,Frontal,PA,,,
train/patient00003/study2/view1_frontal.jpg,Frontal,PA,Only the report column.,,
""")


def test_chexpert_without_reports(chexpert_dir):
    listing = listing_of("chexpert", chexpert_dir)
    studies = by_id(listing)
    assert list(studies) == ["patient00001-study1", "patient00002-study1"]
    first = studies["patient00001-study1"]
    assert first.patient_id == "patient00001" and first.report is None
    assert [i.view_hint for i in first.images] == ["AP", "LATERAL"]
    assert first.images[0].path == chexpert_dir / "train/patient00001/study1/view1_frontal.jpg"
    assert first.images[0].image_id == "patient00001-study1-view1_frontal"
    assert any("no reports" in note and "ingest.reports_csv" in note for note in listing.notes)
    assert [s.reason for s in listing.stray] == [
        "image path 'CheXpert-v1.0-small/train/odd.jpg' has no patientNNNNN/studyN folders"]
    result, reasons = catalogue(listing)
    assert result.studies.height == 0
    assert ("view1_frontal.jpg", "study has no report") in reasons
    assert ("view1_frontal.jpg", "image file not found") in reasons


def test_chexpert_path_column_only(tmp_path):
    write_csv(tmp_path / "valid.csv", """
Path
CheXpert-v1.0/valid/patient64541/study1/view1_frontal.jpg
""")
    listing = listing_of("chexpert", tmp_path)
    image = listing.studies[0].images[0]
    assert image.view_hint is None
    assert image.path == tmp_path / "CheXpert-v1.0/valid/patient64541/study1/view1_frontal.jpg"


def test_chexpert_with_plus_reports(chexpert_dir, chexpert_plus):
    listing = listing_of("chexpert", chexpert_dir, reports_csv=str(chexpert_plus))
    studies = by_id(listing)
    report = studies["patient00001-study1"].report
    assert report.text == "FINDINGS: Lungs are clear.\nIMPRESSION: No acute disease."
    assert report.origin == f"{chexpert_plus}#row=0"
    assert studies["patient00002-study1"].report.text == ""  # blank row: the catalog says so
    result, reasons = catalogue(listing)
    assert result.studies["study_id"].to_list() == ["patient00001-study1"]
    assert result.images["view_position"].to_list() == ["AP", "LATERAL"]
    assert ("df_chexpert_plus_240401.csv#row=2", "empty report") in reasons


def test_chexpert_plus_alone(tmp_path, chexpert_plus):
    listing = listing_of("chexpert", tmp_path, metadata_csv=chexpert_plus.name)
    studies = by_id(listing)
    assert list(studies) == ["patient00001-study1", "patient00002-study1", "patient00003-study2"]
    assert studies["patient00003-study2"].report.text == "Only the report column."
    assert studies["patient00001-study1"].images[0].path == (
        tmp_path / "train/patient00001/study1/view1_frontal.jpg")


# --- PadChest --------------------------------------------------------------------------------------

@pytest.fixture
def padchest_dir(tmp_path) -> Path:
    raw = tmp_path / "padchest"
    write_csv(raw / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv", """
,ImageID,ImageDir,StudyID,PatientID,Projection,Report,Labels
0,a1.png,0,S1,P1,PA, sin hallazg patolog .,['normal']
1,a2.png,1,S1,P1,L, sin hallazg patolog .,['normal']
2,b1.png,0,S2,P2,AP_horizontal,cardiomegali .,['cardiomegaly']
3,c1.png,0,S3,P3,PA,,[]
4,c2.png,0,S3,P3,L,derram pleural .,['pleural effusion']
5,c3.png,0,S3,P3,L,otro informe .,[]
6,,0,S4,P4,PA,sin hallazg .,[]
""")
    for rel in ("0/a1.png", "1/a2.png", "0/c1.png", "0/c2.png", "0/c3.png"):
        write_image(raw / rel)
    return raw  # b1.png is missing


def test_padchest_listing_and_catalog(padchest_dir):
    listing = listing_of("padchest", padchest_dir)
    studies = by_id(listing)
    assert list(studies) == ["S1", "S2", "S3"]
    assert [i.path.relative_to(padchest_dir).as_posix() for i in studies["S1"].images] == [
        "0/a1.png", "1/a2.png"]
    assert studies["S3"].report.text == "derram pleural ."  # first non-blank row
    assert studies["S3"].report.origin.endswith("#row=4")
    assert any("1 studies have rows with differing reports" in n for n in listing.notes)
    assert [(s.study_id, s.reason) for s in listing.stray] == [("S4", "row without ImageID")]
    result, reasons = catalogue(listing)
    assert result.studies["study_id"].to_list() == ["S1", "S3"]
    assert result.studies["patient_id"].to_list() == ["P1", "P3"]
    assert sorted(result.images["view_position"].to_list()) == ["LATERAL", "LATERAL", "LATERAL", "PA", "PA"]
    assert ("b1.png", "image file not found") in reasons
    assert ("PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv#row=2", "study has no valid image") in reasons
    # require_images=false keeps S2 for its report
    result, _ = catalogue(listing, require_images=False)
    assert result.studies["study_id"].to_list() == ["S1", "S2", "S3"]


# --- generic CSV manifest ---------------------------------------------------------------------------

@pytest.fixture
def manifest_dir(tmp_path) -> Path:
    raw = tmp_path / "manifest"
    write_csv(raw / "manifest.csv", """
image_path,report,exam,pid,view
img/a.png,FINDINGS: Clear lungs.,E1,P1,PA
img/b.png,FINDINGS: Clear lungs.,E1,P1,LATERAL
img/missing.png,IMPRESSION: Effusion.,E2,P2,AP
,IMPRESSION: No image.,E3,P3,PA
img/c.png,,E4,P4,PA
img/d.png,IMPRESSION: Something else.,E4,P4,PA
""")
    for name in ("a", "b", "c", "d"):
        write_image(raw / "img" / f"{name}.png")
    return raw


def test_manifest_one_study_per_row(manifest_dir):
    listing = listing_of("csv_manifest", manifest_dir)
    assert [s.study_id for s in listing.studies] == ["row0", "row1", "row2", "row4", "row5"]
    assert [(s.path.endswith("#row=3"), s.reason) for s in listing.stray] == [
        (True, "empty image path cell (column 'image_path')")]
    result, reasons = catalogue(listing, phi_policy="allow")
    assert result.studies["study_id"].to_list() == ["row0", "row1", "row5"]
    assert ("missing.png", "image file not found") in reasons
    assert ("manifest.csv#row=4", "empty report") in reasons
    assert ("c.png", "study report unusable: empty report") in reasons


def test_manifest_grouped_by_study(manifest_dir):
    columns = ManifestColumns(study_id="exam", patient_id="pid", view="view")
    listing = listing_of("csv_manifest", manifest_dir, columns=columns)
    studies = by_id(listing)
    assert list(studies) == ["E1", "E2", "E4"]
    assert [i.path.name for i in studies["E1"].images] == ["a.png", "b.png"]
    assert studies["E4"].report.text == "IMPRESSION: Something else."  # first non-blank
    assert studies["E4"].patient_id == "P4"
    assert not any("differing report texts" in n for n in listing.notes)
    result, _ = catalogue(listing, phi_policy="allow")
    assert result.studies["study_id"].to_list() == ["E1", "E4"]
    same = ManifestColumns(study_id="exam", patient_id="exam")  # one column, two roles
    assert by_id(listing_of("csv_manifest", manifest_dir, columns=same))["E1"].patient_id == "E1"
    assert result.studies["n_images"].to_list() == [2, 2]


def test_manifest_missing_columns_names_everything(manifest_dir):
    columns = ManifestColumns(report_text="clinical notes")
    with pytest.raises(ValueError) as error:
        listing_of("csv_manifest", manifest_dir, columns=columns)
    message = str(error.value)
    assert "manifest.csv" in message and "'clinical notes'" in message
    assert "ingest.columns.report_text" in message and "'image_path'" in message


# --- detection -------------------------------------------------------------------------------------

def test_detect_each_fixture(iu_dir, openi_dir, chexpert_dir, padchest_dir, manifest_dir, tmp_path):
    expected = {iu_dir: "iu_xray", openi_dir: "openi_xml", chexpert_dir: "chexpert",
                padchest_dir: "padchest", manifest_dir: "csv_manifest"}
    for folder, layout in expected.items():
        assert detect_layout(folder)[0] == layout, folder
    assert detect_layout(chexpert_dir.parent)[0] == "chexpert"  # the CheXpert-v1.0* folder inside
    flat = tmp_path / "flat_xml"  # OpenI XML files directly in raw_dir
    flat.mkdir()
    (flat / "7.xml").write_text(openi_xml("CXR7", [], {"IMPRESSION": "Normal."}))
    assert detect_layout(flat)[0] == "openi_xml"


# --- real metadata files (../shared/data) -----------------------------------------------------------

def _quarantine_reasons(result) -> set[str]:
    return set(result.quarantine["reason"])


@pytest.mark.shared_data
@needs_shared(IU_REPORTS, IU_PROJECTIONS)
def test_real_iu_kaggle_csvs(tmp_path):
    raw = tmp_path / "iu"
    raw.mkdir()
    for source in (IU_REPORTS, IU_PROJECTIONS):
        (raw / source.name).symlink_to(source)
    assert detect_layout(raw)[0] == "iu_xray"
    result = scan_layout(raw, "iu_xray", source="iu", progress=False,
                         options=IngestParams(require_images=False))
    books = accounting(result)
    assert books["balanced"] and books["inputs"] == 3251 + 6303
    # No IU pixels offline: every image is "not found"; 19 reports have no text in any section.
    assert result.quarantine.filter(result.quarantine["reason"] == "image file not found").height == 6303
    assert _quarantine_reasons(result) == {"image file not found", "empty report"}
    assert result.studies.height == 3251 - 19


@pytest.mark.shared_data
@needs_shared(OPENI_DIR / "ecgen-radiology" / "1008.xml")
def test_real_openi_xml_sample():
    assert detect_layout(OPENI_DIR)[0] == "openi_xml"
    listing = listing_of("openi_xml", OPENI_DIR, require_images=False)
    assert len(listing.studies) == 300 and listing.stray == []
    result = scan_layout(OPENI_DIR, "openi_xml", source="openi", progress=False,
                         options=IngestParams(require_images=False))
    assert accounting(result)["balanced"]
    # 9 of the 300 reports list no <parentImage>; the others keep their report.
    no_image = sum(1 for s in listing.studies if not s.images)
    assert result.studies.height == 300 - no_image
    assert _quarantine_reasons(result) <= {"image file not found", "study has no valid image"}


@pytest.mark.shared_data
@needs_shared(CHEXPERT_CSV)
def test_real_chexpert_train_csv(tmp_path):
    start = time.perf_counter()
    listing = listing_of("chexpert", tmp_path, metadata_csv=str(CHEXPERT_CSV))
    seconds = time.perf_counter() - start
    assert sum(len(s.images) for s in listing.studies) == 223414 and listing.stray == []
    assert len(listing.studies) == 187641
    assert seconds < 60, f"CheXpert listing took {seconds:.1f} s"
    options = IngestParams(metadata_csv=str(CHEXPERT_CSV), require_images=False, max_studies=2000)
    result = scan_layout(tmp_path, "chexpert", source="chexpert", progress=False, options=options)
    books = accounting(result)
    assert books["balanced"] and books["catalogued"] == 0  # v1 has no reports, no pixels here
    assert _quarantine_reasons(result) == {"image file not found"}
    assert any("no reports" in note for note in result.notes)


@pytest.mark.shared_data
@needs_shared(PADCHEST_CSV)
def test_real_padchest_csv():
    start = time.perf_counter()
    listing = listing_of("padchest", PADCHEST_CSV.parent)
    seconds = time.perf_counter() - start
    assert sum(len(s.images) for s in listing.studies) == 160861 and listing.stray == []
    assert len(listing.studies) == 109931
    assert seconds < 60, f"PadChest listing took {seconds:.1f} s"
    options = IngestParams(require_images=False, max_studies=2000)
    result = scan_layout(PADCHEST_CSV.parent, "padchest", source="padchest", progress=False,
                         options=options)
    books = accounting(result)
    assert books["balanced"] and result.studies.height == 2000  # report-only studies kept
    assert _quarantine_reasons(result) == {"image file not found"}


@pytest.mark.shared_data
@needs_shared(COVID_CSV)
def test_real_covid_manifest_with_images():
    columns = ManifestColumns(image_path="filename", report_text="clinical notes",
                              patient_id="Patientid", view="view")
    # Public, de-identified case reports; some notes carry dates, which phi_policy auto
    # (refuse, for a generic manifest) would quarantine.
    options = IngestParams(metadata_csv=COVID_CSV.name, images_root="images", columns=columns,
                           phi_policy="allow")
    result = scan_layout(COVID_DIR, "csv_manifest", source="covid", progress=False, options=options)
    assert accounting(result) == {"inputs": 56, "catalogued": 56, "quarantined": 0, "balanced": True}
    assert result.studies.height == 28 and result.images.height == 28
    assert set(result.images["image_format"]) == {"jpeg", "png"}
    assert set(result.images["view_position"]) == {"PA", "LATERAL"}
