"""Tests for the synthetic demo dataset: layout, DICOM validity, determinism, image signal
and report heterogeneity."""

from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
)

from cxr_assets.demo import FINDINGS, DemoSummary, generate_demo_dataset
from cxr_assets.demo.generate import _plan

DCM_RE = re.compile(r"^files/p(\d\d)/p(\d{8})/s(\d{8})/([0-9.]+)\.dcm$")
TXT_RE = re.compile(r"^files/p(\d\d)/p(\d{8})/s(\d{8})\.txt$")


def _labels(out: Path) -> dict[str, dict]:
    with (out / "demo_labels.csv").open(encoding="utf-8") as handle:
        return {row["study_id"]: row for row in csv.DictReader(handle)}


def _report(out: Path, row: dict) -> str:
    pid = row["patient_id"]
    return (out / "files" / f"p{pid[:2]}" / f"p{pid}" / f"s{row['study_id']}.txt").read_text(
        encoding="utf-8"
    )


def _all_files(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, DemoSummary]:
    out = tmp_path_factory.mktemp("demo_small")
    return out, generate_demo_dataset(out, n_studies=12, seed=7, image_size=64, progress=False)


@pytest.fixture(scope="module")
def medium(tmp_path_factory) -> tuple[Path, DemoSummary]:
    out = tmp_path_factory.mktemp("demo_medium")
    return out, generate_demo_dataset(out, n_studies=60, seed=11, image_size=64, progress=False)


# --- layout --------------------------------------------------------------------------------


def test_layout_matches_mimic_pattern(small):
    out, summary = small
    labels = _labels(out)
    assert summary.labels_csv == out / "demo_labels.csv"
    assert summary.n_studies == 12 == len(labels)
    header = (out / "demo_labels.csv").read_text(encoding="utf-8").splitlines()[0]
    assert header == "study_id,patient_id,institution,style,findings"

    dicoms, reports = [], []
    for path in _all_files(out / "files"):
        rel = path.relative_to(out).as_posix()
        if m := DCM_RE.match(rel):
            assert m.group(1) == m.group(2)[:2], rel
            dicoms.append(m)
        elif m := TXT_RE.match(rel):
            assert m.group(1) == m.group(2)[:2], rel
            reports.append(m)
        else:
            pytest.fail(f"unexpected file in demo tree: {rel}")
    assert len(dicoms) == summary.n_images
    assert summary.n_patients == len({m.group(2) for m in reports})

    report_studies = {(m.group(2), m.group(3)) for m in reports}
    image_studies = {(m.group(2), m.group(3)) for m in dicoms}
    label_studies = {(row["patient_id"], sid) for sid, row in labels.items()}
    # Every study has a report and at least one image, and the ground truth lists exactly them.
    assert report_studies == image_studies == label_studies


def test_patients_have_multiple_studies(medium):
    out, summary = medium
    per_patient = Counter(row["patient_id"] for row in _labels(out).values())
    assert summary.n_patients == len(per_patient) < summary.n_studies
    assert max(per_patient.values()) > 1
    assert set(per_patient.values()) <= {1, 2, 3}


def test_dicom_files_are_valid_and_consistent(small):
    out, _ = small
    for path in (out / "files").rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
        assert pixels.shape == (ds.Rows, ds.Columns)
        assert pixels.dtype == (np.uint8 if ds.BitsStored == 8 else np.uint16)
        assert ds.BitsAllocated == (8 if ds.BitsStored == 8 else 16)
        assert int(pixels.max()) < 2**ds.BitsStored and pixels.std() > 0
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.SOPInstanceUID == path.stem == ds.file_meta.MediaStorageSOPInstanceUID
        expected_class = {
            "CR": ComputedRadiographyImageStorage,
            "DX": DigitalXRayImageStorageForPresentation,
        }
        assert ds.SOPClassUID == expected_class[ds.Modality]
        patient = path.parent.parent.name[1:]
        assert ds.PatientID == patient and str(ds.PatientName) == f"DEMO^{patient}"
        assert ds.StudyID == path.parent.name[1:]
        assert ds.BodyPartExamined == "CHEST"
        assert ds.ViewPosition in {"PA", "AP", "LL", "LATERAL"}
        assert len(ds.PixelSpacing) == 2 and float(ds.PixelSpacing[0]) > 0
        assert re.fullmatch(r"\d{8}", ds.StudyDate) and ds.StudyDescription
        assert len(ds.StudyInstanceUID) <= 64 and ds.StudyInstanceUID.startswith("2.25.")


