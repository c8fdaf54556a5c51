"""Report variants for text-encoder training: same meaning, different style, plus hard negatives.

The method's text tower learns that "No PTX. Sm L eff." and "No pneumothorax. Small left pleural
effusion." are the same report, and that "Small right pleural effusion." is not. For every report
this module writes (anchor, positive, hard_negative) rows of these kinds:

| variant_kind | anchor | positive |
|---|---|---|
| abbreviated | report | long forms contracted (abbreviations.abbreviate) |
| expanded | report | abbreviations expanded (only when the report has some) |
| impression_only | report | its impression (when it has findings and an impression) |
| findings_to_impression | findings | impression (when it has both) |
| sentence_shuffled | report | sentences shuffled within each section (>= 2 sentences) |
| style_rewrite | report | rule-based house style: telegraphic, numbered, or headed |

A variant is written only when it differs from its anchor; style_rewrite always differs, so
every report has at least one row. The hard negative is the positive with one meaning-changing
edit: a negation flip ("No effusion" -> "Effusion"), a left/right swap or a finding swap
("effusion" -> "pneumothorax"); null when none applies. Everything is deterministic in
(seed, study_id, kind).
"""

from __future__ import annotations

import random
import re

import polars as pl
from tqdm.auto import tqdm

from cxr_assets.reports.abbreviations import abbreviate, expand

VARIANT_KINDS = (
    "abbreviated",
    "expanded",
    "impression_only",
    "sentence_shuffled",
    "style_rewrite",
    "findings_to_impression",
)
NEGATIVE_KINDS = ("negation_flip", "laterality_swap", "finding_swap")

VARIANTS_SCHEMA: dict[str, pl.DataType] = {
    "study_id": pl.String,
    "split": pl.String,
    "variant_kind": pl.String,
    "anchor": pl.String,
    "positive": pl.String,
    "hard_negative": pl.String,
    "negative_kind": pl.String,
}

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")

# --- hard negatives ---------------------------------------------------------------------------
_NEGATED = re.compile(
    r"\b(?:no|without)\s+(?:(?:evidence|signs?)\s+of\s+|definite\s+|focal\s+|acute\s+)?(?=\w)",
    re.IGNORECASE,
)
_THERE_IS = re.compile(r"\b(there\s+(?:is|are))\s+(?!no\b)(?:an?\s+)?", re.IGNORECASE)
_NORMAL = re.compile(r"\bnormal\b", re.IGNORECASE)
_LATERALITY = re.compile(r"\b(left|right|Left|Right|LEFT|RIGHT)\b")
_SWAP_SIDE = {"left": "right", "right": "left", "Left": "Right", "Right": "Left",
              "LEFT": "RIGHT", "RIGHT": "LEFT"}
# Finding swaps keep the sentence grammatical and change the clinical meaning.
_FINDING_SWAPS = (
    ("pleural effusion", "pneumothorax"),
    ("effusion", "pneumothorax"),
    ("pneumothorax", "pleural effusion"),
    ("atelectasis", "consolidation"),
    ("consolidation", "atelectasis"),
    ("pneumonia", "pulmonary edema"),
    ("edema", "pneumonia"),
    ("cardiomegaly", "pneumothorax"),
    ("nodule", "fracture"),
    ("fracture", "nodule"),
    ("opacity", "pneumothorax"),
    ("opacities", "effusions"),
)
_FINDING_RE = re.compile(
    r"\b(" + "|".join(re.escape(a) for a, _ in _FINDING_SWAPS) + r")\b", re.IGNORECASE
)
_SWAP_OF = {a: b for a, b in _FINDING_SWAPS}


def _match_case(replacement: str, original: str) -> str:
    if original.isupper():
        return replacement.upper()
    if original[:1].isupper():
        return replacement[:1].upper() + replacement[1:]
    return replacement


def negation_flip(text: str, rng: random.Random) -> str | None:
    """Remove one negation ("No effusion" -> "Effusion") or add one ("There is X" -> "There is no X")."""
    negations = list(_NEGATED.finditer(text))
    if negations:
        m = negations[rng.randrange(len(negations))]
        rest = text[m.end():]
        at_start = m.start() == 0 or text[: m.start()].rstrip().endswith((".", ":", "\n"))
        rest = rest[:1].upper() + rest[1:] if at_start else rest
        word = m.group(0).split()[0].lower()
        middle = "" if word == "no" else "with "
        return text[: m.start()] + middle + rest
    m = _THERE_IS.search(text)
    if m:
        return text[: m.start()] + m.group(1) + " no " + text[m.end():]
    m = _NORMAL.search(text)
    if m:  # "Normal chest." -> "Abnormal chest."
        return text[: m.start()] + _match_case("abnormal", m.group(0)) + text[m.end():]
    return None


def laterality_swap(text: str) -> str | None:
    """Every left <-> right swapped (None when the text has no side)."""
    if not _LATERALITY.search(text):
        return None
    return _LATERALITY.sub(lambda m: _SWAP_SIDE[m.group(1)], text)


def finding_swap(text: str, rng: random.Random) -> str | None:
    """One finding word replaced by a different finding (None when none is present)."""
    hits = list(_FINDING_RE.finditer(text))
    if not hits:
        return None
    m = hits[rng.randrange(len(hits))]
    replacement = _match_case(_SWAP_OF[m.group(1).lower()], m.group(1))
    return text[: m.start()] + replacement + text[m.end():]


def hard_negative(text: str, rng: random.Random) -> tuple[str | None, str | None]:
    """(negative text, kind) from the first applicable edit in a seeded random order."""
    order = list(NEGATIVE_KINDS)
    rng.shuffle(order)
    for kind in order:
        if kind == "negation_flip":
            out = negation_flip(text, rng)
        elif kind == "laterality_swap":
            out = laterality_swap(text)
        else:
            out = finding_swap(text, rng)
        if out is not None and out != text:
            return out, kind
    return None, None


