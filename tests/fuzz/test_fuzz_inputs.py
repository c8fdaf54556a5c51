"""Property-based fuzzing of what ingestion reads: report text, DICOM bytes, CSV and XML layouts.

The properties are the contracts the rest of the pipeline relies on:

- report text: split_sections / training_text / parse_reports / label_reports never raise on
  any str and return the documented shapes; decode_report_bytes returns text or raises
  ReportError, nothing else;
- DICOM: valid files (8/12/16 bit, MONOCHROME1/2, RLE) mutated byte-wise make read_header and
  decode_pixels succeed or raise DicomError (naming the file), quickly; through
  catalog_from_listing every mutated file is catalogued or quarantined with a reason;
- CSV / XML layouts: fuzzed cells and documents make list_studies raise a clear ValueError for
  structurally wrong files, and otherwise put every row in a study or a Stray, with the
  catalog's accounting balanced.

Every test is derandomized (same examples on every run, no example database) so CI is
deterministic; example counts are sized for the whole file to run in well under a minute.
"""

from __future__ import annotations

import itertools
import struct
import tempfile
import time
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from cxr_assets.config import IngestParams, ManifestColumns
from cxr_assets.ingest.catalog import accounting, catalog_from_listing
from cxr_assets.ingest.dicom import DicomError, decode_pixels, read_header
from cxr_assets.ingest.layouts import get_layout
from cxr_assets.ingest.listing import ImageRef, LayoutListing, ReportRef, StudyFiles
from cxr_assets.ingest.phi import KINDS, mask_text_phi
from cxr_assets.reports.labeler import CHEXPERT_OBSERVATIONS, PATHOLOGIES, label_reports
from cxr_assets.reports.sections import (
    HEADER_SYNONYMS,
    REPORT_TEXTS_SCHEMA,
    SECTIONS,
    ReportError,
    _find_headers,
    decode_report_bytes,
    parse_reports,
    split_sections,
    training_text,
)
from tests.ingest.conftest import gradient, write_dicom

pytestmark = [
    pytest.mark.timeout(300),  # a hang fails the test instead of stalling CI
    pytest.mark.filterwarnings("ignore::UserWarning"),  # pydicom warns on every odd value
]


def fuzz(max_examples: int):
    return settings(
        max_examples=max_examples, deadline=None, derandomize=True, database=None,
        print_blob=False,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.large_base_example, HealthCheck.filter_too_much],
    )


SLOW_CALL_S = 10.0  # one parse / decode / listing of a tiny input taking longer is a hang


class _Clock:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        elapsed = time.perf_counter() - self.start
        assert elapsed < SLOW_CALL_S, f"took {elapsed:.1f} s"


# === report text ==================================================================================

_HEADER_NAMES = sorted({name for names in HEADER_SYNONYMS.values() for name in names})
_NEGATION_CUES = [
    "no", "not", "without", "free of", "negative for", "no evidence of", "cannot exclude",
    "cannot be excluded", "not ruled out", "may", "possible", "suspicious for", "?", "or",
    "has resolved", "is not seen", "no change in", "not only", "no further", "neither", "nor",
    "but", "however", "although", "which", "rather than", "versus", "vs",
]
_MENTIONS = [
    "effusion", "pleural effusion", "pneumothorax", "cardiomegaly", "heart size is normal",
    "heart is enlarged", "edema", "consolidation", "atelectasis", "fracture", "opacity",
    "nodule", "mass", "widened mediastinum", "pacemaker", "endotracheal tube", "pneumonia",
    "blunting of the costophrenic angle",
]
_ODD = [
    ".", ",", ";", ":", "?", "!", " ", "\n", "\n\n", "\r\n", "\r", "\t", "\x0b", "\x0c", "\x1c",
    "\x85", "\u2028", "\u2029", "\u00a0", "\ufeff", "\x00", "\x1b", "\x7f", "1)", "(2)", "#3",
    "4 -", "___", "XXXX", "[**Name**]", "[**", "**]", "[DEID]", "[PHI]", "\u202e", "\U0001f600",
    "\u0130", "\u00df", "\ufb01",
]
_header = st.builds(
    lambda name, case, sep: case(name) + sep,
    st.sampled_from(_HEADER_NAMES), st.sampled_from([str.upper, str.lower, str.title]),
    st.sampled_from([":", " :", " -", " \u2014 ", "", "\n", ":\n", "--"]),
)
_token = st.one_of(_header, st.sampled_from(_NEGATION_CUES), st.sampled_from(_MENTIONS),
                   st.sampled_from(_ODD), st.text(max_size=10))
