"""Every figure in the README's benchmark table comes from a committed result file.

Each row of the table names the file(s) it quotes (`results/<name>.json`, committed under
benchmarks/results/ with `git add -f`); the file must record where it was measured (machine,
date, command) and every number in the row's figure cell must be one of the file's numbers at
the precision written. A figure typed by hand, or left behind after a rerun changed the file,
fails here with the row and the number.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
# A number not glued to a name (fp32, R@10, v2 and p50 are names, not figures); 37.5x is a figure.
NUMBER = re.compile(r"(?<![\w@.\-])\d[\d,]*(?:\.\d+)?(?![\w.]*[A-Za-wyz])")
CITED = re.compile(r"results/([\w.\-]+\.json)")


def benchmark_rows(readme: str) -> list[tuple[str, str]]:
    """(benchmark cell, figure cell) of each row of the table under 'Tests and benchmarks'."""
    section = readme.split("## Tests and benchmarks", 1)[1]
    rows = []
    for line in section.splitlines():
        if line.startswith("| `bench_"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows.append((cells[0], " | ".join(cells[1:])))
    return rows


def file_numbers(value: object) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, dict):
        return [n for v in value.values() for n in file_numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in file_numbers(v)]
    return []


def unbacked_figures(figures: str, numbers: list[float]) -> list[str]:
    """Numbers written in `figures` that no file number rounds to (at the written precision)."""
    missing = []
    for token in NUMBER.findall(figures):
        written = token.replace(",", "")
        decimals = len(written.split(".")[1]) if "." in written else 0
        target = float(written)
        if not any(abs(round(n, decimals) - target) < 1e-9 for n in numbers):
            missing.append(token)
    return missing


def has_provenance(data: dict) -> bool:
    block = data.get("provenance", data)
    return all(block.get(key) for key in ("machine", "date", "command"))


def test_every_figure_in_the_readme_benchmark_table_has_its_result_file() -> None:
    rows = benchmark_rows((REPO / "README.md").read_text())
    assert len(rows) >= 4, "the README's benchmark table was not found"
    problems = []
    for bench, figures in rows:
        cited = CITED.findall(bench + figures)
        if not cited:
            problems.append(f"{bench}: names no results/<file>.json")
            continue
        numbers: list[float] = []
        for name in cited:
            path = RESULTS / name
            if not path.is_file():
                problems.append(f"{bench}: {path.relative_to(REPO)} is not committed")
                continue
            data = json.loads(path.read_text())
            if not has_provenance(data):
                problems.append(f"{bench}: {name} lacks machine/date/command")
            numbers += file_numbers(data)
        unbacked = unbacked_figures(figures, numbers)
        if unbacked and numbers:
            problems.append(f"{bench}: {', '.join(unbacked)} not in {', '.join(cited)}")
    assert not problems, "README benchmark table:\n" + "\n".join(problems)


def test_the_table_check_catches_a_figure_typed_by_hand() -> None:
    numbers = [7.4712, 14.26, 192.66, 2.0]
    assert unbacked_figures("ours 7.47 reports/s fp32, 14.26 bf16, 2 threads", numbers) == []
    assert unbacked_figures("ours 7.48 reports/s fp32 at p50, R@10", numbers) == ["7.48"]
    assert unbacked_figures("cached 192.7 pairs/s, 37.5x", numbers) == ["37.5"]  # a ratio is a figure
    assert not has_provenance({"results": {}})
    assert has_provenance({"provenance": {"machine": "x", "date": "d", "command": "c"}})
