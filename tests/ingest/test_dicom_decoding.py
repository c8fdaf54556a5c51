"""Pixel decoding across transfer syntaxes and LUT paths (gaps left by test_ingest_dicom.py).

Already covered there and not repeated here: 8/12/16-bit scaling, MONOCHROME1 inversion of a
generated ramp, window and rescale arithmetic, multi-frame and truncated pixel data, RG1
uncompressed == RG1 JPEG 2000 lossless with the polarity check (MONOCHROME1 decoded so that the
central spine/mediastinum strip is brighter than the two lateral lung strips: robust because
it compares anatomy present on every PA chest film, not absolute levels that depend on the
window), and the SIIM Fake_MONOHR1 copy decoding to the inverted original.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    MPEG2MPML,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

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

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"  # shipped in the wheel


def _edit(path: Path, **tags) -> Path:
    ds = pydicom.dcmread(path)
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.save_as(path)
    return path


def _noise_12bit(rows: int = 48, cols: int = 40) -> np.ndarray:
    # Random values defeat run-length shortcuts, so a codec bug cannot hide in flat areas.
    return np.random.default_rng(3).integers(0, 4096, (rows, cols), dtype=np.uint16)


# -- real files -------------------------------------------------------------------------------


@pytest.mark.shared_data
@needs_shared(RG1_UNCR, RG1_J2KR, SIIM_ORIGINAL, SIIM_FAKE_MONO1)
def test_real_files_use_the_transfer_syntaxes_the_comparisons_rely_on():
    # The equality/inversion tests in test_ingest_dicom.py only prove codec correctness if the
    # pairs really differ in encoding (or only in the photometric tag).
    syntax = {p: pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID
              for p in (RG1_UNCR, RG1_J2KR, SIIM_ORIGINAL, SIIM_FAKE_MONO1)}
    assert syntax[RG1_UNCR] == ExplicitVRLittleEndian and syntax[RG1_J2KR] == JPEG2000Lossless
    assert syntax[SIIM_ORIGINAL] == syntax[SIIM_FAKE_MONO1] == JPEGBaseline8Bit
    original, fake = pydicom.dcmread(SIIM_ORIGINAL), pydicom.dcmread(SIIM_FAKE_MONO1)
    assert original.PixelData == fake.PixelData  # header-edited copy: same JPEG bytes
    assert (original.PhotometricInterpretation, fake.PhotometricInterpretation) == (
        "MONOCHROME2", "MONOCHROME1")


@pytest.mark.shared_data
@needs_shared(SIIM_ORIGINAL)
def test_real_jpeg_baseline_decodes_to_stored_values_over_255():
    # 8-bit MONOCHROME2 without window or rescale: display value = stored / 255 exactly, so any
    # extra contrast stretch or a lossy re-encode would show here.
    image = decode_pixels(SIIM_ORIGINAL)
    raw = pydicom.dcmread(SIIM_ORIGINAL).pixel_array
    assert image.shape == raw.shape == (1024, 1024)
    np.testing.assert_allclose(image, raw / 255.0, atol=1e-6)
    assert read_header(SIIM_ORIGINAL).pixel_spacing == "0.168\\0.168"


# -- lossless codecs, generated ---------------------------------------------------------------


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless], ids=["rle", "j2k"])
def test_lossless_encoders_round_trip_exactly(tmp_path, syntax):
    from pydicom.pixels import get_encoder

    encoder = get_encoder(syntax)
    if not encoder.is_available:
        pytest.skip(f"no {syntax.name} encoder installed ({encoder.missing_dependencies})")
    pixels = _noise_12bit()
    plain = write_dicom(tmp_path / "plain.dcm", pixels, bits_stored=12)
    ds = pydicom.dcmread(plain)
    ds.compress(syntax)  # RLE: pydicom's native encoder; JPEG 2000: pylibjpeg-openjpeg
    ds.save_as(tmp_path / "packed.dcm")
    packed = pydicom.dcmread(tmp_path / "packed.dcm")
    assert packed.file_meta.TransferSyntaxUID == syntax and packed["PixelData"].is_undefined_length
    np.testing.assert_array_equal(packed.pixel_array, pixels)
    np.testing.assert_array_equal(decode_pixels(tmp_path / "packed.dcm"), decode_pixels(plain))
    np.testing.assert_allclose(decode_pixels(plain), pixels / 4095.0, atol=1e-6)


def test_jpeg_ls_lossless_decodes_like_the_uncompressed_original(tmp_path):
    # No JPEG-LS *encoder* is installed (pydicom needs pyjpegls for that; it is not a project
    # dependency), but pylibjpeg-libjpeg decodes JPEG-LS. pydicom ships the same MR slice
    # uncompressed and JPEG-LS lossless; relabelled as a chest DX (decode_pixels refuses MR),
    # both must decode to identical images. The slice is signed 16-bit with a window.
    source = {"plain": PYDICOM_FILES / "MR_small.dcm",
              "jls": PYDICOM_FILES / "MR_small_jpeg_ls_lossless.dcm"}
    if not all(p.is_file() for p in source.values()):
        pytest.skip("pydicom's bundled JPEG-LS test files are not installed")
    decoded = {}
    for name, path in source.items():
        copy = tmp_path / f"{name}.dcm"
        copy.write_bytes(path.read_bytes())
        _edit(copy, Modality="DX", BodyPartExamined="CHEST")
        decoded[name] = decode_pixels(copy)
    assert pydicom.dcmread(tmp_path / "jls.dcm").file_meta.TransferSyntaxUID == JPEGLSLossless
    np.testing.assert_array_equal(decoded["jls"], decoded["plain"])
    assert decoded["plain"].std() > 0.05  # a real image, not a constant


def test_transfer_syntax_without_decoder_is_a_readable_error(tmp_path):
    path = write_dicom(tmp_path / "video.dcm", gradient(8, 8, 255, np.uint8))
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(60)])  # an MPEG-2 start code
    ds["PixelData"].VR = "OB"
    ds.save_as(path)
    with pytest.raises(DicomError, match=rf"^{path}: cannot decode pixels .*MPEG2"):
        decode_pixels(path)


# -- LUTs and bit depth -----------------------------------------------------------------------


def test_garbage_above_bits_stored_is_ignored(tmp_path):
    pixels = _noise_12bit()
    dirty = pixels | (np.random.default_rng(4).integers(0, 16, pixels.shape, dtype=np.uint16) << 12)
    assert (dirty > 4095).any()
    clean = decode_pixels(write_dicom(tmp_path / "clean.dcm", pixels, bits_stored=12))
    np.testing.assert_array_equal(
        decode_pixels(write_dicom(tmp_path / "dirty.dcm", dirty, bits_stored=12)), clean)


def test_voi_lut_sequence_is_applied(tmp_path):
    # A 4-entry VOI LUT (8-bit output) on stored values 0..3; values past the end clamp.
    path = write_dicom(tmp_path / "lut.dcm", np.array([[0, 1, 2, 3, 9]], dtype=np.uint8))
    lut = Dataset()
    lut.add_new("LUTDescriptor", "US", [4, 0, 8])  # both tags have ambiguous VRs: say US
    lut.add_new("LUTData", "US", [0, 51, 102, 255])
    _edit(path, VOILUTSequence=Sequence([lut]))
    np.testing.assert_allclose(decode_pixels(path)[0], [0, 0.2, 0.4, 1.0, 1.0], atol=1e-6)


def test_window_then_monochrome1_inversion(tmp_path):
    # The window works on stored (rescaled) values; inversion comes last, on the display value.
    pixels = np.array([[0, 1000, 2000, 3000, 4095]], dtype=np.uint16)
    kwargs = {"bits_stored": 12, "window": (2000, 2000)}
    mono2 = decode_pixels(write_dicom(tmp_path / "m2.dcm", pixels, "MONOCHROME2", **kwargs))
    mono1 = decode_pixels(write_dicom(tmp_path / "m1.dcm", pixels, "MONOCHROME1", **kwargs))
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)
    assert (mono1[0, 0], mono1[0, -1]) == (1.0, 0.0)


def test_signed_pixels_with_rescale(tmp_path):
    # Signed 12-bit stored values span [-2048, 2047]; with slope 2 / intercept 100 the range is
    # [-3996, 4194], and the display value is linear in it (no window).
    pixels = np.array([[-2048, -1, 0, 2047]], dtype=np.int16)
    path = write_dicom(tmp_path / "s.dcm", pixels, bits_stored=12, rescale=(2.0, 100.0))
    _edit(path, PixelRepresentation=1)
    expected = (pixels.astype(float) + 2048) / 4095
    np.testing.assert_allclose(decode_pixels(path)[0], expected[0], atol=1e-6)


def test_imager_pixel_spacing_is_kept_when_pixel_spacing_is_absent(tmp_path):
    path = write_dicom(tmp_path / "dx.dcm", gradient(4, 4, 255, np.uint8), drop=("PixelSpacing",))
    assert read_header(path).pixel_spacing is None
    _edit(path, ImagerPixelSpacing=[0.15, 0.148])
    assert read_header(path).pixel_spacing == "0.15\\0.148"


@pytest.mark.shared_data
@needs_shared(RG1_J2KR)
def test_large_jpeg2000_decodes_at_half_resolution_for_a_small_cache():
    from cxr_assets.ingest.image_cache import resize_and_pad

    full = decode_pixels(RG1_J2KR)
    half = decode_pixels(RG1_J2KR, target_size=224)
    assert full.shape == (1955, 1841) and half.shape == (978, 921)
    a, b = resize_and_pad(full, 224), resize_and_pad(half, 224)
    # Same image once resized: well under one 8-bit grey level on average, small worst case.
    assert np.abs(a - b).mean() < 1 / 255 and np.abs(a - b).max() < 0.05
    # A target too large for a halved image keeps the full decode.
    assert decode_pixels(RG1_J2KR, target_size=1024).shape == (1955, 1841)
