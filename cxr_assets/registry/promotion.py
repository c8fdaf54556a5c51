"""Champion promotion: the rule, the registry moves it makes, and the audit trail.

The challenger replaces the champion when its primary metric beats the champion's by at least
the margin (or when there is no champion yet) and none of the robustness metrics dropped by
more than the tolerance. A version rolled back by hand (`cxr rollback`, tagged `demoted`) is
never re-promoted automatically. Every decision or alias move is one line of
reports/champion_history.jsonl (`append_history`), which `cxr rollback` writes too.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from cxr_assets.paths import ProjectPaths
from cxr_assets.registry.tracking import CHAMPION, version_by_alias

DEMOTED_TAG = "demoted"
PREVIOUS_TAG = "previous_champion"


def robustness_regressions(challenger: dict[str, float], champion: dict[str, float],
                           tolerance: float) -> dict[str, float]:
    """Robustness metrics the challenger lost by more than `tolerance` (metric -> drop)."""
    return {k: round(champion[k] - challenger[k], 6) for k in champion
            if k in challenger and champion[k] - challenger[k] > tolerance + 1e-12}


def decide(challenger_score: float, champion_score: float | None, margin: float,
           challenger_robust: dict[str, float] | None = None,
           champion_robust: dict[str, float] | None = None,
           tolerance: float = 0.0) -> tuple[bool, str]:
    """(promote?, why): better by the margin on the primary metric, no robustness regression."""
    if champion_score is None:
        return True, "no champion yet"
    if challenger_score < champion_score + margin:
        return False, f"challenger {challenger_score:.4f} < champion {champion_score:.4f} + margin {margin}"
    dropped = robustness_regressions(challenger_robust or {}, champion_robust or {}, tolerance)
    if dropped:
        worst = ", ".join(f"{k} -{v:.4f}" for k, v in sorted(dropped.items()))
        return False, f"robustness regression beyond tolerance {tolerance}: {worst}"
    return True, f"challenger {challenger_score:.4f} >= champion {champion_score:.4f} + margin {margin}"


def tagged_metrics(version, keys: list[str]) -> dict[str, float]:
    """Metrics recorded as tags on a registered version (by evaluation_report)."""
    out = {}
    for key in keys:
        value = version.tags.get(key) if version is not None else None
        if value is not None:
            out[key] = float(value)
    return out


def append_history(paths: ProjectPaths, event: dict) -> None:
    """One line per alias decision or move: the audit trail `cxr rollback` reads too."""
    history = paths.reports_dir / "champion_history.jsonl"
    history.parent.mkdir(parents=True, exist_ok=True)
    with history.open("a") as handle:
        handle.write(json.dumps(event, sort_keys=True, default=str) + "\n")


def promote_if_better(client, name: str, version: str, evaluated: dict[str, float], metric: str,
                      robust_keys: list[str], margin: float, tolerance: float) -> dict:
    """Apply the promotion rule to registered version `version` of model `name`, whose
    evaluation metrics are `evaluated` (they must hold `metric`): move the `champion` alias when
    it wins, tag the version with the decision, and return the decision (reports/champion.json)."""
    challenger_score = float(evaluated[metric])
    challenger_robust = {k: float(evaluated[k]) for k in robust_keys if k in evaluated}
    champion = version_by_alias(client, name, CHAMPION)
    challenger_version = client.get_model_version(name, version)
    champion_score, champion_robust = None, {}
    if champion is not None and str(champion.version) != version:
        champion_score = tagged_metrics(champion, [metric]).get(metric)
        champion_robust = tagged_metrics(champion, robust_keys)
    if champion is not None and str(champion.version) == version:
        promote, reason = False, "challenger is already the champion"
    elif DEMOTED_TAG in challenger_version.tags:
        promote, reason = False, f"challenger was rolled back by hand ({challenger_version.tags[DEMOTED_TAG]})"
    else:
        promote, reason = decide(challenger_score, champion_score, margin,
                                 challenger_robust, champion_robust, tolerance)
    if promote:
        client.set_registered_model_alias(name, CHAMPION, version)
        if champion is not None:
            client.set_model_version_tag(name, version, PREVIOUS_TAG, str(champion.version))
    client.set_model_version_tag(name, version, "promotion_decision",
                                 ("promoted: " if promote else "kept champion: ") + reason)
    return {
        "decided_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "model_name": name, "metric": metric, "margin": margin,
        "robustness_tolerance": tolerance,
        "challenger_version": version, "challenger_score": challenger_score,
        "challenger_robustness": challenger_robust,
        "previous_champion_version": str(champion.version) if champion else None,
        "previous_champion_score": champion_score, "previous_champion_robustness": champion_robust,
        "robustness_regressions": robustness_regressions(challenger_robust, champion_robust, tolerance),
        "promoted": promote, "reason": reason,
    }
