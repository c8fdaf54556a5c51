"""The two web UIs a user opens, driven in a real (headless) Chromium.

`dagster dev` serves the code location of a throwaway copy of the checkout (tiny params,
temporary DAGSTER_HOME): the asset graph must show the chain, and a materialization launched
by clicking "Materialize" on the demo_data asset page must finish with SUCCESS. An MLflow
server on that project's store must list a registered model and show its `champion` and
`challenger` aliases.

Screenshots go to $CXR_UI_ARTIFACTS (default: reports/ci/): dagster_asset_graph.png,
dagster_ui_run.png, mlflow_models.png, plus <name>_failure.png when a step fails.
The system Chromium is used (no browser download): $CXR_CHROMIUM, default /usr/bin/chromium;
the tests skip when it or the `playwright` package is missing.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from cxr_assets.stages import STAGE_NAMES
from tests.helpers import REPO, copy_checkout, tiny_params, write_params

pytestmark = pytest.mark.slow

CHROMIUM = Path(os.environ.get("CXR_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(os.environ.get("CXR_UI_ARTIFACTS") or REPO / "reports" / "ci")
STARTUP_TIMEOUT_S = 240  # both servers import heavy stacks; 2 busy cores can take minutes
RUN_TIMEOUT_S = 180
UI_TIMEOUT_MS = 45_000
ASSET = "demo_data"  # the cheapest asset of the chain: synthetic DICOMs, seconds

# Dismissed-state of MLflow's one-time overlays (model-registry promo, assistant side panel);
# the tests also close them by clicking when they still appear.
MLFLOW_INIT_SCRIPT = """
try {
  localStorage.setItem('_mlflow_model_registry_promo_modal_dismissed_v1', 'true');
  localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');
  localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');
} catch (e) {}
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http(url: str, payload: dict | None = None, timeout: float = 10) -> tuple[int, str]:
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(url, data=data,
                                     headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as err:
        return 0, str(err)


class Server:
    """A command in its own process group, its output in a log file; stop() ends the group."""

    def __init__(self, name: str, cmd: list[str], cwd: Path, env: dict, log: Path, url: str):
        self.name, self.cmd, self.log, self.url = name, cmd, log, url
        self._log_handle = open(log, "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=self._log_handle,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        self._ready = False

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return "<no log>"

    def wait_ready(self, probe, timeout: float = STARTUP_TIMEOUT_S) -> None:
        """Polls probe() (True when ready; a str is a fatal error) until the deadline."""
        if self._ready:
            return
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.name} exited with code {self.proc.returncode} before it was "
                            f"ready ({' '.join(self.cmd)}); log {self.log}:\n{self.log_tail()}")
            last = probe()
            if last is True:
                self._ready = True
                return
            if isinstance(last, str) and last.startswith("FATAL"):
                pytest.fail(f"{self.name}: {last}\nlog {self.log}:\n{self.log_tail()}")
            time.sleep(1)
        pytest.fail(f"{self.name} not ready at {self.url} after {timeout:.0f}s "
                    f"(last probe: {last!r}); log {self.log}:\n{self.log_tail()}")

    def stop(self, grace: float = 10) -> None:
        """SIGTERM to the group (webserver, daemon, code server, run workers), then SIGKILL."""
        try:
            pgid = os.getpgid(self.proc.pid)
        except ProcessLookupError:
            pgid = None
        if pgid is not None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(pgid, sig)
                except ProcessLookupError:
                    break
                if self._group_gone(pgid, grace if sig == signal.SIGTERM else 5):
                    break
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self._log_handle.close()

    def _group_gone(self, pgid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.proc.poll()  # reap the leader so it does not linger as a zombie
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return True
            if self.proc.returncode is not None and not _live_members(pgid):
                return True  # only zombies left (reparented children reaped by init later)
            time.sleep(0.25)
        return False


def _live_members(pgid: int) -> bool:
    """True while a non-zombie process of the group exists (Linux /proc; True elsewhere)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium; or set "
                    "CXR_CHROMIUM); browsers are never downloaded by these tests")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM),
                                      args=["--no-sandbox", "--headless=new",
                                            "--disable-dev-shm-usage", "--disable-gpu",
                                            # no calls home: this machine's network is closed
                                            "--disable-background-networking", "--no-first-run",
                                            "--disable-component-update", "--disable-sync",
                                            "--disable-quic"])
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def ui_project(tmp_path_factory, tiny_llm) -> Path:
    """A copy of the checkout with tiny params (the tiny LLM: the MLflow test runs the chain)."""
    root = copy_checkout(tmp_path_factory.mktemp("ui-project"))
    write_params(root, tiny_params(root, tiny_llm))
    return root


@pytest.fixture(scope="module")
def servers(browser, ui_project, tmp_path_factory):
    """`dagster dev` and `mlflow server`, both started at once (they boot in parallel)."""
    base = tmp_path_factory.mktemp("ui-servers")
    dagster_home = base / "dagster_home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\nnux:\n  enabled: false\n")
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
           "DAGSTER_HOME": str(dagster_home), "CXR_PROJECT_ROOT": str(ui_project),
           "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "DO_NOT_TRACK": "1",
           "MLFLOW_DISABLE_TELEMETRY": "true",
           # no background job runner + huey consumers: two processes instead of nine
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("DAGSTER_MODULE_NAME", None)

    dagster_port, mlflow_port = _free_port(), _free_port()
    started: dict[str, Server] = {}
    try:
        started["dagster"] = Server(
            "dagster dev",
            [sys.executable, "-m", "dagster", "dev", "-m", "dags_defs.definitions",
             "-h", "127.0.0.1", "-p", str(dagster_port)],
            ui_project, env, base / "dagster.log", f"http://127.0.0.1:{dagster_port}")
        # The project's own store, as `make mlflow-ui` serves it from the project root.
        started["mlflow"] = Server(
            "mlflow server",
            [sys.executable, "-m", "mlflow", "server",
             "--backend-store-uri", f"sqlite:///{ui_project / 'mlflow.db'}",
             "--default-artifact-root", str(ui_project / "mlartifacts"),
             "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1"],
            ui_project, env, base / "mlflow.log", f"http://127.0.0.1:{mlflow_port}")
        yield started
    finally:
        # `dagster dev` outlives SIGTERM for long seconds; its instance is throwaway anyway
        for server in started.values():
            server.stop(grace=3 if server is started.get("dagster") else 10)


@pytest.fixture(scope="module")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


# ---------------------------------------------------------------- helpers


def _fail(page, artifacts: Path, name: str, message: str, server: Server | None = None):
    shot = artifacts / f"{name}_failure.png"
    try:
        page.screenshot(path=str(shot), full_page=True)
    except Exception as err:  # noqa: BLE001 (the original failure matters more)
        shot = Path(f"<screenshot failed: {err}>")
    try:
        body = page.inner_text("body")[:2000]
    except Exception:  # noqa: BLE001
        body = "<unreadable>"
    log = f"\n--- {server.name} log ({server.log}):\n{server.log_tail(3000)}" if server else ""
    pytest.fail(f"{message}\nurl: {page.url}\nscreenshot: {shot}\npage text:\n{body}{log}")


def _graphql(server: Server, query: str, variables: dict | None = None) -> dict:
    status, body = _http(server.url + "/graphql", {"query": query, "variables": variables or {}})
    assert status == 200, f"GraphQL HTTP {status}: {body[:1000]}"
    payload = json.loads(body)
    assert "errors" not in payload, payload["errors"]
    return payload["data"]


def _dagster_probe(server: Server):
    status, _ = _http(server.url + "/server_info", timeout=5)
    if status != 200:
        return f"/server_info answered {status}"
    status, body = _http(server.url + "/graphql", {"query": """{ workspaceOrError {
        __typename ... on Workspace { locationEntries { name loadStatus
          locationOrLoadError { __typename ... on PythonError { message } } } } } }"""})
    if status != 200:
        return f"GraphQL answered {status}"
    entries = json.loads(body)["data"]["workspaceOrError"].get("locationEntries") or []
    for entry in entries:
        loaded = entry["locationOrLoadError"] or {}
        if loaded.get("__typename") == "PythonError":
            return f"FATAL: code location {entry['name']} failed to load: {loaded['message']}"
    if entries and all(e["loadStatus"] == "LOADED" for e in entries):
        return True
    return f"code location not loaded yet: {entries}"


def _mlflow_probe(server: Server):
    status, body = _http(server.url + "/health", timeout=5)
    return True if status == 200 else f"/health answered {status}: {body[:200]}"


def _dismiss_dagster_nux(page) -> None:
    """The one-time 'Join the Dagster community' dialog (also disabled in dagster.yaml)."""
    skip = page.get_by_role("button", name="Skip", exact=True)
    if skip.count() and skip.first.is_visible():
        skip.first.click()


def _show_asset_graph(page, dagster: Server, artifacts: Path) -> None:
    """The global asset lineage with every group expanded, so asset nodes carry their names."""
    page.goto(dagster.url + "/asset-groups")
    try:
        page.get_by_text("Global asset lineage").first.wait_for(timeout=UI_TIMEOUT_MS)
        # groups render as collapsed boxes first; the group names appear once the graph is laid out
        page.get_by_text("ingest", exact=True).first.wait_for(timeout=UI_TIMEOUT_MS)
    except Exception as err:  # noqa: BLE001
        _fail(page, artifacts, "dagster_asset_graph", f"asset lineage page did not load: {err}",
              dagster)
    _dismiss_dagster_nux(page)
    if page.get_by_text("raw_studies", exact=True).first.is_visible():
        return
    page.get_by_role("button", name="settings", exact=True).click()  # graph settings (gear)
    toggle = page.get_by_role("menuitem", name=re.compile("(Expand|Collapse) all groups"))
    try:
        toggle.first.wait_for(timeout=10_000)
    except Exception:  # noqa: BLE001
        _fail(page, artifacts, "dagster_asset_graph",
              "graph settings menu has no 'Expand all groups' item", dagster)
    if "Expand" in toggle.first.inner_text():
        toggle.first.click()
    page.keyboard.press("Escape")


# ---------------------------------------------------------------- tests


def test_dagster_ui_shows_the_chain_and_materializes_from_the_browser(
        browser, servers, ui_project, artifacts):
    dagster = servers["dagster"]
    dagster.wait_ready(lambda: _dagster_probe(dagster))
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    try:
        # 1. The asset graph shows the whole chain.
        _show_asset_graph(page, dagster, artifacts)
        missing = []
        for name in STAGE_NAMES:
            try:
                page.get_by_text(name, exact=True).first.wait_for(state="visible", timeout=15_000)
            except Exception:  # noqa: BLE001
                missing.append(name)
        if missing:
            _fail(page, artifacts, "dagster_asset_graph",
                  f"asset graph does not show {missing}", dagster)
        page.wait_for_timeout(500)  # let the graph's zoom-to-fit animation settle
        page.screenshot(path=str(artifacts / "dagster_asset_graph.png"), full_page=True)

        # 2. Materialize demo_data from its asset page.
        page.goto(f"{dagster.url}/assets/{ASSET}")
        materialize = page.get_by_role("button").filter(has_text=re.compile(r"^\s*Materialize\s*$"))
        try:
            materialize.first.wait_for(state="visible")
            page.wait_for_timeout(300)
            materialize.first.click()
            # toast "Launched run <id8>  [View]" whose link is /runs/<run id>
            view = page.locator("a[href*='/runs/']").filter(has_text="View")
            view.first.wait_for(state="visible", timeout=30_000)
            href = view.first.get_attribute("href")
        except Exception as err:  # noqa: BLE001
            _fail(page, artifacts, "dagster_ui_run",
                  f"could not launch a run from the {ASSET} page: {err}", dagster)
        run_id = href.rstrip("/").split("/runs/")[-1].split("?")[0]
        page.goto(dagster.url + href if href.startswith("/") else href)

        # 3. Watch the run page until the run ends.
        success = page.get_by_text(re.compile(r"^(Success|RUN_SUCCESS)$"))
        failure = page.get_by_text(re.compile(r"^(Failure|RUN_FAILURE|Canceled|RUN_CANCELED)$"))
        deadline = time.monotonic() + RUN_TIMEOUT_S
        outcome = None
        while time.monotonic() < deadline and outcome is None:
            if failure.count() and failure.first.is_visible():
                outcome = "failure"
            elif success.count() and success.first.is_visible():
                outcome = "success"
            else:
                page.wait_for_timeout(1000)
        page.wait_for_timeout(1000)  # the event log catches up with the final events
        page.screenshot(path=str(artifacts / "dagster_ui_run.png"), full_page=True)
        if outcome != "success":
            _fail(page, artifacts, "dagster_ui_run",
                  f"run {run_id} launched from the UI: {outcome or 'no final status'} after "
                  f"{RUN_TIMEOUT_S}s on its run page (saved dagster_ui_run.png)", dagster)
    finally:
        context.close()

    # The run the browser launched, as Dagster recorded it.
    run = _graphql(dagster, """query($id: ID!) { runOrError(runId: $id) { __typename
        ... on Run { status assetSelection { path } tags { key value } } } }""",
                   {"id": run_id})["runOrError"]
    assert run["__typename"] == "Run", run
    assert run["status"] == "SUCCESS", run
    assert [a["path"] for a in run["assetSelection"]] == [[ASSET]]
    assert {"key": "dagster/from_ui", "value": "true"} in run["tags"], run["tags"]
    # ... and it wrote into the temporary project ($CXR_PROJECT_ROOT), per its tiny params.
    labels = ui_project / "data" / "raw" / "demo" / "demo_labels.csv"
    assert labels.is_file(), f"{labels} missing: the run did not use the temporary project"


def test_mlflow_ui_lists_the_model_and_its_aliases(browser, servers, ui_project, artifacts):
    import yaml
    from mlflow import MlflowClient

    mlflow_server = servers["mlflow"]
    mlflow_server.wait_ready(lambda: _mlflow_probe(mlflow_server))
    registry = yaml.safe_load((ui_project / "params.yaml").read_text())["registry"]
    name = registry["model_name"]

    # The pipeline registers the model itself: the tiny chain up to champion_model writes to the
    # project's store, the one this server serves (model_comparison is not needed for that).
    from cxr_assets.config import load_params
    from cxr_assets.paths import ProjectPaths
    from cxr_assets.stages import STAGE_NAMES, stage_module

    params = load_params(ui_project / "params.yaml")
    paths = ProjectPaths.from_params(params, ui_project)
    for stage in STAGE_NAMES:
        if stage != "model_comparison":
            result = stage_module(stage).run(params, paths, progress=False)
            assert not result.blocking_failures, (stage, result.blocking_failures)
    client = MlflowClient(tracking_uri=mlflow_server.url, registry_uri=mlflow_server.url)
    registered = client.get_registered_model(name)
    versions = {alias: str(version) for alias, version in registered.aliases.items()}
    assert "champion" in versions, f"the pipeline set no champion alias: {registered.aliases}"
    champion = client.get_model_version(name, versions["champion"])
    run = client.get_run(champion.run_id)  # the clip_model run that logged and registered it
    assert run.info.run_name == "clip_model" and "clip.epochs" in run.data.params, run.info
    recorded = json.loads((paths.clip_model_dir / "registry.json").read_text())
    assert (recorded["version"], recorded["run_id"]) == (champion.version, champion.run_id)

    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    context.add_init_script(MLFLOW_INIT_SCRIPT)
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    try:
        page.goto(mlflow_server.url + "/#/models")
        link = page.get_by_role("link", name=name, exact=True)
        try:
            link.wait_for(state="visible")
        except Exception:  # noqa: BLE001
            _fail(page, artifacts, "mlflow_models",
                  f"model {name!r} not listed on the Models page", mlflow_server)
        for overlay in (page.get_by_role("button", name="Try it now"),
                        page.get_by_role("button", name="Close", exact=True)):
            if overlay.count() and overlay.first.is_visible():
                overlay.first.click()
        link.click()
        try:
            page.wait_for_url(re.compile(rf"/models/{re.escape(name)}$"))
            row = page.get_by_role("row").filter(has_text=f"Version {champion.version}")
            row.get_by_text(re.compile(r"@\s*champion")).first.wait_for(state="visible")
        except Exception as err:  # noqa: BLE001
            _fail(page, artifacts, "mlflow_models",
                  f"model page does not show version {champion.version} @ champion: {err}",
                  mlflow_server)
        page.screenshot(path=str(artifacts / "mlflow_models.png"), full_page=True)
        # The version's page links the run that registered it.
        page.goto(f"{mlflow_server.url}/#/models/{name}/versions/{champion.version}")
        try:
            page.get_by_role("link", name="clip_model").first.wait_for(state="visible")
        except Exception as err:  # noqa: BLE001
            _fail(page, artifacts, "mlflow_version",
                  f"version {champion.version}'s page does not link its run clip_model: {err}",
                  mlflow_server)
        page.screenshot(path=str(artifacts / "mlflow_version.png"), full_page=True)
    finally:
        context.close()