_structured = st.builds(lambda parts, sep: sep.join(parts), st.lists(_token, max_size=60),
                        st.sampled_from([" ", "", "\n", ". "]))
_nested_negation = st.builds(
    lambda cues, mentions: " ".join(itertools.chain.from_iterable(zip(cues, mentions))) + ".",
    st.lists(st.sampled_from(_NEGATION_CUES), min_size=1, max_size=25),
    st.lists(st.sampled_from(_MENTIONS), min_size=1, max_size=25),
)


def _huge(unit: st.SearchStrategy[str], low: int, high: int) -> st.SearchStrategy[str]:
    return st.builds(lambda s, n: s * n, unit, st.integers(low, high))


# Huge single lines. label_text is quadratic in the mentions of one clause (40k characters of
# "effusion, " take about 30 s), so its texts stay under ~6k characters; the splitter gets 100k.
_huge_line = _huge(st.one_of(st.sampled_from(_ODD + _MENTIONS + _NEGATION_CUES), _header,
                             st.text(min_size=1, max_size=6)), 200, 4000)
REPORT_TEXT = st.one_of(st.text(), st.text(st.characters(exclude_categories=()), max_size=50),
                        _structured, _nested_negation, _huge_line)
LABEL_TEXT = st.one_of(st.text(), _structured, _nested_negation,
                       _huge(st.sampled_from(_ODD + _MENTIONS + _NEGATION_CUES), 20, 150))


@fuzz(250)
@given(REPORT_TEXT)
def test_split_sections_and_training_text_never_raise(text):
    with _Clock():
        sections = split_sections(text)
        train = training_text(sections)
    assert list(sections) == list(SECTIONS)
    for value in sections.values():
        assert value is None or (isinstance(value, str) and value and value == value.strip())
    assert train is None or (isinstance(train, str) and train and train == " ".join(train.split()))
    if not _find_headers(text):  # no header: the whole text is the impression, nothing else
        assert sections["impression"] == (text.strip() or None)
        assert all(sections[s] is None for s in SECTIONS if s != "impression")
    if train is None:
        assert not (sections["findings"] or "").split() and not (sections["impression"] or "").split()


@fuzz(40)
@given(st.lists(st.one_of(st.none(), REPORT_TEXT), max_size=8))
def test_parse_reports_accounts_for_every_report(texts):
    frame = pl.DataFrame(
        {"study_id": [f"s{i}" for i in range(len(texts))],
         "patient_id": [f"p{i}" for i in range(len(texts))],
         "report_origin": [f"r{i}.txt" for i in range(len(texts))],
         "report_text": texts},
        schema={"study_id": pl.String, "patient_id": pl.String, "report_origin": pl.String,
                "report_text": pl.String},
    )
    report_texts, quarantine = parse_reports(frame, progress=False)
    assert report_texts.schema == pl.Schema(REPORT_TEXTS_SCHEMA)
    assert report_texts.height + quarantine.height == len(texts)
    assert set(report_texts["study_id"]).isdisjoint(quarantine["study_id"])
    assert all(reason for reason in quarantine["reason"])
    assert (report_texts["n_chars"] == report_texts["report_for_training"].str.len_chars()).all()


@fuzz(150)
@given(st.lists(st.one_of(st.none(), LABEL_TEXT), max_size=6))
def test_label_reports_never_raise(texts):
    with _Clock():
        labels = label_reports(texts)
    assert labels.columns == list(CHEXPERT_OBSERVATIONS)
    assert all(dtype == pl.Float64 for dtype in labels.dtypes)
    assert labels.height == len(texts)
    for text, row in zip(texts, labels.iter_rows(named=True), strict=True):
        assert set(row.values()) <= {1.0, 0.0, -1.0, None}
        if text is None or not text.strip():
            assert set(row.values()) == {None}
            continue
        found = any(row[p] in (1.0, -1.0) for p in PATHOLOGIES)
        assert row["No Finding"] == (None if found else 1.0)


