"""Fault injection: kill -9 mid-ingestion and mid-training, a full disk under the image cache,
two writers at once (catalog and MLflow registry), and the failed-run alert sensor.

The faults run in subprocesses (the `cxr` command, or this file run as a script: see `_DRIVERS`
at the bottom), so a SIGKILL or a file size limit hits a real process, never the test runner.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CATALOG_TABLES = ("studies", "images", "reports", "quarantine", "ingest_batches")


# ----------------------------------------------------------------------------- helpers


def _cxr() -> list[str]:
    script = Path(sys.executable).with_name("cxr")
    return [str(script)] if script.exists() else [sys.executable, "-m", "cxr_assets"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("CXR_PROJECT_ROOT", "CXR_PARAMS", "CXR_ALERT_WEBHOOK")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true",
               PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def _driver_command(*args: str) -> list[str]:
    """This file run as a script: `python test_faults.py <driver> <args>`."""
    return [sys.executable, str(Path(__file__).resolve()), *args]


def _driver(*args: str, cwd: Path, **popen) -> subprocess.Popen:
    return subprocess.Popen(_driver_command(*args), cwd=cwd, env=_env(), **popen)


def _start_stage(project: Path, tag: str, failpoint: str | None = None) -> subprocess.Popen:
    """raw_studies in a subprocess; with `failpoint`, it holds there (cxr_assets.failpoints) and
    writes project/<tag>.held, so a kill lands exactly at that point."""
    out = open(project / f"{tag}.out", "w")  # noqa: SIM115 - closed below, the child keeps its copy
    err = open(project / f"{tag}.err", "w")  # noqa: SIM115
    hold = {"CXR_FAILPOINT": failpoint, "CXR_FAILPOINT_MARKER": str(project / f"{tag}.held")} \
        if failpoint else {}
    try:
        return subprocess.Popen([*_cxr(), "--no-progress", "stage", "raw_studies"], cwd=project,
                                env=_env(**hold), stdout=out, stderr=err)
    finally:
        out.close()
        err.close()


def _stage_summary(project: Path, tag: str) -> dict:
    text = (project / f"{tag}.out").read_text()
    return json.loads(text[text.index("{"):])


def _kill_when(proc: subprocess.Popen, ready, delay: float = 0.0, timeout: float = 180.0) -> bool:
    """SIGKILL `proc` once `ready()` holds (after `delay` s). False when it exited first."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if ready():
            if delay:
                time.sleep(delay)
            if proc.poll() is not None:
                return False
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise AssertionError(f"condition not reached within {timeout} s")
        time.sleep(0.002)
    return False


