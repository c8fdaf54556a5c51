"""Style profile of a report collection: how heterogeneous is the text the encoder must handle?

Per report (on `report_for_training`, the findings + impression text the encoder sees): length,
section mix, impression-only, chest-radiology abbreviations, hedging, negation, comparison to a
prior, numbered lists, de-identification tokens and templated-normal phrasing. Dataset level:
shares and means, overall and per source, plus a few plots.
"""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl

# Chest-radiology abbreviations come from the project's lexicon (reports/abbreviations.py):
# upper-case acronyms match case-sensitively (so "cm" as centimetres is not counted), lower-case
# shorthands match any case. The two tuples are kept for callers that list them.
from cxr_assets.reports.abbreviations import LEXICON as _LEXICON
from cxr_assets.reports.abbreviations import count_abbreviations
from cxr_assets.reports.labeler import NEGATION_CUES  # one list: the labeler's

ABBREVIATIONS_CASE_SENSITIVE = tuple(e.short for e in _LEXICON if e.case_sensitive and len(e.short) > 1)
ABBREVIATIONS_ANY_CASE = tuple(e.short for e in _LEXICON if not e.case_sensitive)
HEDGING = (
    r"may",
    r"might",
    r"possibl[ey]",
    r"probabl[ey]",
    r"likely",
    r"unlikely",
    r"could",
    r"cannot\s+(?:be\s+)?(?:entirely\s+)?exclude[d]?",
    r"can\s*not\s+be\s+(?:entirely\s+)?excluded",
    r"not\s+(?:be\s+)?excluded",
    r"questionabl[ey]",
    r"suspicious",
    r"suggest(?:s|ive|ed)?",
    r"equivocal",
    r"concerning\s+for",
    r"versus",
    r"vs\.?",
    r"borderline",
    r"presumabl[ey]",
)
COMPARISON = (
    r"compared\s+(?:to|with)",
    r"comparison",
    r"prior",
    r"previous(?:ly)?",
    r"interval(?:ly)?",
    r"unchanged",
    r"again\s+(?:seen|noted|demonstrated|identified)",
    r"since",
    r"persistent",
    r"new",
    r"improved",
    r"worsen(?:ed|ing)",
)
NORMAL_TEMPLATES = (
    r"no\s+acute\s+cardiopulmonary\s+(?:process|abnormality|disease|findings?)",
    r"no\s+acute\s+(?:intrathoracic|pulmonary)\s+(?:process|abnormality|disease|findings?)",
    r"(?:the\s+)?lungs\s+are\s+clear",
    r"heart\s+size\s+(?:is\s+)?(?:normal|within\s+normal\s+limits)",
    r"(?:cardiac|cardiomediastinal)\s+silhouette\s+(?:is\s+)?(?:normal|within\s+normal\s+limits|unremarkable)",
    r"no\s+(?:focal\s+)?(?:consolidation|airspace\s+disease),?\s+(?:pleural\s+)?effusion,?\s+or\s+pneumothorax",
    r"no\s+pneumothorax\s+or\s+(?:pleural\s+)?effusion",
    r"no\s+pleural\s+effusion\s+or\s+pneumothorax",
    r"normal\s+chest(?:\s+(?:x-?ray|radiograph))?",
    r"no\s+active\s+(?:cardiopulmonary\s+)?disease",
)


def _words(patterns: tuple[str, ...]) -> str:
    return "|".join(patterns)


_HEDGING = re.compile(rf"\b(?:{_words(HEDGING)})(?!\w)", re.IGNORECASE)
_NEGATION = re.compile(rf"\b(?:{_words(NEGATION_CUES)})\b", re.IGNORECASE)
_COMPARISON = re.compile(rf"\b(?:{_words(COMPARISON)})\b", re.IGNORECASE)
_NORMAL = re.compile(rf"\b(?:{_words(NORMAL_TEMPLATES)})\b", re.IGNORECASE)
_NUMBERED = re.compile(r"(?:^|\s)1[.)]\s+\S.*?(?:^|\s)2[.)]\s+\S", re.DOTALL)
# Raw de-identification tokens, and the marker report_texts puts in their place.
_DEID = re.compile(r"X{3,}|_{2,}|\[\*\*.*?\*\*\]|\[DEID\]")
_NO_COMPARISON = re.compile(
    r"^\W*(?:none|n/?a|not\s+available|no\s+(?:prior|previous|comparison))\b.*$",
    re.IGNORECASE | re.DOTALL,
)

PROFILE_SCHEMA: dict[str, pl.DataType] = {
    "study_id": pl.String,
    "patient_id": pl.String,
    "source": pl.String,
    "n_chars": pl.Int64,
    "n_words": pl.Int64,
    "has_findings": pl.Boolean,
    "has_impression": pl.Boolean,
    "impression_only": pl.Boolean,
    "abbreviation_count": pl.Int64,
    "abbreviation_density": pl.Float64,
    "hedging_count": pl.Int64,
    "negation_count": pl.Int64,
    "comparison_to_prior": pl.Boolean,
    "numbered_list": pl.Boolean,
    "deid_tokens": pl.Int64,
    "templated_normal": pl.Boolean,
}


def _present(value: str | None) -> bool:
    return bool(value and value.strip())