_ENCODED = st.builds(lambda text, codec: text.encode(codec, "replace"), st.text(max_size=200),
                     st.sampled_from(["utf-8", "utf-8-sig", "cp1252", "latin-1", "utf-16", "mac_roman"]))


@fuzz(300)
@given(st.one_of(st.binary(max_size=400), _ENCODED,
                 _huge(st.binary(min_size=1, max_size=4), 1000, 20000)))
def test_decode_report_bytes_text_or_report_error(data):
    try:
        text, encoding = decode_report_bytes(data, "fuzz.txt")
    except ReportError as error:
        assert str(error).startswith("fuzz.txt: ") and str(error) != "fuzz.txt: "
        return
    assert isinstance(text, str) and "\r" not in text
    assert encoding in ("utf-8", "cp1252", "latin-1")
    assert data.strip() and b"\x00" not in data
    if encoding == "utf-8":
        assert text == data.decode("utf-8-sig").replace("\r\n", "\n").replace("\r", "\n")


CANARY_VALUES = ("Zyxwvut Canary", "03/14/2021", "98765432", "555-867-5309")
CANARY_LINE = "Dictated by Dr. Zyxwvut Canary on 03/14/2021, MRN 98765432, call 555-867-5309."


@fuzz(200)
@given(REPORT_TEXT, st.sampled_from(["\n", "\n\n", ". ", "\r\n"]))
def test_phi_canary_line_is_masked_after_any_report(text, separator):
    assume(not any(value in text for value in CANARY_VALUES))
    masked, kinds = mask_text_phi(text + separator + CANARY_LINE)
    assert set(kinds) <= set(KINDS)
    for value in CANARY_VALUES:
        assert value not in masked, (value, masked[-200:])
    assert {"name", "date", "mrn", "phone"} <= set(kinds)


# === DICOM mutator ================================================================================

def _tiny_dicoms(folder: Path) -> dict[str, bytes]:
    """Valid single-frame DICOMs of every kind the catalog accepts, as bytes."""
    import pydicom
    from pydicom.uid import RLELossless

    specs = {
        "u8_mono2": (gradient(12, 10, 255, np.uint8), "MONOCHROME2", None, {}),
        "u12_mono1_window": (gradient(10, 12, 4095, np.uint16), "MONOCHROME1", 12,
                             {"window": (2048.0, 4096.0)}),
        "u16_mono2_rescale": (gradient(8, 9, 65535, np.uint16), "MONOCHROME2", 16,
                              {"rescale": (2.0, -1024.0)}),
        "rle_u12_mono2": (gradient(11, 7, 4095, np.uint16), "MONOCHROME2", 12, {}),
        "rle_u8_mono1": (gradient(9, 13, 200, np.uint8), "MONOCHROME1", None, {}),
    }
    seeds = {}
    for name, (pixels, photometric, bits, extra) in specs.items():
        path = write_dicom(folder / f"{name}.dcm", pixels, photometric, bits, **extra)
        if name.startswith("rle"):
            ds = pydicom.dcmread(path)
            ds.PatientName = "Zyxwvut^Qqq"  # an identifying tag: the PHI policy paths run too
            ds.InstitutionName = "Qqq General"
            ds.compress(RLELossless)
            ds.save_as(path, enforce_file_format=True)
        read_header(path), decode_pixels(path)  # the seeds themselves are valid
        seeds[name] = path.read_bytes()
    return seeds


_SEEDS_DIR = tempfile.TemporaryDirectory(prefix="cxr-fuzz-seeds-")
SEEDS = _tiny_dicoms(Path(_SEEDS_DIR.name))

_TAGS = {  # element -> (group, element)
    "meta_length": (0x0002, 0x0000), "transfer_syntax": (0x0002, 0x0010),
    "sop_uid": (0x0008, 0x0018), "modality": (0x0008, 0x0060), "patient_name": (0x0010, 0x0010),
    "study_uid": (0x0020, 0x000D), "samples": (0x0028, 0x0002), "photometric": (0x0028, 0x0004),
    "rows": (0x0028, 0x0010), "columns": (0x0028, 0x0011), "spacing": (0x0028, 0x0030),
    "bits_allocated": (0x0028, 0x0100), "bits_stored": (0x0028, 0x0101),
    "high_bit": (0x0028, 0x0102), "representation": (0x0028, 0x0103),
    "window_center": (0x0028, 0x1050), "rescale_slope": (0x0028, 0x1053),
    "pixel_data": (0x7FE0, 0x0010),
}
_US_TAGS = ["samples", "rows", "columns", "bits_allocated", "bits_stored", "high_bit", "representation"]
_LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
_SYNTAXES = [
    "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5", "1.2.3.4", "", "1.2.840.10008.1.2.1\\1.2",
    "not a uid at all, much longer than the original value",
]


