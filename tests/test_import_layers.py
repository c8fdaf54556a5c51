"""The library's import layers hold: no upward imports, no import cycles.

The layers, bottom to top: the library rooms (`cxr_assets/<room>/`), the stage adapters
(`cxr_assets/stages/`) and the command line (`cxr_assets/cli.py`, `cxr_assets/__main__.py`), then
the Dagster definitions (`dags_defs/`). A module may import from its own layer or below, never
above, and modules must not import each other in a ring (a cycle is how a misplaced helper hides:
two rooms that need each other are one room, or share a piece that belongs lower down).

Imports are read from the source with `ast`, at any depth: a function-local
`from cxr_assets.x import y` counts like a module-level one, since moving an import into a
function is the usual way a cycle is kept from failing at import time. Imports under
`if TYPE_CHECKING:` count as well (they are still a dependency of the module's meaning). A dynamic
`importlib.import_module(...)` is not seen.

The graph is built per file (`cxr_assets/text/encoder.py` is the node `cxr_assets.text.encoder`);
`from package import name` points at `package.name` when that is a module, at the package's
`__init__` otherwise. Importing `a.b.c` also runs `a/__init__.py` and `a/b/__init__.py`; those
implicit edges are left out (Python tolerates a package that imports its own submodules, and
counting them would report every package with re-exports as a cycle).
"""

from __future__ import annotations

import ast
import itertools
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DIR = REPO / "cxr_assets"
DAGSTER_PACKAGE = "dags_defs"


@dataclass(frozen=True)
class Import:
    importer: str  # module name of the importing file
    file: str  # the importing file, relative to the folder that holds the package
    line: int
    target: str  # the module named by the import (resolved to a package module when possible)


@dataclass
class ImportGraph:
    package: str
    files: dict[str, str] = field(default_factory=dict)  # module name -> relative file path
    imports: list[Import] = field(default_factory=list)  # every import of interest, in order

    def edges(self) -> dict[str, dict[str, Import]]:
        """module -> {imported package module -> the first import that names it}."""
        out: dict[str, dict[str, Import]] = {name: {} for name in self.files}
        for imp in self.imports:
            if imp.target in self.files:
                out[imp.importer].setdefault(imp.target, imp)
        return out


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(name: str, modules: dict[str, str]) -> str:
    """The longest prefix of `name` that is a package module (the name itself otherwise)."""
    parts = name.split(".")
    for depth in range(len(parts), 0, -1):
        candidate = ".".join(parts[:depth])
        if candidate in modules:
            return candidate
    return name


def build_import_graph(
    package_dir: Path, extra_prefixes: tuple[str, ...] = (DAGSTER_PACKAGE,)
) -> ImportGraph:
    """Every import of `package_dir`'s own modules (and of `extra_prefixes`, e.g. dags_defs) made
    anywhere in its files, relative imports resolved."""
    root = package_dir.parent
    package = package_dir.name
    graph = ImportGraph(package=package)
    paths = sorted(package_dir.rglob("*.py"))
    for path in paths:
        graph.files[_module_name(path, root)] = path.relative_to(root).as_posix()

    def wanted(name: str) -> bool:
        return any(_under(name, prefix) for prefix in (package, *extra_prefixes))

    for path in paths:
        importer = _module_name(path, root)
        rel = graph.files[importer]
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    # `from . import x` in a/b/c.py is relative to a.b; in a/b/__init__.py to a.b
                    base = importer.split(".")
                    drop = node.level - 1 if is_package else node.level
                    base = base[: len(base) - drop] if drop else base
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                for alias in node.names:
                    sub = f"{module}.{alias.name}"
                    targets.append(sub if sub in graph.files else module)
            for target in targets:
                if wanted(target):
                    if _under(target, package):
                        target = _resolve(target, graph.files)
                    graph.imports.append(Import(importer, rel, node.lineno, target))
    return graph


def upward_imports(graph: ImportGraph) -> list[str]:
    """Library modules importing the stage adapters or Dagster (rule a), and any module of the
    package importing Dagster (rule b)."""
    stages = f"{graph.package}.stages"
    top = {stages, f"{graph.package}.cli", f"{graph.package}.__main__"}
    problems = []
    for imp in graph.imports:
        if _under(imp.target, DAGSTER_PACKAGE):
            why = f"no module of {graph.package} imports {DAGSTER_PACKAGE}"
        elif _under(imp.target, stages) and not any(_under(imp.importer, t) for t in top):
            why = f"the library below the stage adapters never imports {stages}"
        else:
            continue
        problems.append(f"{imp.file}:{imp.line} imports {imp.target} ({why})")
    return sorted(set(problems))


