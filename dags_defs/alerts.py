"""Failure alerts: one JSON line per failed run, and an optional webhook POST.

`run_failure_alerts` appends {"run_id", "job", "failed_steps", "error", "time", ...} to
`<paths.reports_dir>/alerts/failed_runs.jsonl` for every failed run of this code location, and
POSTs the same JSON to $CXR_ALERT_WEBHOOK when it is set (Slack/Teams-style incoming webhook,
or any HTTP endpoint). A webhook that is down is logged, never raised: the alert line is the
record, and a sensor error would only hide the original failure.
"""

from __future__ import annotations

import json
import os
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from dagster import DefaultSensorStatus, RunFailureSensorContext, run_failure_sensor

from dags_defs.resources import PipelineConfig

WEBHOOK_ENV = "CXR_ALERT_WEBHOOK"
WEBHOOK_TIMEOUT_S = 5.0
ALERTS_FILE = Path("alerts") / "failed_runs.jsonl"


def _first_line(text: str | None) -> str:
    for line in (text or "").splitlines():
        if line.strip():
            return line.strip()
    return ""


def failure_record(context: RunFailureSensorContext) -> dict:
    """The alert for one failed run: which job, which steps, the first line of the error."""
    run = context.dagster_run
    steps, errors = [], []
    for event in context.get_step_failure_events():
        steps.append(event.step_key)
        data = event.step_failure_data
        error = data.error if data is not None else None
        # A step error wrapped by Dagster ("Error occurred while executing op ...") carries the
        # user's exception as its cause: report that, it names the actual problem.
        while error is not None and error.cause is not None and "dagster" in (error.cls_name or "").lower():
            error = error.cause
        if error is not None:
            errors.append(f"{error.cls_name}: {_first_line(error.message).removeprefix(f'{error.cls_name}: ')}")
    if not errors:  # a run that failed outside any step (launch, resources, ...)
        errors.append(_first_line(context.failure_event.message))
    return {
        "run_id": run.run_id,
        "job": run.job_name,
        "failed_steps": steps,
        "error": errors[0],
        "errors": errors,
        "tags": {k: v for k, v in run.tags.items() if not k.startswith(".dagster")},
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def alerts_path(pipeline: PipelineConfig) -> Path:
    """reports_dir/alerts/failed_runs.jsonl; <root>/reports when params cannot be loaded (a
    broken params file is a likely reason for the failure being reported)."""
    from cxr_assets.paths import project_root

    try:
        _, paths = pipeline.load()
        return paths.reports_dir / ALERTS_FILE
    except Exception:  # noqa: BLE001 - never lose the alert over the config that broke the run
        root = Path(pipeline.root).resolve() if pipeline.root else project_root()
        return root / "reports" / ALERTS_FILE


def append_alert(path: Path, record: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, sort_keys=True, default=str) + "\n"
    # One write of one line in append mode: concurrent writers never interleave within a line.
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line)
    return path


def post_webhook(url: str, record: dict, timeout: float = WEBHOOK_TIMEOUT_S) -> int:
    """POST the record as JSON; returns the HTTP status (raises on network / HTTP errors)."""
    body = json.dumps(record, sort_keys=True, default=str).encode("utf-8")
    request = urllib.request.Request(
        url, data=body, method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "cxr-alerts"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return int(response.status)


@run_failure_sensor(
    name="run_failure_alerts",
    description=f"Appends each failed run to <reports_dir>/{ALERTS_FILE.as_posix()} and POSTs it "
    f"to ${WEBHOOK_ENV} when set.",
    default_status=DefaultSensorStatus.RUNNING,
)
def run_failure_alerts(context: RunFailureSensorContext, pipeline: PipelineConfig) -> None:
    record = failure_record(context)
    path = append_alert(alerts_path(pipeline), record)
    context.log.info(f"run {record['run_id']} ({record['job']}) failed: {record['error']}; "
                     f"alert written to {path}")
    url = os.environ.get(WEBHOOK_ENV, "").strip()
    if not url:
        return
    try:
        status = post_webhook(url, record)
        context.log.info(f"alert for run {record['run_id']} posted to ${WEBHOOK_ENV} (HTTP {status})")
    except Exception as error:  # noqa: BLE001 - a webhook outage must not fail the sensor
        context.log.warning(f"alert webhook ${WEBHOOK_ENV} failed for run {record['run_id']}: "
                            f"{type(error).__name__}: {error}")
