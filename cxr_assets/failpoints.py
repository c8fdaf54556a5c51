"""Failpoints: named places where a fault test can hold a process to kill it there.

`kill -9` at "some moment" of a fast stage is a race that the process often wins by finishing
first, and a test that then passes has proved nothing. With CXR_FAILPOINT=<name> set, the process
that reaches `failpoint(name)` writes the name to CXR_FAILPOINT_MARKER (when set) and waits there,
so the test kills it at exactly that point. Unset (always, outside the fault tests) a failpoint
is one environment lookup.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

FAILPOINT_ENV = "CXR_FAILPOINT"
MARKER_ENV = "CXR_FAILPOINT_MARKER"
HOLD_S = 600.0


def failpoint(name: str) -> None:
    if os.environ.get(FAILPOINT_ENV) != name:
        return
    marker = os.environ.get(MARKER_ENV)
    if marker:
        Path(marker).write_text(name)
    time.sleep(HOLD_S)  # the test kills the process here
    raise RuntimeError(f"failpoint {name!r} was held {HOLD_S:.0f} s and nobody killed the process")
