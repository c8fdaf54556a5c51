"""dvc.yaml's stage graph agrees with the stage table and with what each stage reads and writes.

STAGES (cxr_assets/stages/__init__.py) is the graph Dagster and the CLI run; dvc.yaml is written
by hand. These checks keep `dvc repro` running the same graph. Each returns one line per
mismatch, naming the stage; the `*_is_reported` tests feed planted wrong copies of dvc.yaml to
the same functions, so each is shown to be able to fail. Code deps: test_dvc_code_deps.py.

All static (ast over the sources, no stage module imported). dvc paths are compared after
filling `${...}` from params.yaml, so the checks speak for the default params (where
`paths.raw_dir` is `demo_data.out_dir`).

- (a) names: dvc.yaml has exactly the stages of STAGES, each `cmd` `cxr [--opt] stage <name>`.
- (b) edges: for each upstream U of S, a dep of S overlaps an out (outs, metrics, plots) of U;
  every data dep of S (one overlapping another stage's out) comes from an ancestor of S in
  STAGES. Ancestor, not only a direct upstream: stages read some ancestors' files themselves
  (study_embeddings reads report_texts), dvc must list those, and Dagster runs them first anyway.
- (b') reads: every named path (below) of S that is another stage's out is a dep of S, from
  an ancestor; each `require(...)` checks files that are outs of the stage it names. A read in
  a branch not taken with the default params counts (evaluation_report's study_splits).
- (c) params: the top-level sections of S's dvc `params` equal those S's `run` reads:
  `params.<section>` there and in every function of the stage module or of cxr_assets that
  `params` is passed to whole, transitively. `paths` is left out (dvc gets it through
  `${paths.*}`). Granularity is the section: declaring ingest.layout while reading
  ingest.workers passes. READ_WITHOUT_EFFECT lists the few reads that cannot change the outs
  (the MLflow destination, a thread count, an error message), so changing them reruns nothing.
- (d) outs: every dvc out of S is a named path, or lies under one and its file name is a string
  literal of S's import closure outside paths.py (evaluate/suite.py writes report.md into
  paths.evaluation_dir); every output S returns in `StageResult(...)` that evaluates lies in
  a dvc out.

Named paths: `paths.<attr>` (or getattr), `paths.at(params.<a>.<b>)`, `<named> / "literal"` or
`/ CONSTANT`, and local names assigned once from those, in the stage module and in every
function `paths` is passed to whole. Not seen: files reached other than through `paths` (a path
passed as an argument, `dict(written)`, `vectors["path"]`); calls through attributes
(`obj.method(params)`); params stored in an object or dumped whole (`model_dump`, the torchrun
spec: its in-process twin is followed instead); that a declared out is really written (a
literal is not a write); out options (cache, persist).
"""

from __future__ import annotations

import ast
import copy
import posixpath
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import yaml

from cxr_assets.paths import ProjectPaths
from cxr_assets.stages import STAGES
from tests.pipeline.test_dvc_code_deps import PACKAGE, REPO, import_closure, module_file

STAGES_DIR = REPO / PACKAGE / "stages"
UPSTREAM = {s.name: s.upstream for s in STAGES}
CMD = re.compile(r"^cxr(?:\s+--[\w-]+)*\s+stage\s+(\w+)$")


# --------------------------------------------------------------------------- dvc.yaml, resolved
def load_dvc(path: Path = REPO / "dvc.yaml") -> dict[str, dict]:
    return yaml.safe_load(path.read_text())["stages"]


@cache
def params_yaml() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def param_value(dotted: str):
    value = params_yaml()
    for key in dotted.split("."):
        value = value[key]
    return value


def resolve(template: str) -> str:
    """A dvc path with its ${...} filled from params.yaml, normalised."""
    return posixpath.normpath(re.sub(r"\$\{([\w.]+)\}", lambda m: str(param_value(m[1])), template))