def _element(data: bytearray, tag: str) -> tuple[int, str] | None:
    """Offset and VR of the first explicit-VR element `tag` in data (None when not found)."""
    key = struct.pack("<HH", *_TAGS[tag])
    start = 0
    while (i := data.find(key, start)) >= 0:
        vr = bytes(data[i + 4 : i + 6])
        if len(vr) == 2 and vr.isalpha() and vr.isupper():
            return i, vr.decode()
        start = i + 1
    return None


def _mutate(data: bytes, ops: list[tuple]) -> bytes:
    out = bytearray(data)
    for op, *args in ops:
        n = max(len(out), 1)
        if op == "flip":
            pos, mask = args
            if out:
                out[pos % n] ^= mask
        elif op == "truncate":
            del out[args[0] % n :]
        elif op == "insert":
            pos, chunk = args
            out[pos % n : pos % n] = chunk
        elif op == "duplicate":
            start, size, dest = args
            chunk = out[start % n : start % n + size]
            out[dest % n : dest % n] = chunk
        elif op == "length":
            tag, value = args
            if (found := _element(out, tag)) is not None:
                i, vr = found
                if vr in _LONG_VRS:
                    out[i + 8 : i + 12] = struct.pack("<I", value & 0xFFFFFFFF)
                else:
                    out[i + 6 : i + 8] = struct.pack("<H", value & 0xFFFF)
        elif op == "vr":
            tag, vr = args
            if (found := _element(out, tag)) is not None:
                out[found[0] + 4 : found[0] + 6] = vr.encode()
        elif op == "value":
            tag, value = args
            if (found := _element(out, tag)) is not None and found[1] == "US":
                out[found[0] + 8 : found[0] + 10] = struct.pack("<H", value)
        elif op == "syntax":
            uid, fix_length = args
            if (found := _element(out, "transfer_syntax")) is not None:
                i = found[0]
                (old,) = struct.unpack("<H", out[i + 6 : i + 8])
                new = uid.encode() + b"\x00" * (len(uid) % 2)
                if fix_length:  # a consistent element (the meta group length goes stale)
                    out[i + 6 : i + 8 + old] = struct.pack("<H", len(new)) + new
                else:  # the value rewritten in place, padded or cut to the old length
                    out[i + 8 : i + 8 + old] = new[:old].ljust(old, b"\x00")
    return bytes(out)


_pos = st.integers(0, 1 << 16)
_length_value = st.one_of(st.sampled_from([0, 1, 2, 3, 4, 5, 8, 0xFFFE, 0xFFFF, 0x7FFFFFFF,
                                           0xFFFFFFFE, 0xFFFFFFFF]), st.integers(0, 1 << 12))
_us_value = st.one_of(st.sampled_from([0, 1, 2, 3, 7, 8, 12, 15, 16, 17, 31, 32, 33, 64, 255,
                                       256, 4096, 16383, 65535]), st.integers(0, 600))
MUTATION = st.one_of(
    st.tuples(st.just("flip"), _pos, st.integers(1, 255)),
    st.tuples(st.just("truncate"), _pos),
    st.tuples(st.just("insert"), _pos, st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("duplicate"), _pos, st.integers(1, 512), _pos),
    st.tuples(st.just("length"), st.sampled_from(sorted(_TAGS)), _length_value),
    st.tuples(st.just("vr"), st.sampled_from(sorted(_TAGS)),
              st.sampled_from(["UN", "OB", "SQ", "US", "UL", "DS", "IS", "UI", "CS", "LO", "PN",
                               "FD", "AT", "ZZ", "UT"])),
    st.tuples(st.just("value"), st.sampled_from(_US_TAGS), _us_value),
    st.tuples(st.just("syntax"), st.sampled_from(_SYNTAXES), st.booleans()),
)
MUTATED_DICOM = st.tuples(st.sampled_from(sorted(SEEDS)), st.lists(MUTATION, min_size=1, max_size=4))


