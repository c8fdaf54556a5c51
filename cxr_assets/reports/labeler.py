"""Rule-based labeler for the 14 CheXpert observations (our own lexicon and scope rules).

Output follows the CheXpert convention: 1.0 positive, 0.0 negative, -1.0 uncertain, null not
mentioned. How a report is labelled:

1. The text is cut into sentences, and each sentence into clauses at scope breakers ("but",
   "however", "although", "which", ...): a negation or hedge never reaches across them.
2. Each observation has mention patterns (e.g. "effusion", "blunting of the costophrenic
   angle" for Pleural Effusion) and, for the two size observations, "normal" patterns that are
   negative mentions by themselves ("heart size is normal" -> Cardiomegaly 0).
3. A mention is classified by what surrounds it inside its clause, in this order:
   - uncertainty that contains a negation word ("cannot exclude", "not ruled out") -> -1;
   - negation before it ("no", "without", "free of", ...) or after it ("has resolved",
     "is not seen") -> 0;
   - uncertainty before it ("may", "possible", "suspicious for", ...) or after it
     ("is suspected", "?") -> -1;
   - otherwise -> 1.
   A negation or hedge before a mention covers a following list ("no edema, effusion or
   pneumothorax") up to the end of the clause.
4. A report's label per observation: positive if any mention is positive, else uncertain if any
   is uncertain, else negative. "No Finding" is 1.0 when no pathology (everything except
   Support Devices) is positive or uncertain, else null.

Written from scratch; the CheXpert/NegBio rule files in ../shared/data/rules are only the
yardstick we measure agreement against (benchmarks/bench_reports.py).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import polars as pl

CHEXPERT_OBSERVATIONS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
PATHOLOGIES = tuple(o for o in CHEXPERT_OBSERVATIONS if o not in ("No Finding", "Support Devices"))

POSITIVE, NEGATIVE, UNCERTAIN = 1.0, 0.0, -1.0

# --- lexicon: observation -> mention patterns (regex fragments, matched case-insensitively) ----
_SIZE_WORDS = r"(?:enlarge(?:d|ment)|widen(?:ed|ing)|prominen(?:t|ce)|increased?\s+(?:in\s+)?size)"
_NORMALISH = r"(?:normal(?:\s+in\s+size)?|within\s+normal\s+limits|unremarkable|not\s+enlarged|stable)"

MENTIONS: dict[str, tuple[str, ...]] = {
    "Enlarged Cardiomediastinum": (
        (rf"(?:cardio)?mediastin(?:um|al)(?:\s+(?:silhouette|contours?|width))?\s+(?:is\s+|are\s+)?"
        rf"(?:mildly\s+|moderately\s+|markedly\s+|slightly\s+)?{_SIZE_WORDS}"),
        rf"{_SIZE_WORDS}\s+(?:of\s+the\s+)?(?:cardio)?mediastin(?:um|al)",
        r"mediastinal\s+(?:widening|enlargement|mass|lymphadenopathy)",
        r"widened\s+(?:superior\s+)?mediastinum",
    ),
    "Cardiomegaly": (
        r"cardiomegaly",
        r"cardiac\s+enlargement",
        r"enlarge(?:d|ment\s+of\s+the)\s+(?:heart|cardiac\s+(?:silhouette|shadow))",
        (r"(?:heart|cardiac\s+(?:silhouette|shadow|size))(?:\s+size)?\s+(?:is\s+|appears\s+|remains\s+)?"
        r"(?:mildly\s+|moderately\s+|markedly\s+|slightly\s+|severely\s+)?enlarged"),
        r"(?:heart|cardiac)\s+(?:size\s+)?(?:is\s+)?(?:at\s+the\s+)?upper\s+limits?\s+of\s+normal",
        r"cardiomegally",
    ),
    "Lung Opacity": (
        r"opacit(?:y|ies)",
        r"opacification",
        r"opacified",
        r"air\s*-?space\s+(?:disease|process|density|densities|filling)",
        r"infiltrat(?:e|es|ion|ive)",
        r"ground[\s-]+glass",
        r"hazy\s+(?:density|densities|opacit\w+)",
        r"haziness",
        r"(?:interstitial|reticular|reticulonodular)\s+(?:marking|pattern|opacit|change|thickening|disease)\w*",
        r"(?:parenchymal|pulmonary|lung)\s+(?:density|densities|scarring)",
        r"scarring",
    ),
    "Lung Lesion": (
        r"nodul(?:e|es|ar)",
        r"(?<!mediastinal\s)mass(?:es)?\b",
        r"(?:lung|pulmonary|cavitary|cavitating|parenchymal)\s+lesions?",
        r"tumou?rs?",
        r"neoplasms?",
        r"carcinoma",
        r"malignan(?:cy|t)",
        r"metasta(?:sis|ses|tic)",
        r"cavitation",
    ),
    "Edema": (
        r"edema",
        r"oedema",
        r"(?:vascular|venous|pulmonary)\s+(?:congestion|engorgement)",
        r"congestive\s+heart\s+failure",
        r"\bchf\b",
        r"fluid\s+overload",
        r"cephalization",
        r"kerley\s+b",
        r"volume\s+overload",
    ),
    "Consolidation": (r"consolidat(?:ion|ions|ive|ed)",),
    "Pneumonia": (
        r"pneumonias?",
        r"pneumonitis",
        r"\bpna\b",
        r"infectio(?:n|us)(?:\s+process)?",
        r"aspiration",
        r"bronchopneumonia",
    ),
    "Atelectasis": (
        r"atelecta(?:sis|ses|tic)",
        r"(?:lobe|lobar|lung|segmental|basilar)\s+collapse",
        r"collapse\s+of\s+the\s+\w+(?:\s+\w+)?\s+lobe",
        r"volume\s+loss",
        r"\batx\b",
    ),
    "Pneumothorax": (r"pneumothora(?:x|ces)", r"\bptx\b", r"hydropneumothorax"),
    "Pleural Effusion": (
        r"(?<!pericardial\s)effusions?",
        r"pleural\s+fluid",
        r"hydrothorax",
        r"hydropneumothorax",
        (r"blunt(?:ing|ed)\s+(?:of\s+)?(?:the\s+)?(?:(?:left|right|bilateral|both)\s+)?"
        r"(?:costophrenic|cp)\s+(?:angle|sulc)\w*"),
        r"(?:costophrenic|cp)\s+(?:angle|sulc)\w*\s+(?:is\s+|are\s+)?blunt(?:ed|ing)",
        r"\beffs?\b",
    ),
    "Pleural Other": (
        r"pleural\s+(?:thickening|plaques?|scar(?:ring)?|calcifications?|reaction)",
        r"fibrothorax",
        r"pleural\s+based\s+(?:opacity|density|thickening)",
        r"apical\s+(?:pleural\s+)?(?:cap|thickening)",
        r"pleuroparenchymal\s+(?:scarring|thickening|opacit\w+)",
    ),
    "Fracture": (r"fractur(?:e|es|ed)", r"\bfx\b"),
    "Support Devices": (
        (r"(?:endotracheal|tracheostomy|nasogastric|orogastric|feeding|chest|enteric|gastric|"
        r"dobhoff|et|ng|og|ngt|ogt|ett|thoracostomy|mediastinal|pleural)\s+tubes?"),
        r"\bett?\b",
        r"\bngt?\b",
        r"\bogt?\b",
        (r"(?:central\s+(?:venous\s+)?|picc|venous|arterial|ij|subclavian|swan[\s-]+ganz|midline|"
        r"dialysis|hickman|port)\s*(?:line|catheter)s?"),
        r"\bpicc\b",
        r"catheters?",
        r"pacemakers?",
        r"pacer",
        r"(?:pacing|pacemaker|cardiac|icd|aicd)\s+(?:leads?|wires?|device)",
        r"\b(?:a)?icd\b",
        r"defibrillator",
        r"(?:sternotomy|sternal|cerclage)\s+wires?",
        r"\bstents?\b",
        r"(?:valve\s+replacement|prosthetic\s+valve|valve\s+prosthesis|annuloplasty\s+ring)",
        r"port-?a-?cath",
        r"(?:surgical\s+)?drains?\b",
        r"(?:infusion|chest\s+wall)\s+port",
        r"(?:intra-?aortic\s+)?balloon\s+pump",
        r"\biabp\b",
        r"swan[\s-]+ganz",
    ),
}

# Negative mentions by themselves ("heart size is normal" = no cardiomegaly).
NORMAL_MENTIONS: dict[str, tuple[str, ...]] = {
    "Cardiomegaly": (
        (rf"(?:heart|cardiac)(?:\s+(?:size|silhouette|shadow|contours?))?(?:\s+and\s+\w+(?:\s+\w+)?)?"
        rf"(?:\s+size)?\s+(?:is\s+|are\s+|appears?\s+|remains?\s+|within\s+)?(?:grossly\s+)?{_NORMALISH}"),
        r"normal\s+(?:heart|cardiac)(?:\s+(?:size|silhouette|shadow))?",
        r"heart\s+is\s+not\s+enlarged",
        r"(?:heart|cardiac)\s+size\s+(?:is\s+)?within\s+normal\s+limits",
    ),
    "Enlarged Cardiomediastinum": (
        (rf"(?:cardio)?mediastin(?:um|al)(?:\s+(?:silhouette|contours?|width|size))?"
        rf"(?:\s+and\s+\w+(?:\s+\w+)?)?\s+(?:is\s+|are\s+|appears?\s+|remains?\s+)?(?:grossly\s+)?{_NORMALISH}"),
        r"normal\s+(?:cardio)?mediastin(?:um|al)(?:\s+(?:silhouette|contours?|width))?",
    ),
}

# --- negation and uncertainty triggers ---------------------------------------------------------
# Hedges that contain a negation word: checked first so they do not read as negations.
_UNCERTAIN_NEGATED_PRE = (
    r"cannot\s+(?:be\s+)?(?:entirely\s+|completely\s+|definitely\s+)?(?:exclude|excluded|rule\s+out|ruled\s+out)",
    r"can\s*not\s+(?:be\s+)?(?:entirely\s+|completely\s+)?(?:exclude|excluded|rule\s+out|ruled\s+out)",
    r"could\s+not\s+(?:be\s+)?(?:entirely\s+)?(?:exclude|excluded|rule\s+out)",
    r"not\s+(?:entirely\s+|completely\s+)?(?:exclude|excluded|ruled\s+out)",
    r"no\s+(?:definite|convincing|clear)\s+(?:evidence\s+(?:of|for)\s+)?(?:\w+\s+)?(?:though|although|but)",
    r"(?:difficult|hard)\s+to\s+(?:exclude|rule\s+out)",
    r"not\s+(?:be\s+)?(?:well\s+)?(?:assessed|evaluated)",
)
_UNCERTAIN_NEGATED_POST = (
    (r"(?:is|are|was|were)?\s*(?:cannot|can\s*not|could\s+not|not)\s+(?:be\s+)?(?:entirely\s+|completely\s+)?"
    r"(?:excluded|ruled\s+out)"),
    r"(?:is|are)?\s*not\s+(?:well\s+)?(?:assessed|evaluated|excluded)",
)
# The project's one list of negation cues (the report profile counts the same ones).
NEGATION_CUES = (
    r"no",
    r"not",
    r"without",
    r"negative\s+for",
    r"free\s+of",
    r"clear\s+of",
    r"absen(?:ce|t)\s+(?:of)?",
    r"resolution\s+of",
    r"resolved",
    r"removal\s+of",
    r"interval\s+removal\s+of",
    r"rather\s+than",
    r"instead\s+of",
    r"nor",
    r"never",
    r"negative",
    r"(?:has|have)\s+(?:been\s+)?removed",
    r"no\s+longer",
    r"ruled\s+out",
)
_NEGATION_POST = (
    r"(?:is|are|was|were|has|have)?\s*(?:been\s+)?(?:now\s+)?(?:resolved|removed|cleared|absent|gone|excluded|ruled\s+out)",
    (r"(?:is|are|was|were|has|have)?\s*(?:not|no\s+longer)\s+(?:been\s+)?(?:seen|identified|present|"
    r"visualized|visualised|demonstrated|evident|appreciated|noted|detected|apparent|visible|shown|"
    r"observed|identifiable|definitely\s+seen|convincingly\s+seen)"),
    r"(?:is|are|was|were)\s+(?:negative|normal)",
    r"(?:has|have)\s+(?:completely\s+)?resolved",
    r"resolved",
)
_UNCERTAIN_PRE = (
    r"may",
    r"might",
    r"could",
    r"possibl[ey]",
    r"probabl[ey]",
    r"likely",
    r"suspect(?:ed)?",
    r"suspicious\s+(?:of|for)",
    r"suspicion\s+(?:of|for)",
    r"concern(?:ing)?\s+(?:of|for)",
    r"question(?:able)?(?:\s+of)?",
    r"questionably",
    r"suggest(?:s|ed|ive|ing)?(?:\s+of)?",
    r"differential\s+(?:diagnosis\s+)?(?:includes?|of)",
    r"(?:rule|r/o)\s+out",
    r"r/o",
    r"evaluat(?:e|ion)\s+(?:for|of)",
    r"assess(?:ment)?\s+for",
    r"versus",
    r"vs\.?",
    r"borderline",
    r"equivocal",
    r"indeterminate",
    r"presum(?:ed|ably|able)",
    r"represent(?:s|ing)?",
    r"reflect(?:s|ing)?",
    r"(?:can|could|may)\s+not\s+be\s+excluded",
    r"atypical",
    r"(?:is|are)\s+not\s+excluded",
    r"(?:to\s+)?exclude",
    r"either",
    r"or",
)
_UNCERTAIN_POST = (
    (r"(?:\w+\s+)?(?:is|are|was|were|remains?|seems?)\s+(?:possible|possibly|probable|probably|likely|"
    r"suspected|questioned|questionable|not\s+excluded|in\s+question|a\s+consideration|considered)"),
    r"\?",
    r"(?:versus|vs\.?)(?!\w)",
    (r"or\s+(?:\w+\s+){0,3}?(?:atelectasis|pneumonia|consolidation|edema|effusion|scarring|infection|"
    r"aspiration|mass|opacity|opacities|infiltrate)"),
)
# Words that end the reach of a negation / hedge inside a sentence.
_SCOPE_BREAK = re.compile(
    r"\b(?:but|however|although|though|except|aside\s+from|apart\s+from|which|whereas|yet|"
    r"while|otherwise|there\s+(?:is|are|has\s+been|have\s+been)|with\s+(?:new|increased|persistent|"
    r"a|an|small|large|mild|moderate|trace|adjacent|associated))\b|[;:]|"
    r",\s*and\s+(?:the|a|an|there|mild|moderate|small|large)\b",
    re.IGNORECASE,
)
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=\S)|\n\s*\n|\n(?=\s*\d+[.)]\s)|(?<=\S)\s+(?=\d+[.)]\s)")


def _alt(fragments: Iterable[str]) -> str:
    return "|".join(f"(?:{f})" for f in fragments)


def _group(name: str) -> str:
    return "o" + re.sub(r"\W", "_", name)


_GROUP_OF = {_group(o): o for o in CHEXPERT_OBSERVATIONS}
_NORMAL_GROUP_OF = {"n" + _group(o): o for o in NORMAL_MENTIONS}
# One regex for all observations: a single scan per clause. Normal patterns come first so
# "heart size is normal" is one negative mention, not a bare "heart" fragment.
# The leading "\b(?=[a-z])" lets the engine reject mid-word and non-letter positions once,
# instead of once per observation group (about 3x faster on real reports).
_MENTION_RE = re.compile(
    r"\b(?=[a-z])(?:"
    + "|".join(
        [rf"(?P<n{_group(o)}>{_alt(p)})" for o, p in NORMAL_MENTIONS.items()]
        + [rf"(?P<{_group(o)}>{_alt(p)})" for o, p in MENTIONS.items()]
    )
    + ")",
    re.IGNORECASE,
)
_UNC_NEG_PRE_RE = re.compile(rf"\b(?:{_alt(_UNCERTAIN_NEGATED_PRE)})\b", re.IGNORECASE)
_UNC_NEG_POST_RE = re.compile(rf"^\W*(?:\w+\s+){{0,2}}?(?:{_alt(_UNCERTAIN_NEGATED_POST)})\b", re.IGNORECASE)
_NEG_PRE_RE = re.compile(rf"\b(?:{_alt(NEGATION_CUES)})\b", re.IGNORECASE)
_NEG_POST_RE = re.compile(
    rf"^[\s,]*(?:(?:\w+|\(\w+\))\s+){{0,3}}?(?:{_alt(_NEGATION_POST)})(?!\w)", re.IGNORECASE
)
_UNC_PRE_RE = re.compile(rf"(?<!\w)(?:{_alt(_UNCERTAIN_PRE)})(?!\w)", re.IGNORECASE)
_UNC_POST_RE = re.compile(rf"^[\s,]*(?:{_alt(_UNCERTAIN_POST)})", re.IGNORECASE)
# Phrases that start with a negation word but negate nothing ("no change in the effusion").
_PSEUDO_NEGATION = re.compile(
    r"\b(?:no|without)\s+(?:significant\s+|interval\s+|appreciable\s+|definite\s+)?"
    r"(?:change|increase|decrease|worsening|improvement|progression)\b|\bnot\s+only\b|"
    r"\bno\s+further\b|\bnot\s+(?:significantly\s+)?changed\b",
    re.IGNORECASE,
)
# "or" is a hedge only between findings ("atelectasis or consolidation"), not in a negated list.
_OR_ONLY = re.compile(r"^\s*(?:either|or)\s*$", re.IGNORECASE)


def _clauses(sentence: str) -> list[tuple[int, int]]:
    """(start, end) of the clauses of one sentence, split at scope breakers."""
    cuts = [0]
    for match in _SCOPE_BREAK.finditer(sentence):
        cuts.append(match.start())
    cuts.append(len(sentence))
    return [(a, b) for a, b in itertools.pairwise(cuts) if b > a]


def _classify(clause: str, start: int, end: int) -> float:
    """Label of the mention clause[start:end] from the words around it in its clause."""
    before, after = _PSEUDO_NEGATION.sub(" ", clause[:start]), clause[end:]
    if _UNC_NEG_PRE_RE.search(before) or _UNC_NEG_POST_RE.search(after):
        return UNCERTAIN
    if _NEG_PRE_RE.search(before) or _NEG_POST_RE.search(after):
        return NEGATIVE
    for match in _UNC_PRE_RE.finditer(before):
        # A bare "or" before a mention hedges only when a finding precedes it ("A or B").
        if _OR_ONLY.match(match.group(0)) and not _MENTION_RE.search(before[: match.start()]):
            continue
        return UNCERTAIN
    if _UNC_POST_RE.search(after):
        return UNCERTAIN
    return POSITIVE


class Mention(NamedTuple):
    """One mention of an observation: its label and where it sits (clause[start:end] is the
    matched words; a normal-pattern mention such as "heart size is normal" has normal=True)."""

    observation: str
    label: float
    clause: str
    start: int
    end: int
    normal: bool


def iter_mentions(text: str) -> Iterator[Mention]:
    """Every mention of a CheXpert observation in `text`, classified in its clause."""
    for sentence in _SENTENCE.split(text):
        if not sentence or not sentence.strip():
            continue
        for a, b in _clauses(sentence):
            clause = sentence[a:b]
            for match in _MENTION_RE.finditer(clause):
                group = match.lastgroup
                if group in _NORMAL_GROUP_OF:
                    yield Mention(_NORMAL_GROUP_OF[group], NEGATIVE, clause, match.start(),
                                  match.end(), True)
                    continue
                label = _classify(clause, match.start(), match.end())
                yield Mention(_GROUP_OF[group], label, clause, match.start(), match.end(), False)


def label_text(text: str) -> dict[str, float | None]:
    """Labels of one report (see module docstring); keys are CHEXPERT_OBSERVATIONS."""
    if not isinstance(text, str):
        raise TypeError(f"report text must be str, got {type(text).__name__}")
    found: dict[str, list[float]] = {}
    for mention in iter_mentions(text):
        found.setdefault(mention.observation, []).append(mention.label)
    labels: dict[str, float | None] = {o: None for o in CHEXPERT_OBSERVATIONS}
    for observation, values in found.items():
        if POSITIVE in values:
            labels[observation] = POSITIVE
        elif UNCERTAIN in values:
            labels[observation] = UNCERTAIN
        else:
            labels[observation] = NEGATIVE
    if not any(labels[p] in (POSITIVE, UNCERTAIN) for p in PATHOLOGIES):
        labels["No Finding"] = POSITIVE
    return labels


LABELS_SCHEMA: dict[str, pl.DataType] = {o: pl.Float64 for o in CHEXPERT_OBSERVATIONS}


# Mention scoping grows with (mentions per clause)^2: a pathological multi-page cell must not
# stall a stage. Real reports are far shorter (quality.max_report_chars defaults to 4,000).
MAX_LABEL_CHARS = 20_000


def label_reports(texts: list[str]) -> pl.DataFrame:
    """One Float64 column per CheXpert observation, one row per text, in input order.

    None or empty texts get all-null rows (nothing is mentioned, and no claim of "No Finding").
    Texts are labelled on their first MAX_LABEL_CHARS characters.
    """
    if isinstance(texts, str):
        raise TypeError("label_reports needs a list of texts, got one str")
    rows = []
    for text in texts:
        if text is None or not str(text).strip():
            rows.append({o: None for o in CHEXPERT_OBSERVATIONS})
        else:
            rows.append(label_text(str(text)[:MAX_LABEL_CHARS]))
    return pl.DataFrame(rows, schema=LABELS_SCHEMA)