def entries(spec: dict, *keys: str) -> list[str]:
    """Resolved paths of dvc list entries (a string, or a one-key {path: options} mapping)."""
    return [resolve(next(iter(e)) if isinstance(e, dict) else e)
            for key in keys for e in spec.get(key) or ()]


def outs(spec: dict) -> list[str]:
    return entries(spec, "outs", "metrics", "plots")


def under(path: str, root: str) -> bool:
    return path == root or path.startswith(root + "/")


def overlaps(a: str, b: str) -> bool:
    return under(a, b) or under(b, a)


def ancestors(name: str) -> set[str]:
    seen: set[str] = set()
    todo = list(UPSTREAM.get(name, ()))
    while todo:
        up = todo.pop()
        if up not in seen:
            seen.add(up)
            todo.extend(UPSTREAM.get(up, ()))
    return seen


def producers(path: str, stages: dict[str, dict], besides: str) -> list[str]:
    """The stages (other than `besides`) with a dvc out overlapping `path`."""
    return [n for n, spec in stages.items() if n != besides and any(overlaps(path, o) for o in outs(spec))]


# --------------------------------------------------------------------------- stage sources
@dataclass
class Module:
    """A parsed cxr_assets module: its top-level functions and the cxr_assets names it imports."""

    path: Path
    tree: ast.Module
    functions: dict[str, ast.FunctionDef] = field(default_factory=dict)
    imports: dict[str, str] = field(default_factory=dict)  # local name -> "module.name"
    constants: dict[str, str] = field(default_factory=dict)  # NAME = "literal"


