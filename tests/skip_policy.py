"""Under CI=true a skipped test fails the run, unless tests/skip_allowlist.txt says why it may skip.

A skip proves nothing: a clean CI run that skipped the browser or database tests would hide a
missing install step. The allow-list is short and reviewed: one line per test (a node id, or a
prefix ending in "::" or "/"), then " # " and the reason it may skip on a CI machine.
"""

from __future__ import annotations

import os
from pathlib import Path

ALLOWLIST = Path(__file__).with_name("skip_allowlist.txt")


def ci_enabled() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def load_allowlist(file: Path = ALLOWLIST) -> dict[str, str]:
    """{node id or prefix: reason}; a line without a reason is an error (reviewed, not silent)."""
    allowed: dict[str, str] = {}
    if not file.is_file():
        return allowed
    for number, line in enumerate(file.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        node, _, reason = line.partition(" # ")
        if not reason.strip():
            raise ValueError(f"{file}:{number}: '{node}' has no reason (write: <node id>  # <why>)")
        allowed[node.strip()] = reason.strip()
    return allowed


def is_allowed(nodeid: str, allowed: dict[str, str]) -> bool:
    return any(nodeid == key or (key.endswith(("::", "/")) and nodeid.startswith(key))
               for key in allowed)


class SkipPolicy:
    """pytest plugin: records skips, prints them, and fails the session under CI=true."""

    def __init__(self, enforce: bool, allowed: dict[str, str]) -> None:
        self.enforce, self.allowed = enforce, allowed
        self.skips: list[tuple[str, str]] = []

    def pytest_runtest_logreport(self, report) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            self.skips.append((report.nodeid, reason))

    def forbidden(self) -> list[tuple[str, str]]:
        return [(n, r) for n, r in self.skips if not is_allowed(n, self.allowed)]

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.skips:
            return
        terminalreporter.section("skip policy")
        for nodeid, reason in self.skips:
            verdict = "allowed" if is_allowed(nodeid, self.allowed) else (
                "FAILS (CI=true)" if self.enforce else "would fail under CI=true")
            terminalreporter.write_line(f"{verdict}: {nodeid}: {reason}")

    def pytest_sessionfinish(self, session, exitstatus) -> None:
        if self.enforce and self.forbidden() and session.exitstatus == 0:
            session.exitstatus = 1