def _has_open_file(pid: int, marker: str) -> bool:
    """Whether process `pid` has a file whose path contains `marker` open (Linux /proc)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if marker in os.readlink(f"/proc/{pid}/fd/{fd}"):
                return True
        except OSError:
            continue
    return False


def _project(root: Path, raw: Path) -> Path:
    """A project whose params.yaml (the tiny test profile) reads `raw`; no LLM is needed."""
    from tests.helpers import tiny_params, write_params

    write_params(root, tiny_params(root, root / "no-llm", paths={"raw_dir": str(raw)}))
    return root


def _catalog_snapshot(catalog: Path) -> dict[str, int]:
    """Row counts of every table a reader can see; fails if any is torn or unreadable."""
    import duckdb
    import polars as pl

    counts: dict[str, int] = {}
    for name in CATALOG_TABLES:
        path = catalog / f"{name}.parquet"
        if path.exists():
            counts[name] = pl.read_parquet(path).height
    db = catalog / "catalog.duckdb"
    if db.exists():
        con = duckdb.connect(str(db), read_only=True)  # replays a complete WAL, drops a torn one
        try:
            present = {r[0] for r in con.sql("SELECT table_name FROM information_schema.tables").fetchall()}
            for name in sorted(present & set(CATALOG_TABLES)):
                counts[f"duckdb.{name}"] = con.sql(f'SELECT count(*) FROM "{name}"').fetchone()[0]
        finally:
            con.close()
    return counts


def _assert_catalog_complete(catalog: Path, labels_csv: Path) -> dict[str, int]:
    """No duplicate rows, Parquet == DuckDB, every study of the tree catalogued or quarantined."""
    import duckdb
    import polars as pl

    t = {name: pl.read_parquet(catalog / f"{name}.parquet") for name in CATALOG_TABLES}
    assert t["studies"]["study_id"].is_unique().all(), "duplicate study rows"
    assert t["images"]["image_id"].is_unique().all(), "duplicate image rows"
    assert t["images"]["image_path"].is_unique().all(), "an image file catalogued twice"
    assert t["reports"]["study_id"].is_unique().all(), "duplicate report rows"
    assert t["quarantine"]["path"].is_unique().all(), "an input quarantined twice"
    assert not set(t["images"]["image_path"]) & set(t["quarantine"]["path"]), \
        "an image both catalogued and quarantined"
    con = duckdb.connect(str(catalog / "catalog.duckdb"), read_only=True)
    try:
        for name, df in t.items():
            rows = con.sql(f'SELECT count(*) FROM "{name}"').fetchone()[0]
            distinct = con.sql(f'SELECT count(*) FROM (SELECT DISTINCT * FROM "{name}")').fetchone()[0]
            assert rows == df.height == distinct, \
                f"DuckDB {name}: {rows} rows, {distinct} distinct; Parquet {df.height}"
        db_ids = {r[0] for r in con.sql("SELECT study_id FROM studies").fetchall()}
    finally:
        con.close()
    assert db_ids == set(t["studies"]["study_id"])
    expected = {f"s{sid}" for sid in pl.read_csv(labels_csv, infer_schema_length=0)["study_id"]}
    accounted = set(t["studies"]["study_id"]) | set(t["quarantine"]["study_id"].drop_nulls())
    assert expected <= accounted, f"studies lost: {sorted(expected - accounted)[:5]}"
    leftovers = sorted(p.name for p in catalog.glob(".*.tmp"))
    assert not leftovers, f"temporary files left in the catalog: {leftovers}"
    return {name: df.height for name, df in t.items()}


@pytest.fixture(scope="module")
def demo_tree(tmp_path_factory) -> Path:
    """300 synthetic studies (~460 DICOMs): `cxr stage raw_studies` scans them in 1-3 s."""
    from cxr_assets.demo import generate_demo_dataset

    raw = tmp_path_factory.mktemp("faults-demo") / "raw"
    generate_demo_dataset(raw, n_studies=300, seed=3, image_size=32, progress=False)
    return raw


def _copy_tree(raw: Path, dest: Path) -> Path:
    shutil.copytree(raw, dest)
    return dest


# ----------------------------------------------------------------------------- 1. kill -9 in ingestion


@pytest.mark.slow
def test_sigkill_during_ingestion_leaves_a_readable_catalog_and_rerun_completes(tmp_path, demo_tree):
    raw = _copy_tree(demo_tree, tmp_path / "raw")  # this test changes the tree
    project = _project(tmp_path / "project", raw)
    catalog = project / "data" / "catalog"
    kills: dict[str, bool] = {}

    # a) mid-scan: killed while it reads DICOM headers, before anything is written.
    proc = _start_stage(project, "a")
    if Path("/proc/self/fd").is_dir():
        started = lambda: _has_open_file(proc.pid, str(raw / "files"))
    else:
        t0 = time.monotonic()
        started = lambda: time.monotonic() - t0 > 2.0
    kills["mid_scan"] = _kill_when(proc, started, delay=0.2)
    assert kills["mid_scan"], f"raw_studies finished before the kill: {(project / 'a.err').read_text()[-2000:]}"
    assert _catalog_snapshot(catalog) == {}, "a table became visible before the scan ended"

    def held(tag: str) -> Callable[[], bool]:
        return (project / f"{tag}.held").exists

    def why(tag: str) -> str:
        return f"raw_studies ({tag}) ended before its failpoint: {(project / f'{tag}.err').read_text()[-2000:]}"

    # b) after writing, before the data-contract checks: the catalog is complete.
    proc = _start_stage(project, "b", "raw_studies.before_checks")
    kills["during_checks"] = _kill_when(proc, held("b"))
    assert kills["during_checks"], why("b")
    first = _catalog_snapshot(catalog)
    assert set(first) == set(CATALOG_TABLES) | {f"duckdb.{n}" for n in CATALOG_TABLES}

    # The tree changes (an unreadable image, a report without images): the next catalog differs.
    some_study = next(p for p in sorted((raw / "files").glob("p*/p*/s*")) if p.is_dir())
    truncated = some_study / "zz_truncated.dcm"
    truncated.write_bytes(b"DICM" * 10)
    orphan = some_study.parent / "s59999999.txt"
    orphan.write_text("IMPRESSION: No acute process.\n")

    # c) mid-Parquet: killed after the first table's file was replaced, before the others.
    before = {k: v for k, v in _listing(catalog).items() if k.endswith(".parquet")}
    proc = _start_stage(project, "c", "catalog.between_parquet_tables")
    kills["mid_parquet"] = _kill_when(proc, held("c"))
    assert kills["mid_parquet"], why("c")
    _catalog_snapshot(catalog)  # every visible file is a whole (old or new) table
    replaced = [k for k, v in _listing(catalog).items() if k in before and before[k] != v]
    assert len(replaced) == 1, f"expected exactly the first table replaced, got {replaced}"
    debris = sorted(p.name for p in catalog.glob(".*.tmp"))  # the killed writer's temporaries

    # d) mid-DuckDB: killed inside the transaction that replaces the tables, before its commit.
    proc = _start_stage(project, "d", "catalog.inside_duckdb_transaction")
    kills["mid_duckdb"] = _kill_when(proc, held("d"))
    assert kills["mid_duckdb"], why("d")
    after_d = _catalog_snapshot(catalog)
    for name in CATALOG_TABLES:  # the uncommitted transaction is gone: DuckDB holds the old tables
        assert after_d[f"duckdb.{name}"] == first[f"duckdb.{name}"], name

    # e) the rerun completes and the catalog is exactly right.
    proc = _start_stage(project, "e")
    assert proc.wait(timeout=300) == 0, (project / "e.err").read_text()[-3000:]
    summary = _stage_summary(project, "e")
    books = next(c for c in summary["checks"] if c["name"] == "accounting_balanced")
    assert books["passed"], books
    counts = _assert_catalog_complete(catalog, raw / "demo_labels.csv")
    assert {str(orphan), str(truncated)} <= set(_read_quarantine(catalog)["path"])
    print(f"\nfault 1 kills hit: {kills}; temporaries after the mid-Parquet kill: {debris} "
          f"(removed by the rerun); final catalog {counts}")


def _listing(folder: Path) -> dict[str, int | None]:
    """name -> mtime of a folder's entries (None for one that vanished while listing)."""
    out: dict[str, int | None] = {}
    for entry in folder.iterdir():
        try:
            out[entry.name] = entry.stat().st_mtime_ns
        except FileNotFoundError:
            out[entry.name] = None
    return out


