"""dvc.yaml's code dependencies cover every library module a stage imports.

`dvc repro` reruns a stage only when one of its declared deps changed. The deps are written by
hand, so this test derives each stage's import closure from the source (every `import` of a
cxr_assets module, including the ones inside functions) and fails naming the stage and the module
that no declared dep covers: a code change there would otherwise be missed by `dvc repro`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "cxr_assets"


def module_file(module: str) -> Path | None:
    """The source file of a cxr_assets module name, None for anything else."""
    if module != PACKAGE and not module.startswith(PACKAGE + "."):
        return None
    base = REPO.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(source: Path) -> set[str]:
    """Every cxr_assets module `source` imports, anywhere in the file (submodules named in
    `from package import name` count when `name` is a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text(), filename=str(source))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names
                         if module_file(f"{node.module}.{alias.name}") is not None)
    return {m for m in found if module_file(m) is not None}


def import_closure(start: Path) -> set[Path]:
    """Files reachable from `start` through cxr_assets imports (package __init__ files of the
    path included, since importing a.b runs a/__init__.py)."""
    seen: set[Path] = set()
    todo = [start]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in imported_modules(path):
            parts = module.split(".")
            for depth in range(1, len(parts) + 1):
                file = module_file(".".join(parts[:depth]))
                if file is not None and file not in seen:
                    todo.append(file)
    return seen


def uncovered(closure: set[Path], deps: list[str]) -> list[str]:
    roots = [REPO / d.rstrip("/") for d in deps if "${" not in d]
    missing = []
    for file in sorted(closure):
        if not any(file == root or root in file.parents for root in roots):
            missing.append(str(file.relative_to(REPO)))
    return missing


def test_every_stage_declares_the_code_it_imports() -> None:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    problems = []
    for name, spec in stages.items():
        module = REPO / PACKAGE / "stages" / f"{name}.py"
        assert module.is_file(), f"dvc stage {name!r} has no module {module}"
        missing = uncovered(import_closure(module), [str(d) for d in spec.get("deps", [])])
        if missing:
            problems.append(f"{name}: {', '.join(missing)}")
    assert not problems, "dvc.yaml deps miss imported code:\n" + "\n".join(problems)


def test_the_check_finds_a_missing_dependency(tmp_path: Path) -> None:
    """Negative control: the text_encoder stage imports cxr_assets/text, so deps without that
    folder must be reported."""
    closure = import_closure(REPO / PACKAGE / "stages" / "text_encoder.py")
    assert REPO / PACKAGE / "text" / "adapt.py" in closure
    assert "cxr_assets/text/adapt.py" in uncovered(closure, ["cxr_assets/stages"])
    assert uncovered(closure, [PACKAGE]) == []
