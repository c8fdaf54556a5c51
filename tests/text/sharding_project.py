"""A tiny project for the sharded-embedding tests: params.yaml, a saved tiny TextEncoder (the
random Llama of tests/conftest.py::tiny_llm) and report_texts.parquet; table comparison."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import polars as pl

FINDINGS = ["Heart size is normal.", "Small left pleural effusion.", "Right lower lobe opacity.",
            "Mild cardiomegaly.", "Lungs are clear.", "Bilateral interstitial opacities.",
            "No pneumothorax.", "Sternotomy wires intact."]
IMPRESSIONS = ["No acute disease.", "Effusion.", "Pneumonia.", "Cardiomegaly.", "Normal chest."]


def report_texts(n: int = 30) -> list[str]:
    """Varied lengths (so batches pad differently per shard) and some repeated reports."""
    return [" ".join(FINDINGS[(i + j) % len(FINDINGS)] for j in range(1 + i % 4))
            + " " + IMPRESSIONS[i % len(IMPRESSIONS)] for i in range(n - 4)] + [
        "No acute disease.", "Normal chest.", "No acute disease.", "Normal chest."]


def write_reports(table: Path, texts: list[str]) -> None:
    table.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame({"study_id": [f"s{i:03d}" for i in range(len(texts))],
                  "patient_id": [f"p{i // 2}" for i in range(len(texts))],
                  "report_for_training": texts}).write_parquet(table)


def make_project(root: Path, tiny_llm: Path, encoder_from: Path | None = None, **text_encoder):
    """A project folder with params.yaml, a saved tiny TextEncoder and report_texts.parquet."""
    from cxr_assets.config import load_params
    from cxr_assets.paths import ProjectPaths
    from cxr_assets.text.encoder import TextEncoder
    from tests.helpers import tiny_params, write_params

    # pooling: only what the params must validate with; the saved encoder brings its own
    raw = tiny_params(root, tiny_llm, text_encoder={"pooling": "mean", **text_encoder})
    params_file = write_params(root, raw)
    params = load_params(params_file)
    paths = ProjectPaths.from_params(params, root)
    if encoder_from is None:
        TextEncoder.from_base(tiny_llm, max_length=48).save_pretrained(paths.text_encoder_dir)
    else:  # the same saved encoder (same content hash) in another project
        shutil.copytree(encoder_from, paths.text_encoder_dir)
    write_reports(paths.report_texts_table, report_texts())
    return params, paths


def vectors(table: Path) -> np.ndarray:
    return np.stack(pl.read_parquet(table)["embedding"].to_numpy())


def assert_same_table(sharded: Path, single: Path) -> None:
    a, b = pl.read_parquet(sharded), pl.read_parquet(single)
    assert a.columns == b.columns
    assert a.drop("embedding").equals(b.drop("embedding"))  # same rows, same order
    np.testing.assert_allclose(vectors(sharded), vectors(single), rtol=0, atol=1e-6)


class Counting:
    """Wraps an encoder and records every text it is asked to encode."""

    def __init__(self, encoder) -> None:
        self.encoder, self.encoded = encoder, []
        self.content_hash, self.dim = encoder.content_hash, encoder.dim
        self.document_hash = encoder.document_hash  # what the embedding cache keys on

    def encode(self, texts, **kwargs):
        self.encoded += list(texts)
        return self.encoder.encode(texts, **kwargs)