def _read_quarantine(catalog: Path):
    import polars as pl

    return pl.read_parquet(catalog / "quarantine.parquet")


# ----------------------------------------------------------------------------- 2. kill -9 in training


@pytest.mark.slow
def test_sigkill_during_training_resumes_from_the_checkpoint(tmp_path):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    images.mkdir()
    paths = []
    for i in range(56):
        pixels = rng.integers(0, 60, (32, 32)).astype(np.uint8)
        row, col = divmod(i % 4, 2)
        pixels[row * 16:(row + 1) * 16, col * 16:(col + 1) * 16] += 150
        Image.fromarray(pixels).save(images / f"img_{i:03d}.png")
        paths.append(str(images / f"img_{i:03d}.png"))
    text = rng.normal(size=(56, 16)).astype(np.float32)
    np.savez(tmp_path / "pairs.npz", train_paths=paths[:48], train_text=text[:48],
             val_paths=paths[48:], val_text=text[48:])
    ckpt = tmp_path / "checkpoints"
    epochs, batch = 6, 8
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({
        "pairs": str(tmp_path / "pairs.npz"), "checkpoint_dir": str(ckpt),
        "params": {"vision_backbone": "resnet10t", "image_size": 32, "embed_dim": 16,
                   "epochs": epochs, "batch_size": batch, "warmup_steps": 1, "threads": 1,
                   "workers": 0, "device": "cpu",
                   "checkpoint": {"every_n_steps": 2, "resume": True}},
    }))
    total = (48 // batch) * epochs

    proc = _driver("train", str(spec), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    killed = _kill_when(proc, lambda: (ckpt / "last" / "meta.json").is_file())
    assert killed, f"training ended before its first checkpoint was seen: {proc.stderr.read()[-2000:]!r}"
    proc.stdout.close()
    proc.stderr.close()
    from cxr_assets.clip import checkpoint as ck

    folder = ck.find_checkpoint(ckpt, ck.LAST)
    assert folder is not None, "kill -9 left no complete checkpoint"
    saved_step = ck.read_meta(folder)["step"]
    assert 0 < saved_step < total

    done = _driver("train", str(spec), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                   text=True)
    out, err = done.communicate(timeout=300)
    assert done.returncode == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["resumed_from_step"] == saved_step > 0
    assert result["steps"] == total and result["epochs"] == epochs
    assert ck.read_meta(ck.find_checkpoint(ckpt, ck.LAST))["step"] == total
    print(f"\nfault 2: killed after checkpoint step {saved_step}, resumed to {result['steps']}/{total}")


# ----------------------------------------------------------------------------- 3. full disk


def _tmpfs(mountpoint: Path, size: str) -> bool:
    if not sys.platform.startswith("linux") or os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    mountpoint.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mountpoint)],
                          capture_output=True, check=False)
    return done.returncode == 0


