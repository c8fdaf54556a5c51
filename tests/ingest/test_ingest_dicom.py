"""DICOM header reading and pixel decoding (polarity, bit depth, LUTs) on fixtures and real files."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_assets.ingest.dicom import DicomError, decode_pixels, read_header
from tests.ingest.conftest import (
    RG1_J2KR,
    RG1_UNCR,
    SIIM_FAKE_MONO1,
    SIIM_ORIGINAL,
    gradient,
    needs_shared,
    write_dicom,
)


def test_read_header_fields(tmp_path):
    path = write_dicom(
        tmp_path / "x.dcm",
        gradient(20, 30, 4095, np.uint16),
        "MONOCHROME1",
        12,
        sop_uid="1.2.3.4",
        study_uid="1.2.3",
        view="AP",
    )
    header = read_header(path)
    assert header.path == path
    assert header.sop_instance_uid == "1.2.3.4"
    assert header.study_instance_uid == "1.2.3"
    assert (header.photometric, header.bits_stored) == ("MONOCHROME1", 12)
    assert (header.rows, header.columns) == (20, 30)
    assert (header.modality, header.view_position, header.patient_id) == ("CR", "AP", "anon")
    assert header.pixel_spacing == "0.139\\0.139"
    assert header.number_of_frames == 1


def test_read_header_errors_name_the_file(tmp_path):
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    with pytest.raises(DicomError, match=rf"{empty}: empty file"):
        read_header(empty)
    text = tmp_path / "text.dcm"
    text.write_text("hello, not DICOM\n" * 10)
    with pytest.raises(DicomError, match=rf"{text}: not a DICOM file"):
        read_header(text)
    missing = write_dicom(
        tmp_path / "m.dcm", gradient(4, 4, 255, np.uint8), drop=("StudyInstanceUID",)
    )
    with pytest.raises(DicomError, match="missing required tag.*StudyInstanceUID"):
        read_header(missing)
    with pytest.raises(DicomError, match="file not found"):
        read_header(tmp_path / "absent.dcm")


def test_decode_8bit_monochrome2_scales_to_unit_range(tmp_path):
    path = write_dicom(tmp_path / "a.dcm", gradient(4, 256, 255, np.uint8))
    image = decode_pixels(path)
    assert image.dtype == np.float32 and image.shape == (4, 256)
    assert image[0, 0] == 0.0 and image[0, -1] == 1.0
    np.testing.assert_allclose(image[0], np.arange(256) / 255.0, atol=1e-6)


def test_decode_respects_bits_stored(tmp_path):
    # 12 bits in a 16-bit container: 4095 is full white, not 4095/65535.
    path = write_dicom(
        tmp_path / "a.dcm", np.array([[0, 2048, 4095]], dtype=np.uint16), bits_stored=12
    )
    np.testing.assert_allclose(decode_pixels(path)[0], [0.0, 2048 / 4095, 1.0], atol=1e-6)


def test_decode_16bit(tmp_path):
    path = write_dicom(
        tmp_path / "a.dcm", np.array([[0, 32768, 65535]], dtype=np.uint16), bits_stored=16
    )
    np.testing.assert_allclose(decode_pixels(path)[0], [0.0, 32768 / 65535, 1.0], atol=1e-6)


def test_monochrome1_is_inverted(tmp_path):
    pixels = gradient(8, 16, 4095, np.uint16)
    mono2 = decode_pixels(write_dicom(tmp_path / "m2.dcm", pixels, "MONOCHROME2", 12))
    mono1 = decode_pixels(write_dicom(tmp_path / "m1.dcm", pixels, "MONOCHROME1", 12))
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)
    assert mono1[0, 0] == 1.0  # stored 0 in MONOCHROME1 is white (dense)


def test_window_is_applied(tmp_path):
    # Window [1000, 3000] of a 12-bit image: below -> black, above -> white, linear between.
    pixels = np.array([[0, 500, 2000, 3500, 4095]], dtype=np.uint16)
    image = decode_pixels(
        write_dicom(tmp_path / "w.dcm", pixels, bits_stored=12, window=(2000, 2000))
    )
    assert image[0, 0] == 0.0 and image[0, 1] == 0.0
    assert image[0, 3] == 1.0 and image[0, 4] == 1.0
    assert image[0, 2] == pytest.approx(0.5, abs=0.01)


def test_rescale_is_applied_without_changing_display(tmp_path):
    pixels = gradient(4, 64, 4095, np.uint16)
    plain = decode_pixels(write_dicom(tmp_path / "p.dcm", pixels, bits_stored=12))
    rescaled = decode_pixels(
        write_dicom(tmp_path / "r.dcm", pixels, bits_stored=12, rescale=(2.0, -1024.0))
    )
    np.testing.assert_allclose(rescaled, plain, atol=1e-6)
    # The window is in rescaled units (2 * stored - 1024), so rescale must come first.
    pixels = np.array([[0, 500, 512, 540, 4095]], dtype=np.uint16)
    windowed = decode_pixels(
        write_dicom(
            tmp_path / "rw.dcm", pixels, bits_stored=12, rescale=(2.0, -1024.0), window=(0.0, 100.0)
        )
    )
    # DICOM LINEAR window: ((x - (c - 0.5)) / (w - 1) + 0.5), clipped.
    expected = [0.0, (-24 + 0.5) / 99 + 0.5, 0.5 / 99 + 0.5, 1.0, 1.0]
    np.testing.assert_allclose(windowed[0], expected, atol=1e-5)


def test_multiframe_and_bad_pixels_raise(tmp_path):
    frames = np.stack([gradient(4, 4, 255, np.uint8)] * 3)
    path = write_dicom(tmp_path / "mf.dcm", frames, frames=3)
    with pytest.raises(DicomError, match="multi-frame"):
        decode_pixels(path)
    short = write_dicom(
        tmp_path / "short.dcm", gradient(32, 32, 255, np.uint8), truncate_pixels=True
    )
    with pytest.raises(DicomError, match=rf"{short}: cannot decode pixels"):
        decode_pixels(short)


@needs_shared(RG1_UNCR, RG1_J2KR, SIIM_ORIGINAL, SIIM_FAKE_MONO1)
def test_real_headers():
    rg1 = read_header(RG1_UNCR)
    assert (rg1.photometric, rg1.bits_stored, rg1.rows, rg1.columns) == (
        "MONOCHROME1",
        15,
        1955,
        1841,
    )
    assert read_header(RG1_J2KR).study_instance_uid == rg1.study_instance_uid
    siim = read_header(SIIM_ORIGINAL)
    assert (siim.photometric, siim.bits_stored, siim.view_position) == ("MONOCHROME2", 8, "PA")
    assert read_header(SIIM_FAKE_MONO1).photometric == "MONOCHROME1"


@needs_shared(RG1_UNCR, RG1_J2KR)
def test_real_monochrome1_uncompressed_and_jpeg2000_agree_with_bone_bright():
    import pydicom

    uncompressed, j2k = decode_pixels(RG1_UNCR), decode_pixels(RG1_J2KR)
    np.testing.assert_array_equal(uncompressed, j2k)  # lossless JPEG 2000
    raw = pydicom.dcmread(RG1_UNCR).pixel_array.astype(np.float64)
    # MONOCHROME1: high stored values are dark, so the decoded image must anti-correlate.
    assert np.corrcoef(raw.ravel()[::97], uncompressed.ravel()[::97])[0, 1] < -0.9
    rows, cols = uncompressed.shape
    band = slice(rows // 4, 3 * rows // 4)
    spine = uncompressed[band, cols // 2 - cols // 20 : cols // 2 + cols // 20].mean()
    lungs = np.concatenate(
        [
            uncompressed[band, cols // 4 - cols // 20 : cols // 4 + cols // 20].ravel(),
            uncompressed[band, 3 * cols // 4 - cols // 20 : 3 * cols // 4 + cols // 20].ravel(),
        ]
    ).mean()
    assert spine > lungs + 0.1  # mediastinum/spine brighter than the air-filled lungs


@needs_shared(SIIM_ORIGINAL, SIIM_FAKE_MONO1)
def test_real_fake_monochrome1_is_the_inverted_original():
    original, fake = decode_pixels(SIIM_ORIGINAL), decode_pixels(SIIM_FAKE_MONO1)
    np.testing.assert_allclose(fake, 1.0 - original, atol=1e-6)
