"""PHI guard for ingestion: identifying DICOM tags, PHI in report text, and pseudonyms.

Text patterns are tuned for precision on real (already de-identified) radiology reports, because
a false positive quarantines a good study. Nothing here ever returns or logs a matched value:
callers get tag keywords, hit kinds and offsets only.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

# PS3.15 Annex E basic-profile attributes that hold identifying *values* (UIDs are remapped
# elsewhere). Not listed, on purpose: PatientID (the pipeline keys on it and pseudonymizes it),
# StudyID and StationName (site-local counters/labels that pseudonymized sets keep), exam dates
# (kept shifted under Annex E's longitudinal-temporal option), free-text comments (scan those
# with find_text_phi), and non-identifying demographics (sex, age, ethnic group).
PHI_DICOM_TAGS: tuple[str, ...] = (
    "PatientName", "PatientBirthDate", "PatientBirthTime", "PatientBirthName",
    "PatientMotherBirthName", "OtherPatientNames", "OtherPatientIDs", "OtherPatientIDsSequence",
    "PatientAddress", "PatientTelephoneNumbers", "PatientTelecomInformation", "MilitaryRank",
    "BranchOfService", "MedicalRecordLocator", "IssuerOfPatientID", "ResponsiblePerson",
    "PersonName", "ReferringPhysicianName", "ReferringPhysicianAddress",
    "ReferringPhysicianTelephoneNumbers", "PerformingPhysicianName", "PhysiciansOfRecord",
    "NameOfPhysiciansReadingStudy", "OperatorsName", "RequestingPhysician",
    "ScheduledPerformingPhysicianName", "InstitutionName", "InstitutionAddress",
    "InstitutionalDepartmentName", "AccessionNumber", "DeviceSerialNumber",
)  # fmt: skip


def _is_empty(value) -> bool:
    if value is None:
        return True
    if isinstance(value, bytes):
        return not value.strip(b"\x00 ")
    if isinstance(value, str):
        return not value.strip("\x00 ")
    try:  # sequences and multi-values: empty, or every item empty
        return all(_is_empty(v) for v in value)
    except TypeError:
        return not str(value).strip()


def _tag_value(ds, keyword: str):
    try:
        return ds[keyword].value
    except KeyError:
        return None
    except Exception:  # noqa: BLE001 - pydicom raises many types on odd values; keep the raw bytes
        try:
            return ds.get_item(keyword).value
        except Exception:  # noqa: BLE001 - unreadable, yet present: report it (fail closed)
            return b"?"


def dicom_phi_tags(ds) -> list[str]:
    """Keywords of PHI_DICOM_TAGS present at top level with a non-empty value (never values)."""
    found = [k for k in PHI_DICOM_TAGS if not _is_empty(_tag_value(ds, k))]
    # A PatientName that merely repeats PatientID is a pseudonym (e.g. SIIM-ACR's UUIDs); it
    # discloses nothing the pipeline does not already key on.
    if "PatientName" in found:
        name, pid = _tag_value(ds, "PatientName"), _tag_value(ds, "PatientID")
        if not _is_empty(pid) and str(name).strip() == str(pid).strip():
            found.remove("PatientName")
    return found


def is_deidentified(ds) -> bool:
    """The header declares de-identification (PatientIdentityRemoved=YES or a method given)."""
    removed = _tag_value(ds, "PatientIdentityRemoved")
    if isinstance(removed, bytes):
        removed = removed.decode("ascii", "replace")
    if str(removed or "").strip().upper() == "YES":
        return True
    return not _is_empty(_tag_value(ds, "DeidentificationMethod")) or not _is_empty(
        _tag_value(ds, "DeidentificationMethodCodeSequence")
    )


@dataclass(frozen=True)
class PhiHit:
    kind: str  # one of KINDS
    start: int
    end: int


KINDS = ("name", "date", "mrn", "phone", "email", "ssn")

# Full month names match in any case; abbreviations only capitalised (lower-case "dec", "apr"
# are clinical shorthand), and May/March only capitalised (ordinary words otherwise).
_MONTH = (
    r"(?:(?i:january|february|april|june|july|august|september|october|november|december)"
    r"|(?:Jan|Feb|Apr|Jun|Jul|Aug|Sept?|Oct|Nov|Dec|JAN|FEB|MAR|APR|JUN|JUL|AUG|SEPT?|OCT|NOV"
    r"|DEC)\b\.?|Mar(?:ch)?\b\.?|MARCH|May|MAY)"
)
_MD = r"(?:0?[1-9]|1[0-2])"  # month number
_DD = r"(?:0?[1-9]|[12]\d|3[01])"  # day number
_YEAR = r"(?:19|20)\d\d"
_NUM_END = r"(?![\d/.\-]?\d)"  # not followed by more digits (a longer number or dotted id)
_NOT_UNIT = r"(?![ \t]*(?:mm|cm|mg|ml|%|x\b|-\d))"  # "Dec 2 cm" is a measurement
_NAME_TOKEN = r"(?!X{2,}\b)[A-Z][A-Za-z'\-]+"  # X-runs are de-id tokens, never names
_NAME = rf"(?:[A-Z]\.[ \t]?)?{_NAME_TOKEN}(?:[ \t]+(?:[A-Z]\.[ \t]+)?{_NAME_TOKEN}){{0,2}}"
# Upper-case "DR" only with its period: bare "DR" is digital radiography ("DR CHEST PA").
_TITLE = r"(?:Dr\b[.,]?|DR\.|dr\.|(?i:doctor|prof)\b[.,]?|(?:Mrs?|Ms|Miss|Nurse)\b\.?)"
_ROLE = (  # one group: the optional title after it must bind to every alternative
    r"(?:(?i:(?:(?:electronically )?signed|dictated|reviewed|read|interpreted|transcribed) by:?"
    r"|(?:attending|resident|radiologist|physician):)"
    r"|(?:discussed with|reported to|communicated to|called to))"  # case-sensitive: "The"
)
_NOT_NAMES = {
    "the", "a", "an", "patient", "pt", "nurse", "radiology", "radiologist", "referring",
    "clinician", "clinical", "team", "staff", "resident", "physician", "him", "her", "them",
    "this", "that", "family", "emergency", "er", "ed", "icu", "findings", "impression", "was",
    "is", "at", "on", "by", "and", "who", "md", "do", "phd",
}  # fmt: skip

# (kind, pattern, group holding the PHI). Order sets priority when hits overlap.
_PATTERNS: list[tuple[str, re.Pattern[str], int]] = [
    ("email", re.compile(r"\b[\w.%+\-]+@[\w\-]+(?:\.[\w\-]+)*\.[A-Za-z]{2,}\b"), 0),
    ("ssn", re.compile(r"(?<![\d\-])\d{3}-\d{2}-\d{4}(?![\d\-])"), 0),
    ("phone", re.compile(
        r"(?<![\d\-.])(?:\(\d{3}\)[ ]?\d{3}[ .\-]|\d{3}([.\-])\d{3}\1|\+1[ .\-]?\d{3}"
        r"([ .\-])\d{3}\2)\d{4}(?![\d\-])"), 0),
    # Full numeric dates: m/d/y or d.m.y (one separator, used twice) and ISO y-m-d.
    ("date", re.compile(rf"(?<![\d/.\-]){_DD}([/.\-]){_DD}\1(?:\d{{4}}|\d{{2}}){_NUM_END}"), 0),
    ("date", re.compile(rf"(?<![\d/.\-]){_YEAR}([/.\-]){_MD}\1{_DD}{_NUM_END}"), 0),
    ("date", re.compile(rf"(?<![\d/.\-])({_MD}/{_DD})/[ \t]?(?:X{{2,}}|_{{2,}})"), 1),  # year gone
    ("date", re.compile(rf"\b{_MONTH}[ \t]+{_DD}(?:st|nd|rd|th)?\b{_NOT_UNIT}"
                        rf"(?:,?[ \t]+{_YEAR}\b)?"), 0),
    ("date", re.compile(rf"\b{_DD}(?:st|nd|rd|th)?[ \t]+(?:of[ \t]+)?{_MONTH}"
                        rf"(?:,?[ \t]+{_YEAR}\b)?"), 0),
    ("date", re.compile(rf"\b{_MONTH},?[ \t]+{_YEAR}\b"), 0),  # month + year still has the month
    # Month/day alone ("dated 11/12") is a date element, but bare m/d collides with fractions,
    # scores and disc levels (2/3, 4/5, L4/5), so it needs a date cue word and no "of" after.
    ("date", re.compile(
        r"(?i:\b(?:dated|on|from|since|prior|previous|comparison:?|compared (?:to|with)"
        rf"|study|exam|films?|radiographs?|cxr))[ \t]+({_MD}/{_DD})(?![\d/%]|[ \t]+of\b)"), 1),
    ("mrn", re.compile(
        r"(?i:\b(?:MRN|MR[ \t]*(?:#|No\b\.?)|medical record(?: number| no\b\.?| #)?"
        r"|acc(?:ession)?(?: number| no\b\.?| #|#)?|patient id))[ \t]*[:#]?[ \t]*"
        r"([A-Z]?\d[\d\-]{3,})"), 1),
    ("mrn", re.compile(r"(?<![\d.,\-])\d{7,}(?![\d\-]|[.,]\d)"), 0),
    # Names after a title or a sign-off/communication phrase, capitalised (ALL-CAPS allowed).
    ("name", re.compile(rf"(?:\b{_TITLE}|\b{_ROLE}(?:[ \t]+{_TITLE})?)[ \t]+({_NAME})"), 1),
    # Lower-cased reports: after "dr." any single word is taken as the surname.
    ("name", re.compile(r"(?i:\bdr\.)[ \t]*((?!(?i:x{2,})\b)[a-z][a-z'\-]+)\b"), 1),
]
_DEID_TOKEN = re.compile(r"\[\*\*.*?\*\*\]", re.DOTALL)  # MIMIC surrogates: already de-id'd


def _name_span(m: re.Match[str], group: int) -> tuple[int, int] | None:
    """The name's span with trailing non-name words (e.g. "MD", "was") trimmed off."""
    words = [w for w in re.finditer(r"\S+", m.group(group))]
    while words and words[-1].group().rstrip(".").lower() in _NOT_NAMES:
        words.pop()
    if not words or words[0].group().rstrip(".").lower() in _NOT_NAMES:
        return None
    return m.start(group), m.start(group) + words[-1].end()


