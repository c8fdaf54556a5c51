"""champion_model: promote the challenger to `champion` only when it is better and no less robust.

The challenger replaces the champion when its primary metric beats the champion's by at least
`registry.promotion_margin` (or when there is no champion yet) and none of the robustness
metrics (`registry.robustness_metrics`, e.g. recall on impression-only or abbreviation-heavy
reports) dropped by more than `registry.robustness_tolerance`. A version rolled back by hand
(`cxr rollback`) is never re-promoted automatically. The decision and both versions are
recorded in reports/champion.json, reports/champion_history.jsonl and as model-version tags;
the blocking check passes when the `champion` alias points at the version the decision chose.
The rule and the registry moves live in `cxr_assets/registry/promotion.py`.
"""

from __future__ import annotations

import json
import math

from cxr_assets.config import Params
from cxr_assets.paths import ProjectPaths
from cxr_assets.stages.base import CheckOutcome, StageResult, require, write_json


def run(params: Params, paths: ProjectPaths, progress: bool = True) -> StageResult:
    from cxr_assets.registry.promotion import append_history, promote_if_better, tagged_metrics
    from cxr_assets.registry.tracking import CHAMPION, configure_mlflow, version_by_alias

    metrics_file = paths.evaluation_dir / "metrics.json"
    require("champion_model", {"evaluation_report": [metrics_file],
                               "clip_model": [paths.clip_model_dir / "registry.json"]})
    registry = json.loads((paths.clip_model_dir / "registry.json").read_text())
    metric = params.evaluation.primary_metric
    evaluated = json.loads(metrics_file.read_text())
    if metric not in evaluated:
        raise KeyError(f"evaluation.primary_metric {metric!r} is not in {metrics_file}")
    name, version = registry["model_name"], str(registry["version"])

    client = configure_mlflow(params, paths)
    decision = promote_if_better(client, name, version, evaluated, metric,
                                 list(params.registry.robustness_metrics),
                                 params.registry.promotion_margin,
                                 params.registry.robustness_tolerance)
    promote, challenger_score = decision["promoted"], decision["challenger_score"]
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