def _assert_names_file(error: DicomError, path: Path) -> None:
    message = str(error)
    assert message.startswith(f"{path}: ") and message[len(f"{path}: ") :].strip(), message


def _read_both(path: Path):
    """read_header and decode_pixels of one file: results or DicomError, nothing else."""
    header = image = None
    with _Clock():
        try:
            header = read_header(path)
        except DicomError as error:
            _assert_names_file(error, path)
    with _Clock():
        try:
            image = decode_pixels(path)
        except DicomError as error:
            _assert_names_file(error, path)
    if image is not None:
        assert image.dtype == np.float32 and image.ndim == 2
        assert np.isfinite(image).all() and image.min() >= 0.0 and image.max() <= 1.0
        assert header is not None and image.shape == (header.rows, header.columns)
    return header, image


@fuzz(800)
@given(MUTATED_DICOM)
def test_mutated_dicom_reads_or_raises_dicom_error(case):
    seed, ops = case
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "image.dcm"
        path.write_bytes(_mutate(SEEDS[seed], ops))
        header, image = _read_both(path)
    event(f"header {'read' if header else 'DicomError'}, "
          f"pixels {'DicomError' if image is None else 'decoded'}")


def test_seed_dicoms_decode_as_written():
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in SEEDS.items():
            path = Path(tmp) / f"{name}.dcm"
            path.write_bytes(data)
            header, image = _read_both(path)
            assert header.rejection() is None and image is not None
            # A left-to-right ramp: bright on the right for MONOCHROME2, inverted for MONOCHROME1.
            rising = image[0, -1] > image[0, 0]
            assert rising == (header.photometric == "MONOCHROME2"), name


@pytest.mark.parametrize("seed", ["rle_u12_mono2", "u16_mono2_rescale"])
def test_absurd_dimensions_fail_fast(seed):
    # A compressed file claiming 65535 x 65535 once made the RLE decoder touch 8 GiB (44 s).
    data = _mutate(SEEDS[seed], [("value", "rows", 65535), ("value", "columns", 65535)])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "huge.dcm"
        path.write_bytes(data)
        assert read_header(path).rows == 65535
        start = time.perf_counter()
        with pytest.raises(DicomError):
            decode_pixels(path)
        assert time.perf_counter() - start < 2.0


@fuzz(100)
@given(st.lists(MUTATED_DICOM, min_size=1, max_size=4), st.integers(1, 2),
       st.sampled_from(["allow", "strip", "refuse"]))
def test_mutated_dicoms_are_catalogued_or_quarantined(cases, n_studies, policy):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        studies = [StudyFiles(f"s{k}", f"p{k}", ReportRef(str(root / f"s{k}.txt"),
                              text="FINDINGS: Lungs are clear.\nIMPRESSION: Normal."))
                   for k in range(n_studies)]
        readable = {}
        for i, (seed, ops) in enumerate(cases):
            path = root / f"s{i % n_studies}" / f"{i}.dcm"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(_mutate(SEEDS[seed], ops))
            studies[i % n_studies].images.append(ImageRef(path))
            try:
                readable[str(path)] = read_header(path).rejection() is None
            except DicomError:
                readable[str(path)] = False
        listing = LayoutListing("fuzz", studies)
        with _Clock():
            result = catalog_from_listing(listing, progress=False, phi_policy=policy)
        books = accounting(result)
        assert books["balanced"] and books["inputs"] == len(cases) + n_studies, books
        placed = (result.images["image_path"].to_list() + result.reports["report_origin"].to_list()
                  + result.quarantine["path"].to_list())
        inputs = list(readable) + [s.report.origin for s in studies]
        assert sorted(placed) == sorted(inputs)  # each input exactly once
        assert all(isinstance(r, str) and r.strip() for r in result.quarantine["reason"])
        assert all(readable[p] for p in result.images["image_path"])


# === CSV / XML layouts ============================================================================

_SPECIAL_CELLS = ['"', '""', '"quoted"', "a,b", ",", "\n", "\r\n", "\r", " ", "\t", "\ufeff", "NA",
                  "null", "None.", "#", "'", "\\", "\\N", "=cmd|' /C calc'!A0", "\u2028", "\x00",
                  "../../etc/passwd", "/abs/path.png", "img.png ", " S1", "S1 "]
