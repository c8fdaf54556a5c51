"""Dagster resources: where params live, and how materializations are recorded in DVC."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from dagster import ConfigurableResource, get_dagster_logger
from pydantic import Field


class PipelineConfig(ConfigurableResource):
    """Loads the params file (validated) and resolves the project's paths.

    The params file is the resource's `params_file`, else $CXR_PARAMS (as for `cxr stage`), else
    params.yaml; a relative path is relative to the project root. So
    `CXR_PARAMS=params.iu.yaml dagster asset materialize --select text_encoder` uses the profile.
    """

    params_file: str = Field(default="", description="params file, relative to root; "
                             "empty = $CXR_PARAMS or params.yaml")
    root: str = Field(default="", description="project root; empty = $CXR_PROJECT_ROOT or cwd")

    def root_dir(self) -> Path:
        from cxr_assets.paths import project_root

        return Path(self.root).resolve() if self.root else project_root()

    def params_path(self) -> Path:
        from cxr_assets.config import DEFAULT_PARAMS_FILE, PARAMS_ENV

        path = Path(self.params_file or os.environ.get(PARAMS_ENV) or DEFAULT_PARAMS_FILE)
        return path if path.is_absolute() else self.root_dir() / path

    def load(self):
        from cxr_assets.config import load_params
        from cxr_assets.paths import ProjectPaths

        params = load_params(self.params_path())
        return params, ProjectPaths.from_params(params, self.root_dir())


class DvcRecorder(ConfigurableResource):
    """Records a Dagster materialization in dvc.lock (`dvc commit`), so `dvc repro` skips it.

    DVC lives in its own virtual environment (its ANTLR pin breaks Dagster's), so it is called
    as a command, never imported.
    """

    enabled: bool = True
    dvc_command: str = ""

    def _command(self) -> str | None:
        if self.dvc_command:
            return self.dvc_command
        sibling = Path(sys.executable).with_name("dvc")
        return str(sibling) if sibling.exists() else shutil.which("dvc")

    def record(self, stage: str, root: Path, params_file: Path | None = None) -> str:
        log = get_dagster_logger()
        if not self.enabled:
            return "disabled"
        if params_file is not None and Path(params_file).resolve() != (root / "params.yaml").resolve():
            # dvc.lock pins params.yaml's values: an output made with another profile must not be
            # recorded as up to date for them (`dvc repro` would then skip a needed re-run).
            return f"not recorded: made with {Path(params_file).name}, dvc.lock tracks params.yaml"
        if not (root / ".dvc").is_dir() or not (root / "dvc.yaml").is_file():
            return "no DVC project"
        command = self._command()
        if command is None:
            log.warning("dvc command not found; materialization not recorded in dvc.lock")
            return "dvc not installed"
        if f"\n  {stage}:" not in (root / "dvc.yaml").read_text():
            return "not a DVC stage"
        env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
        done = subprocess.run([command, "commit", "--force", stage], cwd=root, env=env, check=False,
                              capture_output=True, text=True)
        if done.returncode != 0:
            log.warning(f"dvc commit {stage} failed: {done.stderr.strip()[-2000:]}")
            return "dvc commit failed"
        return "recorded in dvc.lock"
