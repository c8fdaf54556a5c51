"""The project's chest-radiology abbreviation lexicon: detection, expansion, contraction, density.

Each entry has its long form, whether it is ambiguous (several common senses in radiology
text, e.g. "PA" = posteroanterior or pulmonary artery), and whether it must match with its case
(upper-case acronyms: "CM" is cardiomegaly only in capitals; "cm" is centimetres). Ambiguous
entries are still detected and counted, and `expand` uses their chest-X-ray sense; `abbreviate`
never introduces them, so a contracted report reads the same way to a radiologist.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Abbreviation:
    short: str
    long: str
    ambiguous: bool = False
    case_sensitive: bool = True  # upper-case acronyms; lower-case shorthands match any case


def _a(short: str, long: str, ambiguous: bool = False) -> Abbreviation:
    # Convention: an all-capitals short form is matched with its case, anything else is not.
    return Abbreviation(short, long, ambiguous, case_sensitive=short.isupper())


LEXICON: tuple[Abbreviation, ...] = (
    # findings and diseases
    _a("PTX", "pneumothorax"),
    _a("CHF", "congestive heart failure"),
    _a("COPD", "chronic obstructive pulmonary disease"),
    _a("ARDS", "acute respiratory distress syndrome"),
    _a("ILD", "interstitial lung disease"),
    _a("TB", "tuberculosis"),
    _a("CM", "cardiomegaly", ambiguous=True),  # also centimetre(s) in some dictations
    _a("PE", "pulmonary embolism", ambiguous=True),  # also pleural effusion
    _a("eff", "effusion"),
    _a("effs", "effusions"),
    _a("atx", "atelectasis"),
    _a("consol", "consolidation"),
    _a("pna", "pneumonia"),
    _a("fx", "fracture"),
    _a("NAD", "no acute disease", ambiguous=True),  # also "no apparent distress"
    _a("WNL", "within normal limits"),
    _a("opac", "opacity"),
    # anatomy
    _a("RLL", "right lower lobe"),
    _a("LLL", "left lower lobe"),
    _a("RUL", "right upper lobe"),
    _a("LUL", "left upper lobe"),
    _a("RML", "right middle lobe"),
    _a("SVC", "superior vena cava"),
    _a("IVC", "inferior vena cava"),
    _a("IJ", "internal jugular"),
    _a("CP", "costophrenic", ambiguous=True),  # also chest pain
    _a("LV", "left ventricle", ambiguous=True),  # also left ventricular
    _a("RV", "right ventricle", ambiguous=True),
    _a("GE", "gastroesophageal"),
    _a("GEJ", "gastroesophageal junction"),
    _a("AP", "anteroposterior", ambiguous=True),  # also aortopulmonary (window)
    _a("PA", "posteroanterior", ambiguous=True),  # also pulmonary artery
    _a("lat", "lateral", ambiguous=True),
    _a("b/l", "bilateral"),
    _a("bilat", "bilateral"),
    _a("L", "left", ambiguous=True),
    _a("R", "right", ambiguous=True),
    # devices and procedures
    _a("ETT", "endotracheal tube"),
    _a("ET", "endotracheal"),
    _a("NGT", "nasogastric tube"),
    _a("NG", "nasogastric"),
    _a("OGT", "orogastric tube"),
    _a("OG", "orogastric"),
    _a("PICC", "peripherally inserted central catheter"),
    _a("CVC", "central venous catheter"),
    _a("CABG", "coronary artery bypass graft"),
    _a("AICD", "automatic implantable cardioverter-defibrillator"),
    _a("ICD", "implantable cardioverter-defibrillator"),
    _a("IABP", "intra-aortic balloon pump"),
    _a("CT", "computed tomography"),
    _a("cxr", "chest x-ray"),
    # report shorthand
    _a("s/p", "status post"),
    _a("w/o", "without"),
    _a("w/", "with"),
    _a("c/w", "consistent with", ambiguous=True),  # also "compared with"
    _a("r/o", "rule out"),
    _a("pt", "patient"),
    _a("hx", "history"),
    _a("dx", "diagnosis"),
    _a("ddx", "differential diagnosis"),
    _a("sx", "symptoms"),
    _a("SOB", "shortness of breath"),
    _a("approx", "approximately"),
    _a("prev", "previous"),
    _a("vs", "versus"),
    _a("sm", "small"),
    _a("mod", "moderate"),
    _a("incr", "increased"),
    _a("decr", "decreased"),
    _a("unch", "unchanged"),
    _a("abd", "abdomen"),
    _a("resp", "respiratory"),
)

# Contractions `abbreviate` may introduce: unambiguous entries, one short form per long form
# (the first listed wins), and not single letters.
_CONTRACT: dict[str, str] = {}
for _entry in LEXICON:
    if not _entry.ambiguous and len(_entry.short) > 1 and _entry.long.lower() not in _CONTRACT:
        _CONTRACT[_entry.long.lower()] = _entry.short

_BOUNDARY_L, _BOUNDARY_R = r"(?<![\w/])", r"(?![\w/])"


def _pattern(shorts: list[str]) -> str:
    # Longest first so "NGT" wins over "NG"; a short form ending in "/" must not need a boundary.
    parts = []
    for s in sorted(shorts, key=len, reverse=True):
        right = r"(?!\w)" if s.endswith("/") else _BOUNDARY_R
        parts.append(f"{re.escape(s)}{right}")
    return _BOUNDARY_L + "(?:" + "|".join(parts) + ")"


# Single letters ("L", "R") are only shorthand in "L base" style, too noisy to count anywhere else.
_COUNTED = [e for e in LEXICON if len(e.short) > 1]
_CS_RE = re.compile(_pattern([e.short for e in _COUNTED if e.case_sensitive]))
_CI_RE = re.compile(_pattern([e.short for e in _COUNTED if not e.case_sensitive]), re.IGNORECASE)
_BY_SHORT_CS = {e.short: e for e in LEXICON if e.case_sensitive}
_BY_SHORT_CI = {e.short.lower(): e for e in LEXICON if not e.case_sensitive}
_CONTRACT_RE = re.compile(
    r"\b(?:" + "|".join(re.escape(k).replace(r"\ ", r"\s+") for k in
                        sorted(_CONTRACT, key=len, reverse=True)) + r")\b",
    re.IGNORECASE,
)
_WORD = re.compile(r"\S+")


def find_abbreviations(text: str) -> list[tuple[int, int, Abbreviation]]:
    """(start, end, entry) of every abbreviation in `text`, in order, without overlaps."""
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__}")
    hits = [(m.start(), m.end(), _BY_SHORT_CS[m.group(0)]) for m in _CS_RE.finditer(text)]
    hits += [(m.start(), m.end(), _BY_SHORT_CI[m.group(0).lower()]) for m in _CI_RE.finditer(text)]
    hits.sort(key=lambda h: (h[0], -(h[1] - h[0])))
    kept: list[tuple[int, int, Abbreviation]] = []
    for hit in hits:
        if not kept or hit[0] >= kept[-1][1]:
            kept.append(hit)
    return kept


def count_abbreviations(text: str) -> int:
    """Number of abbreviations in `text` (overlaps counted once)."""
    return len(find_abbreviations(text))


def abbreviation_density(text: str) -> float:
    """Abbreviations per whitespace-separated word (0.0 for an empty text)."""
    n_words = len(_WORD.findall(text or ""))
    return count_abbreviations(text) / n_words if n_words else 0.0


def expand(text: str) -> str:
    """Every abbreviation replaced by its long form (ambiguous ones by their chest-X-ray sense)."""
    out, last = [], 0
    for start, end, entry in find_abbreviations(text):
        out.append(text[last:start])
        out.append(entry.long)
        last = end
    out.append(text[last:])
    return "".join(out)


def abbreviate(text: str, seed: int, rate: float = 0.8) -> str:
    """Long forms contracted to their short form, each with probability `rate`.

    Deterministic for a given (text, seed). Only unambiguous abbreviations are introduced.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__}")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    rng = random.Random(f"{seed}:{text}")

    def contract(match: re.Match) -> str:
        if rng.random() >= rate:
            return match.group(0)
        return _CONTRACT[" ".join(match.group(0).lower().split())]

    return _CONTRACT_RE.sub(contract, text)
