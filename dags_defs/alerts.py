"""Failure alerts: one JSON line per failed run, and an optional webhook POST.

`run_failure_alerts` sends {"run_id", "job", "failed_steps", "error", "time", ...} for every
failed run of this code location through the library's one alert path (`cxr_assets.alerts`):
a line appended to `<paths.reports_dir>/alerts/failed_runs.jsonl`, and the same JSON POSTed to
$CXR_ALERT_WEBHOOK when it is set. A webhook that is down is logged, never raised: the alert
line is the record, and a sensor error would only hide the original failure.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from dagster import DefaultSensorStatus, RunFailureSensorContext, run_failure_sensor

from cxr_assets.alerts import ALERTS_DIR, FAILED_RUNS, WEBHOOK_ENV, alerts_file, send_alert
from dags_defs.resources import PipelineConfig


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
        reports_dir = paths.reports_dir
    except Exception:  # noqa: BLE001 - never lose the alert over the config that broke the run
        root = Path(pipeline.root).resolve() if pipeline.root else project_root()
        reports_dir = root / "reports"
    return alerts_file(reports_dir, FAILED_RUNS)


@run_failure_sensor(
    name="run_failure_alerts",
    description=f"Appends each failed run to <reports_dir>/{ALERTS_DIR}/{FAILED_RUNS}.jsonl and "
    f"POSTs it to ${WEBHOOK_ENV} when set.",
    default_status=DefaultSensorStatus.RUNNING,
)
def run_failure_alerts(context: RunFailureSensorContext, pipeline: PipelineConfig) -> None:
    record = failure_record(context)
    outcome = send_alert(alerts_path(pipeline), record)  # never raises for the webhook
    context.log.info(f"run {record['run_id']} ({record['job']}) failed: {record['error']}; "
                     f"alert written to {outcome.path}")
    if outcome.webhook_failed:
        context.log.warning(f"alert webhook ${WEBHOOK_ENV} failed for run {record['run_id']}: "
                            f"{outcome.webhook.removeprefix('failed: ')}")
    elif outcome.webhook is not None:
        context.log.info(f"alert for run {record['run_id']} posted to ${WEBHOOK_ENV} "
                         f"({outcome.webhook})")