@pytest.fixture
def cache_inputs(tmp_path):
    """A small demo tree catalogued (headers only) into images.parquet."""
    from cxr_assets.demo import generate_demo_dataset
    from cxr_assets.ingest.catalog import scan_mimic_layout

    raw = tmp_path / "raw"
    generate_demo_dataset(raw, n_studies=10, seed=5, image_size=96, progress=False)
    images = scan_mimic_layout(raw, progress=False).images
    assert images.height >= 10
    images.write_parquet(tmp_path / "images.parquet")
    return tmp_path / "images.parquet"


def _run_cache(images: Path, cache: Path, workers: int, fsize: int = 0) -> dict:
    done = subprocess.run(_driver_command("cache", str(images), str(cache), "64", str(workers),
                                          str(fsize)),
                          cwd=images.parent, env=_env(), capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.stdout.strip(), done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]) | {"rc": done.returncode}


def _assert_cache_sound(cache: Path, size: int = 64) -> int:
    """Every PNG in the cache opens, decodes and has the cached size; no temporaries left."""
    from PIL import Image

    leftovers = [p for p in cache.rglob("*") if p.is_file() and (p.name.startswith(".") or ".tmp" in p.name)]
    assert not leftovers, f"temporary files left in the cache: {leftovers}"
    pngs = list(cache.rglob("*.png"))
    for png in pngs:
        with Image.open(png) as image:
            image.load()  # decodes every byte: a truncated file raises here
            assert image.size == (size, size), png
    return len(pngs)


@pytest.mark.parametrize("limit", ["rlimit", "tmpfs"])
def test_full_disk_in_image_cache_stops_with_a_clear_error(cache_inputs, tmp_path, limit):
    import polars as pl

    from cxr_assets.ingest.image_cache import cache_images

    images = pl.read_parquet(cache_inputs)
    cache = tmp_path / "cache"
    if limit == "rlimit":
        # Some entries are cached while the disk is fine; then every new file hits the size limit.
        cache_images(images.head(4), cache, size=64, workers=1, progress=False)
        smallest = min(p.stat().st_size for p in cache.rglob("*.png"))
        fsize = 256
        assert fsize < smallest, "the file size limit must be below any cached PNG's size"
        run = _run_cache(cache_inputs, cache, workers=2, fsize=fsize)  # the process-pool path
        expected = ("File too large", "EFBIG", "[Errno 27]")
    else:
        if not _tmpfs(cache, "16k"):  # 4 pages: a few PNGs fit, then ENOSPC
            pytest.skip("cannot mount a tmpfs here (needs root on Linux); the rlimit case covers it")
        try:
            run = _run_cache(cache_inputs, cache, workers=1)  # the serial path
            n_sound = _assert_cache_sound(cache)
        finally:
            subprocess.run(["umount", str(cache)], check=False)
        expected = ("No space left", "ENOSPC", "[Errno 28]")
    assert run["rc"] != 0 and not run["ok"], f"a full cache was not reported as an error: {run}"
    assert any(word in run["error"] for word in expected), run["error"]
    assert "image cache" in run["error"] and str(cache) in run["error"], run["error"]
    if limit == "rlimit":
        n_sound = _assert_cache_sound(cache)
        assert n_sound == 4  # the entries written before the limit are intact
        # With space again, the rerun keeps the existing entries and caches the rest.
        again = _run_cache(cache_inputs, cache, workers=1)
        assert again["ok"] and again["n_cached"] == images.height and not again["quarantine"], again
        assert again["n_reused"] == 4
        assert _assert_cache_sound(cache) == images["file_sha256"].n_unique()
    print(f"\nfault 3 ({limit}): {run['error']!r}; {n_sound} sound PNGs left")


