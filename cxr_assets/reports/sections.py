"""Read free-text radiology reports and split them into sections.

Real reports come in many shapes: "FINDINGS:" / "Findings -" / "FINDINGS" on its own line,
CONCLUSION or OPINION instead of IMPRESSION, HISTORY instead of INDICATION, everything on one
line, or no headers at all (an impression-only note). The splitter recognises a fixed set of
header synonyms and never drops text: anything under an unknown heading stays with the section
before it, text before the first header is kept (see `split_sections`), and the original report
is kept beside the sections by `parse_reports`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import polars as pl
from tqdm.auto import tqdm

from cxr_assets.schemas import QUARANTINE_SCHEMA

STAGE = "report_texts"
SECTIONS = ("findings", "impression", "indication", "comparison", "technique")

# Header synonyms per section (matched case-insensitively, longest first).
HEADER_SYNONYMS: dict[str, tuple[str, ...]] = {
    "findings": (
        "findings and impressions",
        "findings and impression",
        "findings/impression",
        "findings",
        "finding",
    ),
    "impression": ("impressions", "impression", "conclusions", "conclusion", "opinion", "summary"),
    "indication": (
        "clinical indications",
        "clinical indication",
        "clinical history",
        "clinical information",
        "clinical details",
        "reason for examination",
        "reason for exam",
        "reason for study",
        "indications",
        "indication",
        "history",
    ),
    "comparison": (
        "comparison study",
        "comparison exam",
        "comparisons",
        "comparison",
        "prior studies",
    ),
    "technique": ("type of examination", "technique", "examination", "procedure", "exam", "views"),
}
_SECTION_OF = {name: section for section, names in HEADER_SYNONYMS.items() for name in names}


def _alternation(names: list[str]) -> str:
    # Longest first so "clinical history" wins over "history"; any whitespace between words.
    return "|".join(
        re.escape(n).replace(r"\ ", r"\s+") for n in sorted(names, key=len, reverse=True)
    )


_ALTERNATION = _alternation(list(_SECTION_OF))
_UPPER_ALTERNATION = _alternation([name.upper() for name in _SECTION_OF])
# At the start of a line: "FINDINGS:", "Findings -", "FINDINGS" alone on its line.
_LINE_HEADER = re.compile(
    rf"^[ \t]*(?P<name>{_ALTERNATION})[ \t]*(?::|[-\u2013\u2014]+(?=[ \t]|$)|(?=\n)|$)",
    re.IGNORECASE | re.MULTILINE,
)
# Inside a line, after the end of a sentence: "... no effusion. Impression: normal."
_INLINE_HEADER = re.compile(rf"(?<=[.;!?])[ \t]+(?P<name>{_ALTERNATION})[ \t]*:", re.IGNORECASE)
# Inside a line, an upper-case header with a colon: "... clear IMPRESSION: normal."
_UPPER_INLINE_HEADER = re.compile(rf"(?<=\s)(?P<name>{_UPPER_ALTERNATION})[ \t]*:")
# Preamble lines like "FINAL REPORT" or "CHEST PA AND LATERAL": titles, not findings.
_TITLE_LINE = re.compile(r"^[^a-z.]*[A-Z][^a-z.]*$")


class ReportError(ValueError):
    """A report file is missing, empty or not text; the message starts with the path."""


def _canonical(name: str) -> str:
    return _SECTION_OF[" ".join(name.lower().split())]


def _find_headers(text: str) -> list[tuple[int, int, str]]:
    """(start, end, section) of every recognised header, in order, without overlaps."""
    found: list[tuple[int, int, str]] = []
    for pattern in (_LINE_HEADER, _INLINE_HEADER, _UPPER_INLINE_HEADER):
        for match in pattern.finditer(text):
            found.append((match.start("name"), match.end(), _canonical(match.group("name"))))
    found.sort()
    kept: list[tuple[int, int, str]] = []
    for start, end, section in found:
        if not kept or start >= kept[-1][1]:
            kept.append((start, end, section))
    return kept


def _is_title(line: str) -> bool:
    line = line.strip()
    return bool(_TITLE_LINE.match(line)) and len(line.split()) <= 8


def _join(parts: list[str]) -> str | None:
    kept: list[str] = []
    seen: set[str] = set()
    for part in parts:
        key = " ".join((part or "").split())
        # An exact repeat of a section (pasted twice by the reporting system) adds nothing.
        if key and key not in seen:
            seen.add(key)
            kept.append(part.strip())
    return "\n".join(kept) if kept else None


def split_sections(text: str) -> dict[str, str | None]:
    """Split a report into findings / impression / indication / comparison / technique.

    - No recognised header: the whole text is the impression (an impression-only note).
    - Text before the first header: title-like upper-case lines go to technique; the rest is
      the findings when the report has no FINDINGS header (narrative body followed by
      IMPRESSION), otherwise technique.
    - Repeated sections are joined (exact repeats once); unknown headings stay inside the
      preceding section.
    """
    if not isinstance(text, str):
        raise TypeError(f"report text must be str, got {type(text).__name__}")
    parts: dict[str, list[str]] = {section: [] for section in SECTIONS}
    headers = _find_headers(text)
    if not headers:
        parts["impression"].append(text)
        return {section: _join(parts[section]) for section in SECTIONS}

    for i, (_, end, section) in enumerate(headers):
        stop = headers[i + 1][0] if i + 1 < len(headers) else len(text)
        parts[section].append(text[end:stop])

    preamble_lines = [line for line in text[: headers[0][0]].splitlines() if line.strip()]
    titles = [line for line in preamble_lines if _is_title(line)]
    body = [line for line in preamble_lines if not _is_title(line)]
    parts["technique"] = titles + parts["technique"]
    if body:
        target = "technique" if _join(parts["findings"]) else "findings"
        parts[target] = [*body, *parts[target]] if target == "findings" else [*parts[target], *body]
    return {section: _join(parts[section]) for section in SECTIONS}


def training_text(sections: dict[str, str | None]) -> str | None:
    """FINDINGS + IMPRESSION, normalised: what the text encoder sees.

    Whitespace and list numbering are normalised and every de-identification span (XXXX, ___,
    [** ... **]) becomes one marker token (reports/normalize.py); the wording is unchanged.
    """
    from cxr_assets.reports.normalize import normalize_text

    joined = " ".join(s for s in (sections.get("findings"), sections.get("impression")) if s)
    return normalize_text(joined, keep_newlines=False) or None


def decode_report_bytes(data: bytes, where: str) -> tuple[str, str]:
    """Report bytes -> (text, encoding): UTF-8, then cp1252, then latin-1; newlines normalised.

    Empty and binary content raise ReportError naming `where`.
    """
    if not data.strip():
        raise ReportError(f"{where}: empty report")
    control = sum(1 for b in data if b < 32 and b not in (9, 10, 12, 13))
    if b"\x00" in data or control / len(data) > 0.05:
        raise ReportError(f"{where}: binary content, not a text report")
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            text = data.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    else:
        encoding, text = "latin-1", data.decode("latin-1")  # maps every byte: never fails
    return text.replace("\r\n", "\n").replace("\r", "\n"), encoding.removesuffix("-sig")


def read_report_file(path: Path) -> tuple[str, str]:
    """(text, encoding) of a report file; ReportError names the file and the problem."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ReportError(f"{path}: report file not found") from None
    except OSError as error:
        raise ReportError(f"{path}: cannot read report ({error.strerror or error})") from None
    return decode_report_bytes(data, str(path))


