"""Helpers shared by test modules (import from here, not from conftest)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def _merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return merged


def tiny_params(root: Path, tiny_llm: Path, **sections) -> dict:
    """The repository's params.yaml shrunk to run the whole chain in about a minute on one core.

    Every key stays present: dvc.yaml interpolates ${paths.*} from the params file.
    """
    tiny = {
        "project": {"name": "cxr-tiny", "seed": 11},
        "paths": {"raw_dir": "data/raw/demo", "cache_dir": str(root / ".cache" / "cxr")},
        "demo_data": {"out_dir": "data/raw/demo", "n_studies": 36, "seed": 3, "image_size": 64},
        "ingest": {"image_size": 64, "workers": 1},
        "quality": {"min_studies": 4},
        "splits": {"train": 0.6, "val": 0.15, "test": 0.25},
        "text_encoder": {
            "base_model": str(tiny_llm), "max_length": 48, "embed_batch_size": 8,
            "init_from": None,  # the shipped release is for SmolLM2, not the tiny model
            "pooling": "mean",  # the demo's pooling needs the release's head
            "mean_pooling": {"layers": [-1], "skip_first_token": False},  # SmolLM2's layers
            "postprocess": {"n_fit": 16}, "lora": {"top_layers": None},
            "query_adapter": {"steps": 50, "rank": 8},
            "mntp": {"steps": 2, "batch_size": 4},
            "contrastive": {"steps": 2, "batch_size": 4},
        },
        "clip": {"vision_backbone": "resnet10t", "image_size": 32, "embed_dim": 32, "epochs": 2,
                 "batch_size": 8, "warmup_steps": 1, "threads": 1},
        # model_comparison: one cheap baseline keeps every chain test fast
        "evaluation": {"recall_at": [1, 5, 10], "comparison": {"text_towers": ["adapted", "tfidf"]}},
        "registry": {"tracking_uri": "sqlite:///mlflow.db", "artifact_location": "mlartifacts",
                     "experiment": "cxr-tiny", "model_name": "cxr-tiny"},
    }
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    return _merge(_merge(base, tiny), sections)


def write_params(root: Path, params: dict) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path



def copy_checkout(dest: Path) -> Path:
    """The repository's tracked files (what a fresh clone has) copied to `dest`, as a git repo."""
    files = subprocess.run(["git", "ls-files"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    return dest