def test_header_fields_vary(medium):
    out, _ = medium
    seen = {key: set() for key in ("photometric", "modality", "view", "bits", "rescale", "window")}
    for path in (out / "files").rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        seen["photometric"].add(ds.PhotometricInterpretation)
        seen["modality"].add(ds.Modality)
        seen["view"].add("LAT" if ds.ViewPosition in ("LL", "LATERAL") else ds.ViewPosition)
        seen["bits"].add(int(ds.BitsStored))
        seen["rescale"].add("RescaleSlope" in ds)
        seen["window"].add("WindowCenter" in ds)
    assert seen["photometric"] == {"MONOCHROME1", "MONOCHROME2"}
    assert seen["modality"] == {"CR", "DX"}
    assert seen["view"] == {"PA", "AP", "LAT"}
    assert len(seen["bits"]) >= 3
    assert seen["rescale"] == {True, False} and seen["window"] == {True, False}


# --- determinism ---------------------------------------------------------------------------


def test_same_seed_is_byte_identical_and_other_seed_differs(small, tmp_path):
    out, _ = small
    again = tmp_path / "again"
    generate_demo_dataset(again, n_studies=12, seed=7, image_size=64, progress=False)
    first, second = _all_files(out), _all_files(again)
    assert [p.relative_to(out) for p in first] == [p.relative_to(again) for p in second]
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes(), a.relative_to(out)

    other = tmp_path / "other"
    generate_demo_dataset(other, n_studies=12, seed=8, image_size=64, progress=False)
    assert (other / "demo_labels.csv").read_bytes() != (out / "demo_labels.csv").read_bytes()
    assert {p.name for p in (other / "files").rglob("*.dcm")}.isdisjoint({p.name for p in first})


def test_worker_processes_write_the_same_files(tmp_path):
    from cxr_assets.demo.generate import MIN_STUDIES_PER_WORKER

    n = 2 * MIN_STUDIES_PER_WORKER  # enough for two processes
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    generate_demo_dataset(serial, n_studies=n, seed=5, image_size=32, progress=False)
    summary = generate_demo_dataset(parallel, n_studies=n, seed=5, image_size=32,
                                    progress=False, workers=2)
    first, second = _all_files(serial), _all_files(parallel)
    assert summary.n_studies == n and summary.n_images == len(list(parallel.rglob("*.dcm")))
    assert [p.relative_to(serial) for p in first] == [p.relative_to(parallel) for p in second]
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes(), a.relative_to(serial)


def test_rerun_replaces_previous_demo_and_refuses_foreign_folder(tmp_path):
    out = tmp_path / "demo"
    generate_demo_dataset(out, n_studies=6, seed=1, image_size=48, progress=False)
    summary = generate_demo_dataset(out, n_studies=4, seed=2, image_size=48, progress=False)
    assert len(list((out / "files").rglob("*.txt"))) == 4 == summary.n_studies

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.md").write_text("mine")
    with pytest.raises(ValueError, match="notes.md"):
        generate_demo_dataset(foreign, n_studies=4, progress=False)
    with pytest.raises(ValueError, match="n_studies"):
        generate_demo_dataset(tmp_path / "bad", n_studies=0, progress=False)
    with pytest.raises(ValueError, match="views_per_study_max"):
        generate_demo_dataset(tmp_path / "bad", n_studies=3, views_per_study_max=5, progress=False)


