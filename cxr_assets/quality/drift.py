"""Drift of the report profile against a stored reference profile.

The reference is a small JSON of dataset-level shares (`DRIFT_MEASURES`) written from a profile
the team accepted (`write_reference`). The `reports_drift` GX suite checks that each current
share lies within reference +- quality.drift_tolerance; its bounds reach the suite as
${drift.<measure>_low} / ${drift.<measure>_high} placeholders. A drift is a warning, not a stop:
a new source legitimately changes the mix, but someone should look.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

# profile column -> what its mean is (all are shares or per-word rates in [0, 1]).
DRIFT_MEASURES: dict[str, str] = {
    "impression_only": "share of impression-only reports",
    "has_findings": "share of reports with a findings section",
    "templated_normal": "share of templated normal reports",
    "comparison_to_prior": "share of reports comparing to a prior",
    "numbered_list": "share of reports written as numbered lists",
    "abbreviation_density": "abbreviations per word",
}


def reference_measures(profile: pl.DataFrame) -> dict[str, float]:
    """Mean of each drift measure over a profile table (report_profile.parquet)."""
    missing = set(DRIFT_MEASURES) - set(profile.columns)
    if missing:
        raise ValueError(f"profile lacks column(s) {sorted(missing)}")
    if profile.height == 0:
        raise ValueError("cannot build a reference from an empty profile")
    return {m: round(float(profile[m].cast(pl.Float64).mean()), 4) for m in DRIFT_MEASURES}


def write_reference(profile: pl.DataFrame, path: Path, note: str = "") -> Path:
    """Store the reference profile (sorted keys: a stable file under version control)."""
    payload = {"measures": reference_measures(profile), "n_reports": profile.height, "note": note}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return path


def load_reference(path: Path) -> dict[str, float]:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"reference profile not found: {path}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: invalid JSON ({error})") from None
    measures = data.get("measures") if isinstance(data, dict) else None
    if not isinstance(measures, dict) or set(DRIFT_MEASURES) - set(measures):
        raise ValueError(f"{path}: needs 'measures' with {sorted(DRIFT_MEASURES)}")
    return {k: float(measures[k]) for k in DRIFT_MEASURES}


def drift_overrides(reference: dict[str, float], tolerance: float) -> dict[str, float]:
    """${drift.<measure>_low/_high} values for the reports_drift suite."""
    out: dict[str, float] = {}
    for measure, value in reference.items():
        out[f"drift.{measure}_low"] = round(max(0.0, value - tolerance), 4)
        out[f"drift.{measure}_high"] = round(min(1.0, value + tolerance), 4)
    return out