def _strongly_connected(edges: dict[str, dict[str, Import]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; components in a deterministic order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return sorted(components)


def _shortest_cycle(
    start: str, members: set[str], edges: dict[str, dict[str, Import]]
) -> list[str]:
    """The shortest path start -> ... -> start inside one component."""
    previous: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(edges[node]):
            if child not in members:
                continue
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return [start, *reversed(path[:-1]), start] if node != start else [start, start]
            if child not in previous:
                previous[child] = node
                queue.append(child)
    raise AssertionError(f"{start} is in a component but on no cycle")


def import_cycles(graph: ImportGraph) -> dict[tuple[str, ...], str]:
    """Every import cycle (strongly connected component) -> a message naming its members and the
    shortest ring through its first member, each step naming the importing file, line and module."""
    edges = graph.edges()
    cycles = {}
    for component in _strongly_connected(edges):
        if len(component) == 1 and component[0] not in edges[component[0]]:
            continue
        ring = _shortest_cycle(component[0], set(component), edges)
        steps = [
            f"  {edges[a][b].file}:{edges[a][b].line} imports {b}"
            for a, b in itertools.pairwise(ring)
        ]
        cycles[tuple(component)] = (
            f"cycle among {len(component)} modules ({', '.join(component)}):\n" + "\n".join(steps)
        )
    return cycles


# Cycles allowed for now, each with its reason; an entry must still be a cycle (remove it when
# the cycle is gone). None today.
KNOWN_CYCLES: set[tuple[str, ...]] = set()


def test_no_upward_imports() -> None:
    problems = upward_imports(build_import_graph(PACKAGE_DIR))
    assert not problems, "upward imports:\n" + "\n".join(problems)


def test_no_import_cycles() -> None:
    cycles = import_cycles(build_import_graph(PACKAGE_DIR))
    new = [message for members, message in cycles.items() if members not in KNOWN_CYCLES]
    assert not new, f"{len(new)} import cycle(s):\n" + "\n".join(new)
    gone = sorted(KNOWN_CYCLES - set(cycles))
    assert not gone, f"KNOWN_CYCLES lists cycles that are gone (remove them): {gone}"


def _write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_the_checks_find_a_planted_upward_import_and_cycle(tmp_path: Path) -> None:
    """Negative control: a fake package with a room importing a stage, a room importing
    dags_defs, a two-module ring hidden in a function, and allowed imports that must stay quiet."""
    for init in ("cxr_assets", "cxr_assets/stages", "cxr_assets/room", "cxr_assets/other"):
        _write(tmp_path, f"{init}/__init__.py", "")
    _write(tmp_path, "cxr_assets/stages/train.py", "import cxr_assets.other.c\n\nrun = None\n")
    _write(tmp_path, "cxr_assets/cli.py", "from cxr_assets.stages import train\n")
    _write(
        tmp_path,
        "cxr_assets/room/helper.py",
        "def helper():\n    from cxr_assets.stages.train import run\n    return run\n",
    )
    _write(tmp_path, "cxr_assets/room/alerts.py", "import dags_defs.alerts\n")
    _write(tmp_path, "cxr_assets/room/relative.py", "from ..stages import train\n")
    _write(tmp_path, "cxr_assets/other/a.py", "from . import b\n")
    _write(tmp_path, "cxr_assets/other/b.py", "def f():\n    import cxr_assets.other.a\n")
    _write(tmp_path, "cxr_assets/other/c.py", "from cxr_assets.other.a import thing\n")

    graph = build_import_graph(tmp_path / "cxr_assets")
    upward = upward_imports(graph)
    assert any("room/helper.py:2 imports cxr_assets.stages.train" in p for p in upward), upward
    assert any("cxr_assets/room/alerts.py:1 imports dags_defs.alerts" in p for p in upward), upward
    assert not any("cli.py" in p or "stages/train.py" in p for p in upward), upward
    assert any("cxr_assets/room/relative.py:1 imports cxr_assets.stages.train" in p for p in upward)
    assert len(upward) == 3, upward

    cycles = import_cycles(graph)
    assert list(cycles) == [("cxr_assets.other.a", "cxr_assets.other.b")], cycles
    message = cycles["cxr_assets.other.a", "cxr_assets.other.b"]
    assert "cxr_assets/other/a.py:1 imports cxr_assets.other.b" in message
    assert "cxr_assets/other/b.py:2 imports cxr_assets.other.a" in message
    assert "other/c.py" not in message