def openi_xml_text(xml: str | bytes, where: str = "<xml>") -> str:
    """An OpenI (IU) XML report as headed text: "COMPARISON: ...\nFINDINGS: ...".

    The XML keeps sections in <AbstractText Label="FINDINGS">; writing them back with their
    header lets the same splitter handle XML, CSV-derived and free-text reports alike.
    """
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(xml)
    except (ET.ParseError, LookupError) as error:  # LookupError: unknown declared encoding
        raise ReportError(f"{where}: not a valid OpenI XML report ({error})") from None
    lines = []
    for node in root.iter("AbstractText"):
        label = (node.get("Label") or "").strip()
        body = " ".join("".join(node.itertext()).split())
        if body:
            lines.append(f"{label.upper()}: {body}" if label else body)
    if not lines:
        raise ReportError(f"{where}: OpenI XML report has no AbstractText sections")
    return "\n".join(lines)


def text_from_columns(**sections: str | None) -> str:
    """Headed report text from per-section columns (IU CSV, CheXpert Plus section_* columns).

    Keyword names are section names (findings, impression, indication, comparison, technique,
    or synonyms such as history); empty or "None." placeholders are skipped.
    """
    lines = []
    for name, body in sections.items():
        if body is None or not str(body).strip() or str(body).strip().lower() in ("none", "none."):
            continue
        header = name.replace("section_", "").replace("_", " ").upper()
        lines.append(f"{header}: {' '.join(str(body).split())}")
    return "\n".join(lines)


