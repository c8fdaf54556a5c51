"""One alert path: a JSON line under <reports_dir>/alerts/, and the same JSON POSTed to a webhook.

Every alert of the project goes through `send_alert`:

- the record is appended as one JSON line (sorted keys) to `alerts_file(reports_dir, kind)`,
  i.e. `<paths.reports_dir>/alerts/<kind>.jsonl`: `failed_runs.jsonl` (the Dagster
  `run_failure_alerts` sensor) and `drift.jsonl` (champion re-evaluation, a watched metric
  dropped). The line is written first: it is the record, whatever happens to the POST;
- when the one webhook setting, the environment variable $CXR_ALERT_WEBHOOK, holds a URL, the
  same JSON is POSTed there (Slack/Teams-style incoming webhook or any HTTP endpoint).

An environment variable rather than a params entry: a webhook URL usually carries a token (it
does not belong in a tracked params file), and the failure sensor must still post when the
params file is what broke the run.

Contract: `post_webhook` and `send_alert` never raise for a webhook that is down, slow or
refuses the POST; the outcome is returned as text ("sent (HTTP 204)" / "failed: URLError: ...")
for the caller to log or report. Only a failure to write the alert line itself raises.
"""

from __future__ import annotations

import json
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WEBHOOK_ENV = "CXR_ALERT_WEBHOOK"
WEBHOOK_TIMEOUT_S = 5.0
ALERTS_DIR = "alerts"
FAILED_RUNS = "failed_runs"
DRIFT = "drift"


def alerts_file(reports_dir: Path, kind: str) -> Path:
    """<reports_dir>/alerts/<kind>.jsonl, the one place alerts are written."""
    return Path(reports_dir) / ALERTS_DIR / f"{kind}.jsonl"


def webhook_url() -> str | None:
    """The webhook from $CXR_ALERT_WEBHOOK (surrounding blanks ignored); None when unset/empty."""
    return os.environ.get(WEBHOOK_ENV, "").strip() or None


def alert_json(record: dict[str, Any]) -> str:
    """The one serialisation of an alert: the line written and the body POSTed are this text."""
    return json.dumps(record, sort_keys=True, default=str)


def append_alert(path: Path, record: dict[str, Any]) -> Path:
    """Append `record` as one JSON line to `path` (folders created); returns `path`.

    One write of one line in append mode: concurrent writers never interleave within a line.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = alert_json(record) + "\n"
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line)
    return path


def post_webhook(url: str, record: dict[str, Any], timeout: float = WEBHOOK_TIMEOUT_S) -> str:
    """POST `record` as JSON to `url`. Never raises: returns "sent (HTTP <status>)" when the
    endpoint answered 2xx/3xx, else "failed: <ErrorType>: <message>" (unreachable, timeout, HTTP
    error status, malformed URL, ...)."""
    try:
        request = urllib.request.Request(
            url, data=alert_json(record).encode("utf-8"), method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "cxr-alerts"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return f"sent (HTTP {int(response.status)})"
    except Exception as error:  # noqa: BLE001 - a hook that is down must not hide the alert
        return f"failed: {type(error).__name__}: {error}"


@dataclass(frozen=True)
class AlertOutcome:
    path: Path
    """The JSONL file the alert line was appended to."""
    webhook: str | None
    """post_webhook's outcome; None when $CXR_ALERT_WEBHOOK is not set."""

    @property
    def webhook_failed(self) -> bool:
        return self.webhook is not None and self.webhook.startswith("failed")


def send_alert(path: Path, record: dict[str, Any]) -> AlertOutcome:
    """Append `record` to `path` (normally `alerts_file(reports_dir, kind)`), then POST the same
    JSON to $CXR_ALERT_WEBHOOK when set. Raises only if the line cannot be written."""
    written = append_alert(path, record)
    url = webhook_url()
    return AlertOutcome(written, post_webhook(url, record) if url else None)