@cache
def module(path: Path) -> Module:
    tree = ast.parse(path.read_text(), filename=str(path))
    mod = Module(path, tree)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            mod.functions[node.name] = node
        elif (isinstance(node, ast.Assign) and len(node.targets) == 1
              and isinstance(node.targets[0], ast.Name) and isinstance(node.value, ast.Constant)
              and isinstance(node.value.value, str)):
            mod.constants[node.targets[0].id] = node.value.value
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                mod.imports[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return mod


def callee(mod: Module, func: ast.expr) -> tuple[ast.FunctionDef, Module] | None:
    """The definition of a called plain name: a function of `mod` or one it imports from cxr_assets."""
    if not isinstance(func, ast.Name):
        return None
    if func.id in mod.functions:
        return mod.functions[func.id], mod
    target = mod.imports.get(func.id)
    if target is None:
        return None
    source, name = target.rsplit(".", 1)
    file = module_file(source)
    if file is None:
        return None
    other = module(file)
    if name in other.functions:
        return other.functions[name], other
    return callee(other, ast.Name(name)) if name in other.imports else None


def argument_name(fn: ast.FunctionDef, call: ast.Call, value: str) -> str | None:
    """The parameter of `fn` that receives the variable `value` in `call`."""
    positional = [a.arg for a in (*fn.args.posonlyargs, *fn.args.args)]
    for i, arg in enumerate(call.args):
        if isinstance(arg, ast.Name) and arg.id == value and i < len(positional):
            return positional[i]
    for kw in call.keywords:
        if isinstance(kw.value, ast.Name) and kw.value.id == value and kw.arg:
            return kw.arg
    return None


def stage_module(name: str) -> Module:
    return module(STAGES_DIR / f"{name}.py")


# --------------------------------------------------------------------------- params read
SECTIONS = frozenset(params_yaml()) - {"paths"}


def reached(functions: list[ast.FunctionDef], mod: Module, name: str) -> list[tuple[ast.FunctionDef, Module, str]]:
    """`functions`, and every function of the package they pass their variable `name` to whole
    (transitively), each with the name the variable has there."""
    todo = [(fn, mod, name) for fn in functions]
    seen: dict[tuple, tuple] = {}
    while todo:
        fn, mod, var = todo.pop()
        if (mod.path, fn.name, var) in seen:
            continue
        seen[(mod.path, fn.name, var)] = (fn, mod, var)
        for node in ast.walk(fn):
            target = callee(mod, node.func) if isinstance(node, ast.Call) else None
            passed_as = target and argument_name(target[0], node, var)
            if passed_as:
                todo.append((*target, passed_as))
    return list(seen.values())


def sections_read(name: str) -> set[str]:
    """Top-level params sections stage `name`'s run() reads, directly or where it passes
    `params` on whole."""
    mod = stage_module(name)
    return {node.attr for fn, m, var in reached([mod.functions["run"]], mod, "params")
            for node in ast.walk(fn)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            and node.value.id == var and node.attr in SECTIONS}


def declared_sections(spec: dict) -> set[str]:
    return {str(p).split(".")[0] for p in spec.get("params") or ()}


# --------------------------------------------------------------------------- paths named
LAYOUT = ProjectPaths(root=Path("."), **{k: Path(v) for k, v in params_yaml()["paths"].items()})


class PathEvaluator:
    """Evaluates the path expressions of one function to resolved relative paths (or None):
    `paths.<attr>` (also by getattr), `paths.at(params.<section>.<key>)`, `<path> / "name"`
    or `/ NAME` (a module constant), and local names assigned once from those."""

    def __init__(self, fn: ast.FunctionDef, mod: Module, paths_name: str = "paths"):
        self.mod, self.paths_name = mod, paths_name
        assigned: dict[str, list[ast.expr]] = {}
        for node in ast.walk(fn):
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                assigned.setdefault(node.targets[0].id, []).append(node.value)
        self.local = {n: values[0] for n, values in assigned.items() if len(values) == 1}

    def params_value(self, node: ast.expr):
        """`params.<a>.<b>` (or `x.<b>` after `x = params.<a>`) looked up in params.yaml."""
        chain = []
        while isinstance(node, ast.Attribute):
            chain.insert(0, node.attr)
            node = node.value
        if isinstance(node, ast.Name) and node.id in self.local:
            value = self.params_value(self.local[node.id])
        elif isinstance(node, ast.Name) and node.id == "params":
            value = params_yaml()
        else:
            return None
        for key in chain:
            if not isinstance(value, dict) or key not in value:
                return None
            value = value[key]
        return value

    def path(self, node: ast.expr, depth: int = 0) -> str | None:
        if depth > 20:  # x = x / "a"
            return None
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == self.paths_name:
            value = getattr(LAYOUT, node.attr, None)
            return posixpath.normpath(value.as_posix()) if isinstance(value, Path) else None
        if isinstance(node, ast.Name) and node.id in self.local:
            return self.path(self.local[node.id], depth + 1)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            left, right = self.path(node.left, depth + 1), node.right
            name = (right.value if isinstance(right, ast.Constant) and isinstance(right.value, str)
                    else self.mod.constants.get(right.id) if isinstance(right, ast.Name) else None)
            return posixpath.normpath(posixpath.join(left, name)) if left and name else None
        if isinstance(node, ast.Call) and len(node.args) >= 1:
            func, first = node.func, node.args[0]
            if (isinstance(func, ast.Name) and func.id == "getattr" and len(node.args) >= 2
                    and isinstance(node.args[1], ast.Constant)):
                return self.path(ast.Attribute(first, node.args[1].value), depth + 1)
            if (isinstance(func, ast.Attribute) and func.attr == "at" and isinstance(func.value, ast.Name)
                    and func.value.id == self.paths_name):
                value = self.params_value(first)
                return posixpath.normpath(value) if isinstance(value, str) else None
        return None


def functions_of(mod: Module) -> list[ast.FunctionDef]:
    return [n for n in ast.walk(mod.tree) if isinstance(n, ast.FunctionDef)]


def named_paths(name: str) -> set[str]:
    """Every path expression that evaluates in the stage module, or in a function of the
    package it passes `paths` to whole."""
    mod = stage_module(name)
    found = set()
    for fn, m, var in reached(functions_of(mod), mod, "paths"):
        evaluator = PathEvaluator(fn, m, var)
        found.update(filter(None, (evaluator.path(n) for n in ast.walk(fn) if isinstance(n, ast.expr))))
    return found - {"."}  # paths.root: everything is under it


def require_calls(mod: Module) -> list[tuple[str, str, list[str | None]]]:
    """(stage argument, upstream named, its evaluated paths) of each `require(...)` call."""
    calls = []
    for fn in functions_of(mod):
        evaluator = PathEvaluator(fn, mod)
        for node in ast.walk(fn):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "require"
                    and len(node.args) == 2 and isinstance(node.args[1], ast.Dict)):
                stage = ast.literal_eval(node.args[0])
                for key, value in zip(node.args[1].keys, node.args[1].values):
                    files = value.elts if isinstance(value, ast.List) else []
                    calls.append((stage, ast.literal_eval(key), [evaluator.path(f) for f in files]))
    return calls