# --- ground truth and image signal ---------------------------------------------------------


def test_finding_vocabulary_and_prevalence():
    assert FINDINGS[-1] == "no_finding" and len(FINDINGS) == 10
    studies = _plan(3000, seed=7, n_institutions=3, views_per_study_max=2)
    counts = Counter(code for s in studies for code in s.findings.codes)
    shares = {code: counts[code] / len(studies) for code in FINDINGS}
    assert 0.18 <= shares["no_finding"] <= 0.32, shares
    for code in FINDINGS[:-1]:
        assert 0.04 <= shares[code] <= 0.27, (code, shares)
    # no_finding is exclusive; other findings co-occur.
    assert all(
        s.findings.codes == ("no_finding",) for s in studies if "no_finding" in s.findings.codes
    )
    assert any(len(s.findings.codes) > 1 for s in studies)


def _display(ds: pydicom.Dataset) -> np.ndarray:
    """Pixels as bright = dense, scaled to [0, 1] by robust percentiles."""
    pixels = ds.pixel_array.astype(np.float64)
    pixels = pixels * float(getattr(ds, "RescaleSlope", 1.0)) + float(
        getattr(ds, "RescaleIntercept", 0.0)
    )
    if ds.PhotometricInterpretation == "MONOCHROME1":
        pixels = -pixels
    lo, hi = np.percentile(pixels, [1, 99])
    return (pixels - lo) / (hi - lo)


def _box_mean(img: np.ndarray, x0: float, x1: float, y0: float, y1: float) -> float:
    """Mean over a box given in phantom units (half the shorter side, centred; x to image right)."""
    rows, cols = img.shape
    unit = (min(rows, cols) - 1) / 2
    cs = slice(int((cols - 1) / 2 + x0 * unit), int((cols - 1) / 2 + x1 * unit) + 1)
    rs = slice(int((rows - 1) / 2 + y0 * unit), int((rows - 1) / 2 + y1 * unit) + 1)
    return float(img[rs, cs].mean())


