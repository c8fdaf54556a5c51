"""champion_model: promote the challenger to `champion` only when it is better.

The challenger replaces the champion when its primary metric beats the champion's by at least
`registry.promotion_margin` (or when there is no champion yet). The decision and both versions
are recorded in reports/champion.json and as model-version tags; the check passes when the
`champion` alias points at the best evaluated version.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

from cxr_assets.config import Params
from cxr_assets.paths import ProjectPaths
from cxr_assets.stages.base import CheckOutcome, StageResult, require, write_json


def decide(challenger_score: float, champion_score: float | None, margin: float) -> tuple[bool, str]:
    if champion_score is None:
        return True, "no champion yet"
    if challenger_score >= champion_score + margin:
        return True, f"challenger {challenger_score:.4f} >= champion {champion_score:.4f} + margin {margin}"
    return False, f"challenger {challenger_score:.4f} < champion {champion_score:.4f} + margin {margin}"


def run(params: Params, paths: ProjectPaths, progress: bool = True) -> StageResult:
    from cxr_assets.registry.tracking import CHAMPION, configure_mlflow, version_by_alias

    metrics_file = paths.evaluation_dir / "metrics.json"
    require("champion_model", {"evaluation_report": [metrics_file],
                               "clip_model": [paths.clip_model_dir / "registry.json"]})
    registry = json.loads((paths.clip_model_dir / "registry.json").read_text())
    metric = params.evaluation.primary_metric
    challenger_score = float(json.loads(metrics_file.read_text())[metric])
    name, version = registry["model_name"], str(registry["version"])

    client = configure_mlflow(params, paths)
    champion = version_by_alias(client, name, CHAMPION)
    champion_score = None
    if champion is not None and champion.version != version:
        tagged = champion.tags.get(metric)
        champion_score = float(tagged) if tagged is not None else None
    if champion is not None and champion.version == version:
        promote, reason = False, "challenger is already the champion"
    else:
        promote, reason = decide(challenger_score, champion_score, params.registry.promotion_margin)
    if promote:
        client.set_registered_model_alias(name, CHAMPION, version)
    decision = {
        "decided_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model_name": name, "metric": metric, "margin": params.registry.promotion_margin,
        "challenger_version": version, "challenger_score": challenger_score,
        "previous_champion_version": champion.version if champion else None,
        "previous_champion_score": champion_score, "promoted": promote, "reason": reason,
    }
    client.set_model_version_tag(name, version, "promotion_decision",
                                 ("promoted: " if promote else "kept champion: ") + reason)
    write_json(paths.champion_file, decision)

    current = version_by_alias(client, name, CHAMPION)
    tagged = current.tags.get(metric) if current else None
    current_score = float(tagged) if tagged is not None else float("nan")
    # Guard against a stale or hand-moved alias: the champion must not trail the challenger.
    healthy = current_score >= challenger_score - params.registry.promotion_margin - 1e-9
    return StageResult(
        "champion_model",
        {"champion": paths.champion_file},
        {**{k: v for k, v in decision.items() if v is not None},
         "champion_version": current.version if current else "none"},
        [CheckOutcome(
            "champion_is_best", bool(healthy), blocking=True,
            description="the champion alias points at a version at least as good as the challenger",
            metadata={"champion_version": current.version if current else "none",
                      "champion_score": current_score, "challenger_score": challenger_score},
        )],
    )