def returned_outputs(mod: Module) -> list[str]:
    """Paths a stage returns as StageResult outputs (the dict values that evaluate)."""
    found = []
    for fn in functions_of(mod):
        evaluator = PathEvaluator(fn, mod)
        for node in ast.walk(fn):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "StageResult"
                    and len(node.args) >= 2 and isinstance(node.args[1], ast.Dict)):
                found += [p for p in map(evaluator.path, node.args[1].values) if p]
    return found


@cache
def closure_literals(name: str) -> frozenset[str]:
    """Every string literal of the stage module's import closure, the layout (paths.py) aside."""
    return frozenset(n.value for file in import_closure(STAGES_DIR / f"{name}.py") - {REPO / PACKAGE / "paths.py"}
                     for n in ast.walk(module(file).tree)
                     if isinstance(n, ast.Constant) and isinstance(n.value, str))


# --------------------------------------------------------------------------- the checks
def check_names(stages: dict[str, dict]) -> list[str]:
    """(a) the same stages as STAGES, each run through `cxr ... stage <name>`."""
    expected = [s.name for s in STAGES]
    problems = [f"{n}: in STAGES, missing from dvc.yaml" for n in expected if n not in stages]
    problems += [f"{n}: in dvc.yaml, not in STAGES" for n in stages if n not in expected]
    for name, spec in stages.items():
        match = CMD.match(str(spec.get("cmd", "")).strip())
        if not match or match[1] != name:
            problems.append(f"{name}: cmd {spec.get('cmd')!r} does not run `cxr stage {name}`")
    return problems


def check_edges(stages: dict[str, dict]) -> list[str]:
    """(b) each upstream edge of STAGES is a dvc dep on an out, and no data dep skips STAGES."""
    problems = []
    for name, upstream in UPSTREAM.items():
        if name not in stages:
            continue
        deps = entries(stages[name], "deps")
        for up in upstream:
            if up in stages and not any(overlaps(d, o) for d in deps for o in outs(stages[up])):
                problems.append(f"{name}: no dep on an out of its upstream {up} "
                                f"(outs: {', '.join(outs(stages[up]))})")
        for dep in deps:
            for producer in producers(dep, stages, name):
                if producer not in ancestors(name):
                    problems.append(f"{name}: dep {dep} is an out of {producer}, "
                                    f"which STAGES does not put upstream of {name}")
    return problems


def check_reads(stages: dict[str, dict]) -> list[str]:
    """(b') files of other stages the module names are deps; require() names their stage."""
    problems = []
    for name in UPSTREAM:
        if name not in stages:
            continue
        deps = entries(stages[name], "deps")
        mod = stage_module(name)
        for path in sorted(named_paths(name)):
            if any(under(path, o) for o in outs(stages[name])):
                continue  # its own output
            for producer in [n for n, spec in stages.items() if any(under(path, o) for o in outs(spec))]:
                if not any(under(path, d) for d in deps):
                    problems.append(f"{name}: reads {path} ({producer}'s out), not a dvc dep")
                if producer not in ancestors(name):
                    problems.append(f"{name}: reads {path} of {producer}, not upstream in STAGES")
        for stage, upstream, files in require_calls(mod):
            if stage != name:
                problems.append(f"{name}: require() names the stage {stage!r}")
            for path in filter(None, files):
                if upstream in stages and not any(overlaps(path, o) for o in outs(stages[upstream])):
                    problems.append(f"{name}: require() checks {path} as {upstream}'s, "
                                    f"not an out of {upstream} in dvc.yaml")
    return problems


