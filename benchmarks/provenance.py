"""Where a benchmark figure came from: the machine, its instruction sets, the date, the command.

Every result file under benchmarks/results/ carries this block, so a figure quoted in the README
can be traced to the CPU it was measured on (bf16 speed differs 5x between CPUs of one kind).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

# Instruction-set flags that decide which fast paths a CPU has (see the README's benchmark table).
FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16",
                     "amx_tile", "amx_int8")


def _cpuinfo() -> tuple[str, list[str]]:
    model, flags = platform.processor() or platform.machine(), []
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            model = value.strip()
        elif key.strip() == "flags":
            present = set(value.split())
            flags = [f for f in FLAGS_OF_INTEREST if f in present]
            break
    return model, flags


def provenance(command: str | None = None) -> dict:
    """The provenance block stored in each result file."""
    model, flags = _cpuinfo()
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, cwd=Path(__file__).parent, check=False).stdout.strip()
    except OSError:
        commit = ""
    return {"machine": model, "cpu_flags": flags, "cores": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d"),
            "command": command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "git_commit": commit or None}
