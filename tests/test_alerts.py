"""cxr_assets.alerts: one alert path (a JSON line under reports/alerts/) and one webhook setting
($CXR_ALERT_WEBHOOK) whose POST never raises. The Dagster failure sensor is covered end to end
in tests/faults/test_faults.py, the drift alert in tests/evaluate/test_evaluation_chain.py."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cxr_assets.alerts import (
    DRIFT,
    FAILED_RUNS,
    WEBHOOK_ENV,
    alerts_file,
    post_webhook,
    send_alert,
    webhook_url,
)


@pytest.fixture
def hook():
    """A local HTTP endpoint recording what is POSTed to it; answers `status`."""
    received: list[tuple[str, str, bytes]] = []
    state = {"status": 204}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            received.append((self.path, self.headers.get("Content-Type"), body))
            self.send_response(state["status"])
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", received, state
    finally:
        server.shutdown()
        server.server_close()


def _dead_url() -> str:
    with socket.socket() as sock:  # a free port nobody listens on
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/down"


def test_one_alerts_folder(tmp_path):
    assert alerts_file(tmp_path, FAILED_RUNS) == tmp_path / "alerts" / "failed_runs.jsonl"
    assert alerts_file(tmp_path, DRIFT) == tmp_path / "alerts" / "drift.jsonl"


def test_webhook_setting_is_the_environment_variable(monkeypatch):
    monkeypatch.delenv(WEBHOOK_ENV, raising=False)
    assert webhook_url() is None
    monkeypatch.setenv(WEBHOOK_ENV, "   ")
    assert webhook_url() is None
    monkeypatch.setenv(WEBHOOK_ENV, " http://example.invalid/x ")
    assert webhook_url() == "http://example.invalid/x"


def test_send_alert_without_webhook_appends_lines(tmp_path, monkeypatch):
    monkeypatch.delenv(WEBHOOK_ENV, raising=False)
    path = alerts_file(tmp_path, DRIFT)
    first = send_alert(path, {"b": 1, "a": tmp_path})
    second = send_alert(path, {"n": 2})
    assert first.path == second.path == path and first.webhook is None and not first.webhook_failed
    lines = path.read_text().splitlines()
    assert lines == [json.dumps({"a": str(tmp_path), "b": 1}), json.dumps({"n": 2})]  # sorted keys


def test_send_alert_posts_the_same_json_as_the_line(tmp_path, monkeypatch, hook):
    url, received, _ = hook
    monkeypatch.setenv(WEBHOOK_ENV, url)
    outcome = send_alert(alerts_file(tmp_path, FAILED_RUNS), {"run_id": "r1", "error": "boom"})
    assert outcome.webhook == "sent (HTTP 204)" and not outcome.webhook_failed
    [(path, content_type, body)] = received
    assert path == "/hook" and content_type == "application/json"
    assert json.loads(body) == json.loads(outcome.path.read_text().splitlines()[-1])


@pytest.mark.parametrize("case", ["dead", "http_error", "bad_url"])
def test_webhook_failures_are_returned_never_raised(tmp_path, monkeypatch, hook, case):
    url, _, state = hook
    if case == "dead":
        url = _dead_url()
    elif case == "http_error":
        state["status"] = 500
    else:
        url = "not a url"
    assert post_webhook(url, {"x": 1}, timeout=2.0).startswith("failed: ")
    monkeypatch.setenv(WEBHOOK_ENV, url)
    outcome = send_alert(alerts_file(tmp_path, DRIFT), {"x": 1})
    assert outcome.webhook_failed and outcome.path.read_text().count("\n") == 1  # the line is kept