# Sections a stage reads that cannot change what it writes: declaring them would make `dvc repro`
# rerun the stage (text_encoder: an hour on a CPU) when only the MLflow server moved.
READ_WITHOUT_EFFECT = {
    ("text_encoder", "registry"): "where its MLflow run is logged",
    ("model_comparison", "registry"): "where its MLflow run is logged",
    ("report_embeddings", "clip"): "clip.threads: torch's thread count",
    ("raw_studies", "demo_data"): "demo_data.out_dir only names the missing upstream in an error",
}


def check_params(stages: dict[str, dict]) -> list[str]:
    """(c) dvc params sections == the sections the stage's run() reads (less READ_WITHOUT_EFFECT)."""
    problems = []
    for name in UPSTREAM:
        if name not in stages:
            continue
        read = sections_read(name) - {section for stage, section in READ_WITHOUT_EFFECT
                                      if stage == name}
        declared = declared_sections(stages[name])
        if read - declared:
            problems.append(f"{name}: reads params {', '.join(sorted(read - declared))}, "
                            "not in its dvc params")
        if declared - read:
            problems.append(f"{name}: dvc params {', '.join(sorted(declared - read))} "
                            "are never read by the stage")
    return problems


def check_outs(stages: dict[str, dict]) -> list[str]:
    """(d) dvc outs are paths the stage names; the outputs it returns are dvc outs."""
    problems = []
    for name in UPSTREAM:
        if name not in stages:
            continue
        mod = stage_module(name)
        named, declared = named_paths(name), outs(stages[name])
        for out in declared:
            if out in named:
                continue
            if not any(under(out, p) for p in named) or posixpath.basename(out) not in closure_literals(name):
                problems.append(f"{name}: dvc out {out} is not a path the stage's code names")
        for path in returned_outputs(mod):
            if not any(overlaps(path, o) for o in declared):
                problems.append(f"{name}: returns output {path}, not a dvc out")
    return problems


def test_dvc_stages_are_the_stage_table() -> None:
    problems = check_names(load_dvc())
    assert not problems, "dvc.yaml vs STAGES:\n" + "\n".join(problems)


def test_dvc_deps_follow_the_stage_graph() -> None:
    problems = check_edges(load_dvc())
    assert not problems, "dvc.yaml deps vs STAGES upstream:\n" + "\n".join(problems)


def test_files_a_stage_reads_are_dvc_deps() -> None:
    problems = check_reads(load_dvc())
    assert not problems, "files stage modules read vs dvc.yaml deps:\n" + "\n".join(problems)


def test_dvc_params_are_the_sections_each_stage_reads() -> None:
    problems = check_params(load_dvc())
    assert not problems, "dvc.yaml params vs what stages read:\n" + "\n".join(problems)


def test_dvc_outs_are_what_each_stage_writes() -> None:
    problems = check_outs(load_dvc())
    assert not problems, "dvc.yaml outs vs what stages write:\n" + "\n".join(problems)


# --------------------------------------------------------------------------- the checks can fail
def planted(tmp_path: Path, change) -> dict[str, dict]:
    """dvc.yaml with `change` applied, written to a tmp copy and read back like the real one."""
    stages = copy.deepcopy(load_dvc())
    change(stages)
    file = tmp_path / "dvc.yaml"
    file.write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    return load_dvc(file)