_TEXT_CELL = st.one_of(
    st.just(""), st.text(max_size=30), st.sampled_from(_SPECIAL_CELLS),
    _huge(st.text(min_size=1, max_size=6), 1000, 12000),
)
CELL = st.one_of(
    _TEXT_CELL.map(lambda s: s.encode("utf-8")),
    st.binary(max_size=12),  # not UTF-8 at all
    st.sampled_from([b"caf\xe9", b"\xe9panchement pleural", b"\xff\xfe", b"\xc3", b"\x80\x81"]),
)


def _mostly(good: st.SearchStrategy, bad: st.SearchStrategy) -> st.SearchStrategy:
    """`good` three times in four, else `bad`: enough rows survive to reach the catalog."""
    return st.sampled_from([True, True, True, False]).flatmap(lambda ok: good if ok else bad)


def _pick(pool: list[str]) -> st.SearchStrategy[bytes]:
    """A cell that mostly names something real (an id, a file), else fuzz."""
    return _mostly(st.sampled_from(pool).map(str.encode), CELL)


REPORT_CELL = _mostly(
    st.one_of(st.sampled_from(["FINDINGS: Lungs are clear.\nIMPRESSION: Normal.",
                               "Heart size normal. No effusion or pneumothorax.",
                               "Small left effusion, cannot exclude pneumonia.",
                               "IMPRESSION: Normal. Dictated by Dr. Zyxwvut Canary, MRN 98765432"]),
              _structured).map(lambda s: s.encode("utf-8", "surrogatepass")),
    CELL,
)


def _quote(cell: bytes, quote_all: bool) -> bytes:
    if quote_all or any(c in cell for c in (b'"', b",", b"\r", b"\n")):
        return b'"' + cell.replace(b'"', b'""') + b'"'
    return cell


def _csv_bytes(header: list[str], rows: list[list[bytes]], style: tuple[bool, bool, bool]) -> bytes:
    quote_all, crlf, bom = style
    newline = b"\r\n" if crlf else b"\n"
    lines = [b",".join(_quote(c.encode(), quote_all) for c in header)]
    lines += [b",".join(_quote(c, quote_all) for c in row) for row in rows]
    return (b"\xef\xbb\xbf" if bom else b"") + newline.join(lines) + newline


CSV_STYLE = st.tuples(st.booleans(), st.booleans(), st.booleans())
IMAGE_NAMES = ["a.png", "b.png", "c.jpg", "missing.png"]


def _write_images(folder: Path) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for n, name in enumerate(IMAGE_NAMES[:3]):
        Image.fromarray(np.full((6, 5), 40 * n + 1, np.uint8)).save(folder / name)


def _rows(columns: int, cells: dict[int, st.SearchStrategy[bytes]], max_rows: int = 6):
    row = st.tuples(*[cells.get(i, CELL) for i in range(columns)]).map(list)
    return st.lists(row, max_size=max_rows)


def _catalogue_balanced(listing) -> None:
    with _Clock():
        result = catalog_from_listing(listing, progress=False, phi_policy="strip",
                                      require_images=True)
    books = accounting(result)
    assert books["balanced"] and books["inputs"] == listing.n_inputs, books
    assert all(isinstance(r, str) and r.strip() for r in result.quarantine["reason"])
    event(f"catalogued studies: {min(result.studies.height, 2)}")
    for reason in {*result.quarantine["reason"], *(s.reason for s in listing.stray)}:
        event(f"reason: {reason.split('(')[0].split(':')[0][:40]}")


def _list(layout: str, raw: Path, **options):
    with _Clock():
        return get_layout(layout).list_studies(raw, IngestParams(layout=layout, **options))


MANIFEST_COLUMNS = ["image_path", "report", "study", "pid", "view"]


@fuzz(100)
@given(_rows(5, {0: _pick(IMAGE_NAMES), 1: REPORT_CELL, 2: _pick(["E1", "E2", " E1 "]),
                 3: _pick(["P1", "P2"])}),
       CSV_STYLE, st.booleans())
def test_csv_manifest_places_every_row(rows, style, grouped):
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp)
        _write_images(raw)
        (raw / "manifest.csv").write_bytes(_csv_bytes(MANIFEST_COLUMNS, rows, style))
        columns = ManifestColumns(study_id="study", patient_id="pid", view="view") if grouped \
            else ManifestColumns()
        listing = _list("csv_manifest", raw, columns=columns)
        assert sum(len(s.images) for s in listing.studies) + len(listing.stray) == len(rows)
        assert listing.n_inputs == len(rows) + len(listing.studies)  # one report per study
        _catalogue_balanced(listing)