def find_text_phi(text: str) -> list[PhiHit]:
    """Non-overlapping PHI hits, in text order; higher-priority kinds win overlaps."""
    blocked = [m.span() for m in _DEID_TOKEN.finditer(text)]
    taken: list[PhiHit] = []
    for kind, pattern, group in _PATTERNS:
        for m in pattern.finditer(text):
            span = _name_span(m, group) if kind == "name" else m.span(group)
            if span is None:
                continue
            start, end = span
            if any(s < end and start < e for s, e in blocked) or any(
                h.start < end and start < h.end for h in taken
            ):
                continue
            taken.append(PhiHit(kind, start, end))
    return sorted(taken, key=lambda h: h.start)


def mask_text_phi(text: str, token: str = "[PHI]") -> tuple[str, list[str]]:
    """Text with every hit replaced by `token`, and the sorted unique kinds found."""
    hits = find_text_phi(text)
    out, pos = [], 0
    for h in hits:
        out += [text[pos : h.start], token]
        pos = h.end
    out.append(text[pos:])
    return "".join(out), sorted({h.kind for h in hits})


def phi_summary(kinds: list[str]) -> str:
    """A log-safe reason string; anything that is not a known kind is reported as 'other'."""
    names = sorted({k if k in KINDS else "other" for k in kinds})
    return f"report text contains {', '.join(names)}" if names else ""


def pseudonymize(value: str, salt: str, prefix: str = "pid") -> str:
    """Stable salted pseudonym. An empty salt is refused: unsalted hashes of MRNs are reversible
    by enumerating the (small) MRN space."""
    if not salt:
        raise ValueError("pseudonymize needs a non-empty secret salt")
    digest = hashlib.sha256(f"{salt}|{value}".encode()).hexdigest()
    return f"{prefix}-{digest[:16]}"