def _frontal_images(out: Path):
    labels = _labels(out)
    for path in sorted((out / "files").rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        if ds.ViewPosition in ("PA", "AP"):
            yield labels[path.parent.name[1:]]["findings"].split(";"), _display(ds)


def test_heart_region_brighter_with_cardiomegaly(medium):
    out, _ = medium
    groups: dict[bool, list[float]] = {True: [], False: []}
    for codes, img in _frontal_images(out):
        if "cardiomegaly" in codes or codes == ["no_finding"]:
            # Lateral to a normal heart's left border, inside an enlarged one.
            groups["cardiomegaly" in codes].append(_box_mean(img, 0.36, 0.50, 0.20, 0.40))
    assert len(groups[True]) >= 5 and len(groups[False]) >= 5
    assert np.mean(groups[True]) > np.mean(groups[False]) + 0.15


def test_effusion_side_has_brighter_base(medium):
    out, _ = medium
    diffs = []
    for codes, img in _frontal_images(out):
        left, right = "pleural_effusion_left" in codes, "pleural_effusion_right" in codes
        if left != right:
            # Patient left is the image right on frontal views.
            base_left = _box_mean(img, 0.45, 0.65, 0.25, 0.55)
            base_right = _box_mean(img, -0.65, -0.45, 0.25, 0.55)
            diffs.append(base_left - base_right if left else base_right - base_left)
    assert len(diffs) >= 5
    assert np.mean(diffs) > 0.05 and np.mean(np.array(diffs) > 0) >= 0.8


# --- reports -------------------------------------------------------------------------------

MENTIONS = {
    "cardiomegaly": r"cardiomeg|enlarg|\bCM\b",
    "pleural_effusion_left": r"effusion|\beffs?\b",
    "pleural_effusion_right": r"effusion|\beffs?\b",
    "pneumothorax_left": r"pneumothora|\bptx\b",
    "pneumothorax_right": r"pneumothora|\bptx\b",
    "consolidation": r"consolidat|consol\.|opacit|\bopac\b|pneumonia|\bPNA\b|infiltrate",
    "edema": r"edema",
    "nodule": r"nodul|\bnod\.",
    "support_devices": r"tube|\bETT\b|\bNGT\b|PICC|\bCVC\b|catheter|pacemaker|pacer|\bPPM\b|devices",
    "no_finding": r"no acute|no active|no radiographic evidence|normal|\bNAD\b|neg chest|nl CXR",
}
SIDES = {
    "left": r"\bleft\b|\bL\b|\blt\b|bilateral|\bb/l\b|bilat",
    "right": r"\bright\b|\bR\b|\brt\b|bilateral|\bb/l\b|bilat",
}
DEVICE_WORDS = (
    r"PICC|\bCVC\b|pacemaker|pacer|\bPPM\b|\bETT\b|endotracheal|\bNGT?\b|NG tube|enteric|catheter"
)


def test_reports_mention_every_ground_truth_finding(medium):
    out, _ = medium
    for row in _labels(out).values():
        text = _report(out, row)
        assert text.strip() and text.endswith("\n")
        text.encode("ascii")  # plain text, no stray characters
        codes = row["findings"].split(";")
        for code in codes:
            assert re.search(MENTIONS[code], text, re.IGNORECASE), (code, text)
            if code.startswith(("pleural_effusion_", "pneumothorax_")):
                assert re.search(SIDES[code.rsplit("_", 1)[1]], text, re.IGNORECASE), (code, text)
        # Absent findings are never described as present.
        if "cardiomegaly" not in codes:
            assert not re.search(r"cardiomeg|enlarg|\bCM\b", text), text
        if "support_devices" not in codes:
            assert not re.search(DEVICE_WORDS, text), text


def test_report_styles_are_heterogeneous(medium):
    out, _ = medium
    rows = list(_labels(out).values())
    styles = Counter(row["style"] for row in rows)
    assert set(styles) == {"templated", "impression_only", "narrative", "terse"}, styles
    assert len({row["institution"] for row in rows}) == 3

    texts = {style: [_report(out, r) for r in rows if r["style"] == style] for style in styles}
    assert all(
        not re.search(r"^\s*findings", t, re.IGNORECASE | re.MULTILINE)
        for t in texts["impression_only"]
    )
    assert all(re.search(r"findings", t, re.IGNORECASE) for t in texts["templated"])
    abbreviations = (
        r"\bPTX\b|\beff\b|b/l|\bCM\b|c/w|w/o|s/p|\bETT\b|\bNGT\b|PICC|CP angle|\bnl\b|CXR"
    )
    assert all(re.search(abbreviations, t) for t in texts["terse"])

    joined = "\n".join(_report(out, r) for r in rows)
    assert re.search(r"\bno pneumothorax\b|\bno ptx\b", joined, re.IGNORECASE)  # negation
    assert re.search(r"possible|may represent|cannot be excluded|likely|\?", joined)  # hedging
    assert "___" in joined and "XXXX" in joined  # both de-identification conventions
    assert re.search(r"\b(small|moderate|large|mild|severe)\b", joined, re.IGNORECASE)
    assert len({_report(out, r).split("\n")[0] for r in rows}) > len(rows) // 2


def test_sample_reports_are_the_reports_the_demo_writes(small):
    """`sample_reports` (calibration of encode path int8_smooth, ablation proxies) gives the
    demo's report texts without writing images, in the demo's study order."""
    from cxr_assets.demo.generate import sample_reports

    out, _ = small
    labels = _labels(out)
    written = [_report(out, labels[str(study.study_id)]) for study in _plan(12, 7, 3, 2)]
    assert sample_reports(12, 7) == written
    assert sample_reports(12, 8) != written