def profile_text(
    text: str,
    findings: str | None = None,
    impression: str | None = None,
    comparison: str | None = None,
) -> dict:
    """Style measures of one report's training text (see module docstring)."""
    words = text.split()
    n_abbr = count_abbreviations(text)
    has_findings, has_impression = _present(findings), _present(impression)
    comparison_section = _present(comparison) and not _NO_COMPARISON.match(comparison or "")
    normal_hits = len(_NORMAL.findall(text))
    # A templated normal report is built from stock phrases: two of them, or a stock impression.
    stock_impression = bool(
        impression and _NORMAL.fullmatch(impression.strip().rstrip(".").strip())
    )
    return {
        "n_chars": len(text),
        "n_words": len(words),
        "has_findings": has_findings,
        "has_impression": has_impression,
        "impression_only": has_impression and not has_findings,
        "abbreviation_count": n_abbr,
        "abbreviation_density": n_abbr / len(words) if words else 0.0,
        "hedging_count": len(_HEDGING.findall(text)),
        "negation_count": len(_NEGATION.findall(text)),
        "comparison_to_prior": bool(comparison_section or _COMPARISON.search(text)),
        "numbered_list": bool(_NUMBERED.search(text)),
        "deid_tokens": len(_DEID.findall(text)),
        "templated_normal": normal_hits >= 2 or stock_impression,
    }


def profile_reports(report_texts: pl.DataFrame) -> pl.DataFrame:
    """One row of style measures per report (input: the report_texts table)."""
    if "report_for_training" not in report_texts.columns or "study_id" not in report_texts.columns:
        raise ValueError("report_texts needs columns study_id and report_for_training")
    rows = []
    for row in report_texts.iter_rows(named=True):
        text = row.get("report_for_training") or ""
        rows.append(
            {
                "study_id": row["study_id"],
                "patient_id": row.get("patient_id"),
                "source": row.get("source"),
                **profile_text(
                    text, row.get("findings"), row.get("impression"), row.get("comparison")
                ),
            }
        )
    return pl.DataFrame(rows, schema=PROFILE_SCHEMA)


def _measures(profile: pl.DataFrame) -> dict:
    if profile.height == 0:
        return {"n_reports": 0}

    def share(column: str) -> float:
        return round(float(profile[column].cast(pl.Float64).mean()), 4)

    def share_positive(column: str) -> float:
        return round(float((profile[column] > 0).cast(pl.Float64).mean()), 4)

    return {
        "n_reports": profile.height,
        "impression_only_share": share("impression_only"),
        "findings_share": share("has_findings"),
        "impression_share": share("has_impression"),
        "mean_n_chars": round(float(profile["n_chars"].mean()), 1),
        "median_n_words": float(profile["n_words"].median()),
        "mean_abbreviation_density": round(float(profile["abbreviation_density"].mean()), 4),
        "abbreviation_share": share_positive("abbreviation_count"),
        "hedging_share": share_positive("hedging_count"),
        "mean_negations": round(float(profile["negation_count"].mean()), 2),
        "comparison_share": share("comparison_to_prior"),
        "numbered_list_share": share("numbered_list"),
        "deid_share": share_positive("deid_tokens"),
        "templated_normal_share": share("templated_normal"),
    }


def summarize_profile(profile: pl.DataFrame) -> dict:
    """Dataset-level numbers (JSON-serialisable), overall and under "by_source"."""
    summary = _measures(profile)
    by_source = {}
    if profile.height and "source" in profile.columns:
        for source in sorted(profile["source"].fill_null("unknown").unique().to_list()):
            part = profile.filter(pl.col("source").fill_null("unknown") == source)
            by_source[source] = _measures(part)
    summary["by_source"] = by_source
    return summary


def plot_profile(profile: pl.DataFrame, out_dir: Path) -> list[Path]:
    """Length per source, section mix and abbreviation density plots as PNG files."""
    # Figure + Agg canvas directly: no pyplot global state, works headless and in threads.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sources = (
        sorted(profile["source"].fill_null("unknown").unique().to_list()) if profile.height else []
    )
    labelled = profile.with_columns(pl.col("source").fill_null("unknown"))
    written: list[Path] = []

    def save(fig: Figure, name: str) -> None:
        FigureCanvasAgg(fig)
        fig.tight_layout()
        path = out_dir / name
        fig.savefig(path, dpi=100)
        written.append(path)

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for source in sources:
        values = labelled.filter(pl.col("source") == source)["n_chars"].to_list()
        ax.hist(values, bins=30, alpha=0.5, label=f"{source} (n={len(values)})")
    ax.set(
        xlabel="characters in findings + impression",
        ylabel="reports",
        title="Report length by source",
    )
    if sources:
        ax.legend()
    save(fig, "length_by_source.png")

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    mix = labelled.with_columns(
        pl.when(pl.col("has_findings") & pl.col("has_impression"))
        .then(pl.lit("findings + impression"))
        .when(pl.col("impression_only"))
        .then(pl.lit("impression only"))
        .when(pl.col("has_findings"))
        .then(pl.lit("findings only"))
        .otherwise(pl.lit("neither"))
        .alias("mix")
    )
    categories = ["findings + impression", "findings only", "impression only", "neither"]
    bottom = [0] * len(sources)
    for category in categories:
        counts = [
            mix.filter((pl.col("source") == s) & (pl.col("mix") == category)).height
            for s in sources
        ]
        ax.bar(sources, counts, bottom=bottom, label=category)
        bottom = [b + c for b, c in zip(bottom, counts)]
    ax.set(ylabel="reports", title="Section mix by source")
    ax.legend(fontsize="small")
    save(fig, "section_mix.png")

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.hist(profile["abbreviation_density"].to_list() if profile.height else [], bins=30)
    ax.set(xlabel="abbreviations per word", ylabel="reports", title="Abbreviation density")
    save(fig, "abbreviation_density.png")
    return written
