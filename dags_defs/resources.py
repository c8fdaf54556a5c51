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
    """Loads params.yaml (validated) and resolves the project's paths."""

    params_file: str = Field(default="params.yaml", description="params file, relative to root")
    root: str = Field(default="", description="project root; empty = $CXR_PROJECT_ROOT or cwd")

    def load(self):
        from cxr_assets.config import load_params
        from cxr_assets.paths import ProjectPaths, project_root

        root = Path(self.root).resolve() if self.root else project_root()
        params_path = Path(self.params_file)
        params = load_params(params_path if params_path.is_absolute() else root / params_path)
        return params, ProjectPaths.from_params(params, root)


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

    def record(self, stage: str, root: Path) -> str:
        log = get_dagster_logger()
        if not self.enabled:
            return "disabled"
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