REPORT_TEXTS_SCHEMA: dict[str, pl.DataType] = {
    "study_id": pl.String,
    "patient_id": pl.String,
    "source": pl.String,
    "report_text": pl.String,
    **{section: pl.String for section in SECTIONS},
    "report_for_training": pl.String,
    "n_chars": pl.Int64,
}


# Reports per chunk in parse_reports / iter_parse_reports: memory holds one chunk's parsed rows.
REPORT_CHUNK_ROWS = 2000
_REPORT_COLUMNS = ("study_id", "patient_id", "report_origin", "report_text")


def _check_report_columns(reports: pl.DataFrame) -> None:
    missing = set(_REPORT_COLUMNS) - set(reports.columns)
    if missing:
        raise ValueError(f"reports table lacks column(s) {sorted(missing)}")


def _parse_chunk(chunk: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(report_texts rows, quarantine rows) of one chunk, both in input order."""
    _check_report_columns(chunk)
    sections_of: dict[str, list[str | None]] = {section: [] for section in SECTIONS}
    train_texts: list[str] = []
    keep: list[bool] = []
    for text in chunk["report_text"].to_list():
        sections = split_sections(text or "")
        train_text = training_text(sections)
        keep.append(train_text is not None)
        if train_text is None:
            continue
        for section in SECTIONS:
            sections_of[section].append(sections[section])
        train_texts.append(train_text)
    mask = pl.Series(keep, dtype=pl.Boolean)
    # Identifiers and the original text are taken from the input columns (no per-row Python
    # objects); only what the parser made is built from lists.
    source = (pl.col("source").cast(pl.String) if "source" in chunk.columns
              else pl.lit(None, dtype=pl.String).alias("source"))
    parsed = chunk.filter(mask).select(
        pl.col("study_id").cast(pl.String),
        pl.col("patient_id").cast(pl.String),
        source,
        pl.col("report_text").cast(pl.String).fill_null(""),
    ).with_columns(
        *(pl.Series(section, sections_of[section], dtype=pl.String) for section in SECTIONS),
        pl.Series("report_for_training", train_texts, dtype=pl.String),
        pl.Series("n_chars", [len(t) for t in train_texts], dtype=pl.Int64),
    )
    quarantine = chunk.filter(~mask).select(
        pl.col("report_origin").cast(pl.String).alias("path"),
        pl.col("study_id").cast(pl.String),
        pl.lit("no findings or impression text", dtype=pl.String).alias("reason"),
        pl.lit(STAGE, dtype=pl.String).alias("stage"),
    )
    return parsed.cast(REPORT_TEXTS_SCHEMA), quarantine.cast(QUARANTINE_SCHEMA)


def iter_parse_reports(
    chunks: Iterable[pl.DataFrame], progress: bool = True, total: int | None = None
) -> Iterator[tuple[pl.DataFrame, pl.DataFrame]]:
    """parse_reports chunk by chunk: (report_texts rows, quarantine rows) per input frame, in
    input order, so a stage can write each chunk before parsing the next."""
    bar = tqdm(total=total, desc="report_texts", unit="report", disable=not progress,
               mininterval=1.0)
    try:
        for chunk in chunks:
            yield _parse_chunk(chunk)
            bar.update(chunk.height)
    finally:
        bar.close()


def parse_reports(
    reports: pl.DataFrame, progress: bool = True, *, chunk_rows: int = REPORT_CHUNK_ROWS
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split each catalogued report into sections.

    `reports` holds study_id, patient_id, report_origin, report_text (and optionally source):
    the catalog's reports table joined with its studies. Returns (report_texts, quarantine);
    n_chars is the length of report_for_training. Reports without findings/impression text are
    quarantined (stage "report_texts") with the reason.

    Parsing runs `chunk_rows` reports at a time (iter_parse_reports); the results are the chunks
    concatenated without copying, and do not depend on the chunk size.
    """
    _check_report_columns(reports)
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
    chunks = ([reports] if reports.height == 0 else
              (reports.slice(offset, chunk_rows) for offset in range(0, reports.height, chunk_rows)))
    parsed, quarantine = zip(*iter_parse_reports(chunks, progress=progress, total=reports.height))
    return pl.concat(parsed, rechunk=False), pl.concat(quarantine, rechunk=False)