@fuzz(40)
@given(st.lists(st.sampled_from(MANIFEST_COLUMNS + ["extra", "", "Report", "image_path "]),
                max_size=6, unique=True),
       _rows(6, {}, max_rows=2), CSV_STYLE)
def test_csv_manifest_missing_columns_is_a_clear_value_error(header, rows, style):
    assume(not {"image_path", "report"} <= set(header))
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp)
        rows = [row[: len(header)] for row in rows] if header else []
        (raw / "manifest.csv").write_bytes(_csv_bytes(header, rows, style) if header else b"")
        with pytest.raises(ValueError, match="manifest.csv") as raised:
            _list("csv_manifest", raw)
        if header:
            assert "missing column" in str(raised.value)


@pytest.mark.parametrize("content", [
    b"", b"\n", b"\xef\xbb\xbf", b"image_path,report\na.png,ok\nb.png,ok,one cell too many\n",
    b'image_path,report\na.png,"never closed\n',
])
def test_malformed_manifest_is_a_clear_value_error(tmp_path, content):
    (tmp_path / "manifest.csv").write_bytes(content)
    with pytest.raises(ValueError, match="manifest.csv"):
        _list("csv_manifest", tmp_path)


@pytest.mark.parametrize("layout, files, message", [
    ("iu_xray", {"indiana_reports.csv": b"uid,findings\n1,x\n",
                 "indiana_projections.csv": b"uid,filename,projection\n1,a.png,PA\n"},
     "indiana_reports.csv: missing column"),
    ("iu_xray", {"indiana_reports.csv": b"uid,findings,impression\n1,x,y\n",
                 "indiana_projections.csv": b""}, "indiana_projections.csv: missing column"),
    ("padchest", {"PADCHEST_x.csv": b"ImageID,StudyID\na.png,S1\n"}, "PADCHEST_x.csv: missing column"),
    ("padchest", {"PADCHEST_x.csv": b""}, "PADCHEST_x.csv: missing column"),
    ("padchest", {"PADCHEST_x.csv": b"ImageID,ImageDir,StudyID,PatientID,Projection,Report\n"
                                    b"a.png,0,S1,P1,PA,ok,one cell too many\n"},
     "PADCHEST_x.csv: PadChest CSV .* not a well-formed CSV"),
])
def test_structurally_wrong_layout_csvs_are_clear_value_errors(tmp_path, layout, files, message):
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=message):
        _list(layout, tmp_path)


IU_REPORT_COLUMNS = ["uid", "MeSH", "indication", "comparison", "findings", "impression"]


@fuzz(100)
@given(_rows(6, {0: _pick(["1", "2", " 3 ", "2"]), 4: REPORT_CELL, 5: REPORT_CELL}, max_rows=5),
       _rows(3, {0: _pick(["1", "2", "3", "4"]), 1: _pick(IMAGE_NAMES)}, max_rows=6),
       CSV_STYLE)
def test_iu_xray_places_every_row(report_rows, projection_rows, style):
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp)
        _write_images(raw / "images_normalized")
        (raw / "indiana_reports.csv").write_bytes(_csv_bytes(IU_REPORT_COLUMNS, report_rows, style))
        (raw / "indiana_projections.csv").write_bytes(
            _csv_bytes(["uid", "filename", "projection"], projection_rows, style))
        listing = _list("iu_xray", raw)
        assert listing.n_inputs == len(report_rows) + len(projection_rows)
        _catalogue_balanced(listing)


PADCHEST_COLUMNS = ["", "ImageID", "ImageDir", "StudyID", "PatientID", "Projection", "Report", "Labels"]


@fuzz(100)
@given(_rows(8, {1: _pick(IMAGE_NAMES), 2: _pick(["0", "", "1"]),
                 3: _pick(["S1", "S2", " S1", "S2 "]), 4: _pick(["P1", "P2"]), 6: REPORT_CELL}),
       CSV_STYLE)