# ----------------------------------------------------------------------------- 4. two writers


@pytest.mark.slow
def test_two_concurrent_raw_studies_runs_both_succeed(tmp_path, demo_tree):
    project = _project(tmp_path / "project", demo_tree)
    catalog = project / "data" / "catalog"
    first, second = _start_stage(project, "a"), _start_stage(project, "b")
    codes = [first.wait(timeout=300), second.wait(timeout=300)]
    errors = [(project / f"{t}.err").read_text()[-2000:] for t in "ab"]
    assert codes == [0, 0], f"exit codes {codes}: {errors}"
    counts = _assert_catalog_complete(catalog, demo_tree / "demo_labels.csv")
    for tag in "ab":
        assert _stage_summary(project, tag)["metadata"]["n_studies"] == counts["studies"]
    print(f"\nfault 4 (catalog): both runs exit 0; catalog {counts}")


@pytest.mark.slow
def test_two_concurrent_mlflow_registrations_into_one_sqlite_store(tmp_path):
    import sqlite3

    project = _project(tmp_path / "project", tmp_path / "raw")
    go = tmp_path / "go"
    procs = [_driver("register", str(project), str(go), tag, cwd=project, stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE, text=True) for tag in "ab"]
    deadline = time.monotonic() + 180
    while not all(Path(f"{go}.{tag}.ready").exists() for tag in "ab"):  # both imported mlflow
        assert all(p.poll() is None for p in procs), [p.communicate()[1][-2000:] for p in procs]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    go.touch()  # both open the fresh store at the same moment
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-3000:] for _, err in outputs]
    versions = sorted(json.loads(out.strip().splitlines()[-1])["version"] for out, _ in outputs)
    assert versions == ["1", "2"]

    db = project / "mlflow.db"
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("SELECT count(*) FROM experiments WHERE name = 'cxr-tiny'").fetchone()[0] == 1
        rows = con.execute("SELECT version FROM model_versions WHERE name = 'cxr-tiny'").fetchall()
        assert sorted(str(v) for (v,) in rows) == ["1", "2"]
        alias = con.execute("SELECT version FROM registered_model_aliases "
                            "WHERE name = 'cxr-tiny' AND alias = 'challenger'").fetchone()
        assert alias is not None and str(alias[0]) in versions
    print(f"\nfault 4 (mlflow): versions {versions}, challenger -> v{alias[0]}")


# ----------------------------------------------------------------------------- 5. alert sensor


class _Hook:
    """A local HTTP server recording the bodies POSTed to it."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append((self.path, self.headers.get("Content-Type"), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory):
    """cxr_pipeline's raw_studies step run in-process with raw_dir pointing at a missing folder."""
    from dagster import AssetKey, DagsterInstance

    root = _project(tmp_path_factory.mktemp("alerts") / "project", Path("data/raw/missing"))
    previous = os.environ.get("CXR_PROJECT_ROOT")
    os.environ["CXR_PROJECT_ROOT"] = str(root)  # what the Definitions' PipelineConfig() reads
    try:
        from dags_defs.definitions import defs

        instance = DagsterInstance.ephemeral()
        result = defs.resolve_job_def("cxr_pipeline").execute_in_process(
            instance=instance, raise_on_error=False, asset_selection=[AssetKey("raw_studies")])
    finally:
        if previous is None:
            os.environ.pop("CXR_PROJECT_ROOT", None)
        else:
            os.environ["CXR_PROJECT_ROOT"] = previous
    assert not result.success
    return root, instance, result


def _evaluate_sensor(root: Path, instance, result) -> None:
    from dagster import build_run_status_sensor_context

    from dags_defs.alerts import run_failure_alerts
    from dags_defs.resources import PipelineConfig

    context = build_run_status_sensor_context(
        sensor_name="run_failure_alerts", dagster_instance=instance,
        dagster_run=result.dagster_run, dagster_event=result.get_run_failure_event(),
        resources={"pipeline": PipelineConfig(root=str(root))},
    ).for_run_failure()
    run_failure_alerts(context)