# --- positives ---------------------------------------------------------------------------------
def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def shuffle_sentences(section: str | None, rng: random.Random) -> str | None:
    if not section:
        return None
    parts = sentences(section)
    if len(parts) < 2:
        return " ".join(parts)
    original = list(parts)
    for _ in range(5):  # a shuffle that returns the same order teaches nothing
        rng.shuffle(parts)
        if parts != original:
            break
    return " ".join(parts)


_TELEGRAPHIC = (
    (re.compile(r"\bthere\s+(?:is|are)\s+(?:an?\s+)?", re.IGNORECASE), ""),
    (re.compile(r"\b(?:the\s+)?(\w+(?:\s+\w+)?)\s+(?:is|are)\s+(normal|clear|unremarkable|stable)",
                re.IGNORECASE), r"\1 \2"),
    (re.compile(r"\bthe\s+", re.IGNORECASE), ""),
    (re.compile(r"\bis\s+(?:seen|noted|identified|present)\b", re.IGNORECASE), ""),
)


def _capitalise_sentences(text: str) -> str:
    return " ".join(s[:1].upper() + s[1:] for s in sentences(text))


def style_rewrite(findings: str | None, impression: str | None, text: str,
                  rng: random.Random) -> str:
    """One of three house styles; always returns a text different from `text`."""
    styles = ["telegraphic", "numbered", "headed"]
    rng.shuffle(styles)
    for style in styles:
        if style == "telegraphic":
            out = text
            for pattern, repl in _TELEGRAPHIC:
                out = pattern.sub(repl, out)
            out = _capitalise_sentences(" ".join(out.split()))
        elif style == "numbered":
            out = " ".join(f"{i}. {s}" for i, s in enumerate(sentences(text), 1))
        else:
            parts = []
            if findings:
                parts.append(f"FINDINGS: {' '.join(findings.split())}")
            if impression:
                parts.append(f"IMPRESSION: {' '.join(impression.split())}")
            out = "\n".join(parts) or f"IMPRESSION: {text}"
        if out.strip() and out != text:
            return out
    return f"IMPRESSION: {text}"  # unreachable in practice: "headed" always adds a header


def report_variants(
    study_id: str,
    split: str,
    text: str,
    findings: str | None,
    impression: str | None,
    seed: int,
    kinds: tuple[str, ...] = VARIANT_KINDS,
    abbreviation_rate: float = 0.8,
) -> list[dict]:
    """The variant rows of one report (see module docstring)."""
    unknown = set(kinds) - set(VARIANT_KINDS)
    if unknown:
        raise ValueError(f"unknown variant kinds {sorted(unknown)}; known: {', '.join(VARIANT_KINDS)}")
    findings = " ".join(findings.split()) if findings and findings.strip() else None
    impression = " ".join(impression.split()) if impression and impression.strip() else None
    rows: list[dict] = []

    def rng(kind: str, part: str = "") -> random.Random:
        return random.Random(f"{seed}:{study_id}:{kind}:{part}")

    def add(kind: str, anchor: str, positive: str | None) -> None:
        if not positive or positive == anchor:
            return
        negative, negative_kind = hard_negative(positive, rng(kind, "negative"))
        rows.append({"study_id": study_id, "split": split, "variant_kind": kind, "anchor": anchor,
                     "positive": positive, "hard_negative": negative,
                     "negative_kind": negative_kind})

    for kind in kinds:
        if kind == "abbreviated":
            add(kind, text, abbreviate(text, seed=seed, rate=abbreviation_rate))
        elif kind == "expanded":
            add(kind, text, expand(text))
        elif kind == "impression_only":
            if findings and impression:
                add(kind, text, impression)
        elif kind == "findings_to_impression":
            if findings and impression:
                add(kind, findings, impression)
        elif kind == "sentence_shuffled":
            r = rng(kind)
            if findings or impression:
                parts = [shuffle_sentences(findings, r), shuffle_sentences(impression, r)]
                add(kind, text, " ".join(p for p in parts if p))
            else:
                add(kind, text, shuffle_sentences(text, r))
        elif kind == "style_rewrite":
            add(kind, text, style_rewrite(findings, impression, text, rng(kind)))
    if not rows:  # e.g. kinds without style_rewrite on a one-sentence note: still one row
        add("style_rewrite", text, style_rewrite(findings, impression, text, rng("style_rewrite")))
    return rows


def build_variants(
    report_texts: pl.DataFrame,
    splits: pl.DataFrame,
    seed: int,
    kinds: tuple[str, ...] = VARIANT_KINDS,
    abbreviation_rate: float = 0.8,
    progress: bool = True,
) -> pl.DataFrame:
    """The variants table (VARIANTS_SCHEMA) for every report that has a split."""
    need = {"study_id", "report_for_training", "findings", "impression"}
    missing = need - set(report_texts.columns)
    if missing:
        raise ValueError(f"report_texts lacks column(s) {sorted(missing)}")
    if not {"study_id", "split"} <= set(splits.columns):
        raise ValueError("splits needs columns study_id and split")
    joined = report_texts.join(splits.select("study_id", "split"), on="study_id", how="inner")
    rows: list[dict] = []
    for row in tqdm(joined.iter_rows(named=True), total=joined.height, desc="report_variants",
                    unit="report", disable=not progress):
        text = row["report_for_training"]
        if not text:
            continue
        rows.extend(report_variants(row["study_id"], row["split"], text, row["findings"],
                                    row["impression"], seed, kinds, abbreviation_rate))
    return pl.DataFrame(rows, schema=VARIANTS_SCHEMA)