def test_padchest_places_every_row(rows, style):
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp)
        _write_images(raw / "0")
        (raw / "PADCHEST_fuzz.csv").write_bytes(_csv_bytes(PADCHEST_COLUMNS, rows, style))
        listing = _list("padchest", raw)
        assert sum(len(s.images) for s in listing.studies) + len(listing.stray) == len(rows)
        assert all(s.report is not None for s in listing.studies)
        _catalogue_balanced(listing)


# --- OpenI XML ---------------------------------------------------------------------------------

_XML_TEXT = _mostly(st.sampled_from(_MENTIONS + _NEGATION_CUES + ["", " ", "Normal chest."]),
                    st.text(max_size=40))
_XML_ATTR = st.one_of(st.sampled_from(["CXR1", "CXR2", "", " CXR1 ", "CXR1_1_IM-0001-4001"]),
                      st.text(max_size=12))
_ENTITY_GARBAGE = [
    "&foo;", "&amp", "&#0;", "&#xD800;", "&#x110000;", "&#65;", "&lt;", "&", "<", "]]>",
    "<![CDATA[ x ]]>", "<!-- c -->", "<?pi x?>", "\x00", "\x0c", "\ufffe",
    '<!DOCTYPE e [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;&a;">]>',
    '<!DOCTYPE e [<!ENTITY x SYSTEM "file:///etc/hostname">]>', "&x;", "&b;",
]


@st.composite
def openi_documents(draw) -> bytes:
    uid = draw(_mostly(st.sampled_from(["CXR1", "CXR2", " CXR3 "]), st.none() | _XML_ATTR))
    images = draw(st.lists(_mostly(st.sampled_from(["a", "b", "c", "missing"]), _XML_ATTR),
                           max_size=3))
    sections = draw(st.lists(st.tuples(_mostly(st.sampled_from(["FINDINGS", "IMPRESSION",
                                                                "COMPARISON", "", "findings"]),
                                               st.text(max_size=8)), _XML_TEXT), max_size=3))
    texts = "".join(f"<AbstractText Label={quoteattr(k)}>{escape(v)}</AbstractText>"
                    for k, v in sections)
    parents = "".join(f"<parentImage id={quoteattr(i)}><caption>x</caption></parentImage>"
                      for i in images)
    uid_tag = f"<uId id={quoteattr(uid)}/>" if uid is not None else ""
    prolog = draw(_mostly(st.sampled_from(['<?xml version="1.0" encoding="utf-8"?>', "", "\ufeff"]),
                          st.sampled_from(['<?xml version="1.0" encoding="bogus"?>',
                                           '<?xml version="1.0" encoding="utf-16"?>',
                                           '<?xml version="1.0" encoding="latin-1"?>',
                                           '<?xml version="1.1"?>'])))
    document = (f"{prolog}<eCitation><meta type='rr'/>{uid_tag}<MedlineCitation><Article>"
                f"<Abstract>{texts}</Abstract></Article></MedlineCitation>{parents}</eCitation>")
    data = document.encode("utf-8")
    for op, pos, garbage in draw(st.lists(st.tuples(
            st.sampled_from(["truncate", "insert", "drop_element", "none", "none", "none"]), _pos,
            st.sampled_from(_ENTITY_GARBAGE)), max_size=2)):
        n = max(len(data), 1)
        if op == "truncate":
            data = data[: pos % n]
        elif op == "insert":
            data = data[: pos % n] + garbage.encode("utf-8", "surrogatepass") + data[pos % n :]
        elif op == "drop_element":
            for tag in (b"<uId", b"<AbstractText", b"<parentImage", b"</eCitation>"):
                data = data.replace(tag, b"<removed", 1) if pos % 4 == 0 else data
                pos //= 4
    return data


@fuzz(120)
@given(st.lists(openi_documents(), min_size=1, max_size=4), st.booleans())
def test_openi_xml_places_every_document(documents, in_folder):
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp)
        folder = raw / "ecgen-radiology" if in_folder else raw
        folder.mkdir(exist_ok=True)
        _write_images(raw / "NLMCXR_png")
        paths = []
        for n, data in enumerate(documents):
            paths.append(folder / f"{n + 1}.xml")
            paths[-1].write_bytes(data)
        listing = _list("openi_xml", raw)
        origins = {s.report.origin for s in listing.studies if s.report is not None}
        stray = {s.path for s in listing.stray}
        for path in paths:
            assert str(path) in origins | stray, path
        _catalogue_balanced(listing)