def test_a_missing_extra_or_miswired_stage_is_reported(tmp_path: Path) -> None:
    def change(stages):
        del stages["report_profile"]
        stages["extra"] = {"cmd": "cxr stage extra"}
        stages["study_splits"]["cmd"] = "cxr --no-progress stage report_texts"

    problems = check_names(planted(tmp_path, change))
    assert "report_profile: in STAGES, missing from dvc.yaml" in problems
    assert "extra: in dvc.yaml, not in STAGES" in problems
    assert any(p.startswith("study_splits: cmd") for p in problems)


def test_a_missing_upstream_dep_or_an_unlisted_data_dep_is_reported(tmp_path: Path) -> None:
    def change(stages):
        stages["report_variants"]["deps"].remove("${paths.catalog_dir}/study_splits.parquet")
        stages["study_images"]["deps"].append("${paths.catalog_dir}/report_texts.parquet")

    problems = check_edges(planted(tmp_path, change))
    assert any(p.startswith("report_variants: no dep on an out of its upstream study_splits")
               for p in problems), problems
    assert ("study_images: dep data/catalog/report_texts.parquet is an out of report_texts, "
            "which STAGES does not put upstream of study_images") in problems


def test_a_read_file_missing_from_deps_is_reported(tmp_path: Path) -> None:
    def change(stages):
        stages["evaluation_report"]["deps"].remove("${paths.artifacts_dir}/clip_model")
        stages["study_splits"]["outs"] = ["${paths.catalog_dir}/splits_renamed.parquet"]

    problems = check_reads(planted(tmp_path, change))
    assert ("evaluation_report: reads artifacts/clip_model/registry.json (clip_model's out), "
            "not a dvc dep") in problems
    assert ("report_variants: require() checks data/catalog/study_splits.parquet as "
            "study_splits's, not an out of study_splits in dvc.yaml") in problems


def test_a_missing_or_unread_params_section_is_reported(tmp_path: Path) -> None:
    def change(stages):
        stages["study_splits"]["params"].remove("quality")
        # read only inside contract_check -> quality.contracts.contract_overrides(params)
        stages["report_profile"]["params"].remove("ingest.require_images")
        stages["report_variants"]["params"].append("clip.epochs")

    problems = check_params(planted(tmp_path, change))
    assert "study_splits: reads params quality, not in its dvc params" in problems
    assert "report_profile: reads params ingest, not in its dvc params" in problems
    assert "report_variants: dvc params clip are never read by the stage" in problems


def test_an_unwritten_or_undeclared_out_is_reported(tmp_path: Path) -> None:
    def change(stages):
        stages["study_splits"]["outs"].append("${paths.catalog_dir}/bogus.parquet")
        stages["champion_model"]["outs"] = []

    problems = check_outs(planted(tmp_path, change))
    assert "study_splits: dvc out data/catalog/bogus.parquet is not a path the stage's code names" in problems
    assert "champion_model: returns output reports/champion.json, not a dvc out" in problems


# Settings of the text_encoder section that cannot change its outputs: where MLflow logs, how
# often a checkpoint is written, and how later stages embed (report_embeddings declares those).
TEXT_ENCODER_WITHOUT_EFFECT = {"mlflow", "checkpoint", "encode_path", "embed_shards"}


def test_text_encoder_stage_declares_every_setting_that_shapes_the_encoder() -> None:
    """(c) works per section; the text_encoder stage's section has many settings, and one left
    out of dvc.yaml (as mean_pooling and head_training once were) means `dvc repro` keeps a stale
    encoder when it changes."""
    from cxr_assets.config import TextEncoderParams

    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["text_encoder"]
    declared = {p.split(".", 1)[1] for p in stage["params"] if p.startswith("text_encoder.")}
    missing = set(TextEncoderParams.model_fields) - declared - TEXT_ENCODER_WITHOUT_EFFECT
    assert not missing, f"dvc.yaml stage text_encoder does not declare text_encoder.{sorted(missing)}"