def _alerts(root: Path) -> list[dict]:
    path = root / "reports" / "alerts" / "failed_runs.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_failure_sensor_writes_the_alert_and_posts_the_webhook(failed_run, monkeypatch):
    root, instance, result = failed_run
    run_id = result.dagster_run.run_id

    monkeypatch.delenv("CXR_ALERT_WEBHOOK", raising=False)
    n_before = len(_alerts(root))
    _evaluate_sensor(root, instance, result)
    [alert] = _alerts(root)[n_before:]
    assert alert["run_id"] == run_id and alert["job"] == "cxr_pipeline"
    assert alert["failed_steps"] == ["raw_studies"]
    assert "paths.raw_dir does not exist" in alert["error"] and "FileNotFoundError" in alert["error"]
    assert "\n" not in alert["error"] and alert["time"]

    with _Hook() as hook:
        monkeypatch.setenv("CXR_ALERT_WEBHOOK", hook.url)
        _evaluate_sensor(root, instance, result)
    [(path, content_type, body)] = hook.received
    posted = json.loads(body)
    assert path == "/alerts" and content_type == "application/json"
    assert posted["run_id"] == run_id and posted["error"] == alert["error"]
    assert _alerts(root)[-1] == posted  # the line and the POST carry the same JSON


def test_failure_sensor_survives_a_dead_webhook(failed_run, monkeypatch):
    import socket

    root, instance, result = failed_run
    with socket.socket() as sock:  # a free port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    n_before = len(_alerts(root))
    monkeypatch.setenv("CXR_ALERT_WEBHOOK", f"http://127.0.0.1:{port}/down")
    _evaluate_sensor(root, instance, result)  # logs a warning, raises nothing
    assert len(_alerts(root)) == n_before + 1
    assert _alerts(root)[-1]["run_id"] == result.dagster_run.run_id


# ----------------------------------------------------------------------------- drivers


def _drive_train(spec_file: str) -> None:
    import numpy as np
    import torch

    from cxr_assets.clip.train import train_clip
    from cxr_assets.config import ClipParams

    spec = json.loads(Path(spec_file).read_text())
    torch.set_num_threads(1)
    data = np.load(spec["pairs"])
    result = train_clip(
        [Path(p) for p in data["train_paths"]], data["train_text"],
        [Path(p) for p in data["val_paths"]], data["val_text"],
        params=ClipParams(**spec["params"]), text_encoder_hash="fault-test", seed=5,
        progress=False, checkpoint_dir=Path(spec["checkpoint_dir"]),
    )
    print(json.dumps({"steps": result.steps, "resumed_from_step": result.resumed_from_step,
                      "epochs": len(result.history)}))


def _drive_cache(images: str, cache: str, size: str, workers: str, fsize: str) -> int:
    import resource

    import polars as pl

    from cxr_assets.ingest.image_cache import cache_images

    if int(fsize):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit raise EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(fsize), int(fsize)))
    table = pl.read_parquet(images)
    try:
        cached, quarantine = cache_images(table, Path(cache), size=int(size), workers=int(workers),
                                          progress=False)
    except Exception as error:  # noqa: BLE001 - reported to the test
        print(json.dumps({"ok": False, "error": f"{type(error).__name__}: {error}"}))
        return 1
    print(json.dumps({"ok": True, "n_cached": cached.height,
                      "n_reused": int(cached["was_cached"].sum()),
                      "quarantine": quarantine["reason"].to_list()}))
    return 0


def _drive_register(root: str, go: str, tag: str) -> None:
    """Register a pyfunc version as clip_model does (log_model with registered_model_name, then
    the challenger alias), released together with the other driver by the `go` file."""
    import mlflow
    import mlflow.pyfunc

    from cxr_assets.config import load_params
    from cxr_assets.paths import ProjectPaths
    from cxr_assets.registry.tracking import CHALLENGER, configure_mlflow

    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return model_input

    params = load_params(Path(root) / "params.yaml")
    paths = ProjectPaths.from_params(params, root)
    Path(f"{go}.{tag}.ready").touch()
    while not Path(go).exists():
        time.sleep(0.01)
    client = configure_mlflow(params, paths)
    with mlflow.start_run(run_name=f"register-{tag}"):
        info = mlflow.pyfunc.log_model(name="model", python_model=Echo(), pip_requirements=["mlflow"],
                                       registered_model_name=params.registry.model_name)
        version = str(info.registered_model_version)
        client.set_registered_model_alias(params.registry.model_name, CHALLENGER, version)
    print(json.dumps({"tag": tag, "version": version}))


_DRIVERS = {"train": _drive_train, "cache": _drive_cache, "register": _drive_register}

if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(_DRIVERS[sys.argv[1]](*sys.argv[2:]) or 0)
