"""champion_model: promote the challenger to `champion` only when it is better and no less robust.

The challenger replaces the champion when its primary metric beats the champion's by at least
`registry.promotion_margin` (or when there is no champion yet) and none of the robustness
metrics (`registry.robustness_metrics`, e.g. recall on impression-only or abbreviation-heavy
reports) dropped by more than `registry.robustness_tolerance`. A version rolled back by hand
(`cxr rollback`) is never re-promoted automatically. The decision and both versions are
recorded in reports/champion.json, reports/champion_history.jsonl and as model-version tags;
the blocking check passes when the `champion` alias points at the version the decision chose.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

from cxr_assets.config import Params
from cxr_assets.paths import ProjectPaths
from cxr_assets.stages.base import CheckOutcome, StageResult, require, write_json

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


def run(params: Params, paths: ProjectPaths, progress: bool = True) -> StageResult:
    from cxr_assets.registry.tracking import CHAMPION, configure_mlflow, version_by_alias

    metrics_file = paths.evaluation_dir / "metrics.json"
    require("champion_model", {"evaluation_report": [metrics_file],
                               "clip_model": [paths.clip_model_dir / "registry.json"]})
    registry = json.loads((paths.clip_model_dir / "registry.json").read_text())
    metric = params.evaluation.primary_metric
    robust_keys = list(params.registry.robustness_metrics)
    evaluated = json.loads(metrics_file.read_text())
    if metric not in evaluated:
        raise KeyError(f"evaluation.primary_metric {metric!r} is not in {metrics_file}")
    challenger_score = float(evaluated[metric])
    challenger_robust = {k: float(evaluated[k]) for k in robust_keys if k in evaluated}
    name, version = registry["model_name"], str(registry["version"])
    tolerance = params.registry.robustness_tolerance

    client = configure_mlflow(params, paths)
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
        promote, reason = decide(challenger_score, champion_score, params.registry.promotion_margin,
                                 challenger_robust, champion_robust, tolerance)
    if promote:
        client.set_registered_model_alias(name, CHAMPION, version)
        if champion is not None:
            client.set_model_version_tag(name, version, PREVIOUS_TAG, str(champion.version))
    decision = {
        "decided_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "model_name": name, "metric": metric, "margin": params.registry.promotion_margin,
        "robustness_tolerance": tolerance,
        "challenger_version": version, "challenger_score": challenger_score,
        "challenger_robustness": challenger_robust,
        "previous_champion_version": str(champion.version) if champion else None,
        "previous_champion_score": champion_score, "previous_champion_robustness": champion_robust,
        "robustness_regressions": robustness_regressions(challenger_robust, champion_robust, tolerance),
        "promoted": promote, "reason": reason,
    }
    client.set_model_version_tag(name, version, "promotion_decision",
                                 ("promoted: " if promote else "kept champion: ") + reason)
    write_json(paths.champion_file, decision)
    append_history(paths, {"event": "decision", **decision,
                           "champion_after": version if promote else decision["previous_champion_version"]})

    current = version_by_alias(client, name, CHAMPION)
    expected = version if promote else decision["previous_champion_version"]
    current_score = tagged_metrics(current, [metric]).get(metric, float("nan"))
    # The alias must point where the decision put it, at a version that was evaluated.
    healthy = current is not None and str(current.version) == expected and not math.isnan(current_score)
    return StageResult(
        "champion_model",
        {"champion": paths.champion_file},
        {**{k: v for k, v in decision.items() if v not in (None, {})},
         "champion_version": str(current.version) if current else "none"},
        [CheckOutcome(
            "champion_is_best", bool(healthy), blocking=True,
            description="the champion alias points at the evaluated version the promotion rule chose",
            metadata={"champion_version": str(current.version) if current else "none",
                      "expected_version": expected or "none",
                      "champion_score": current_score, "challenger_score": challenger_score},
        )],
    )
