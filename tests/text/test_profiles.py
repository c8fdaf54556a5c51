"""The IU adaptation profile (params.iu.yaml) validates and changes only the text_encoder section."""

from __future__ import annotations

from pathlib import Path

import yaml

from cxr_assets.config import load_params

REPO = Path(__file__).resolve().parents[2]


def test_iu_profile_differs_from_params_only_in_text_encoder() -> None:
    iu = load_params(REPO / "params.iu.yaml")
    base = load_params(REPO / "params.yaml")
    assert iu.text_encoder.corpus.source == "iu_csv" and base.text_encoder.corpus.source == "catalog"
    assert iu.text_encoder.mntp.steps > base.text_encoder.mntp.steps
    iu_raw = yaml.safe_load((REPO / "params.iu.yaml").read_text())
    base_raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert set(iu_raw) == set(base_raw)
    changed = [k for k in base_raw if iu_raw[k] != base_raw[k]]
    assert changed == ["text_encoder"], f"params.iu.yaml is out of sync with params.yaml: {changed}"


def test_release_profile_differs_only_in_paths_and_text_encoder() -> None:
    release = load_params(REPO / "params.release.yaml")
    base = load_params(REPO / "params.yaml")
    assert release.text_encoder.release_to
    # The demo starts from a release that one of the profiles writes.
    written = {load_params(f).text_encoder.release_to for f in REPO.glob("params.release*.yaml")}
    assert base.text_encoder.init_from in written, base.text_encoder.init_from
    # A release trained on top of an earlier one names a committed release folder, never itself.
    start = release.text_encoder.init_from
    if start is not None:
        assert start != release.text_encoder.release_to
        assert (REPO / start / "encoder_config.json").is_file(), start
    assert release.paths.artifacts_dir != base.paths.artifacts_dir  # the demo's artifacts stay
    base_raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for profile in ("params.release.yaml", "params.release_v3.yaml", "params.release_v4.yaml",
                    "params.release_v5.yaml", "params.release_v6.yaml", "params.candidate_v6.yaml"):
        raw = yaml.safe_load((REPO / profile).read_text())
        changed = sorted(k for k in base_raw if raw[k] != base_raw[k])
        assert changed == ["paths", "text_encoder"], f"{profile} out of sync: {changed}"


def test_v3_profile_writes_the_committed_v3_release_from_v2() -> None:
    """v3 (stage three: a latent-attention head on v2's body) is reproducible from its profile."""
    v3 = load_params(REPO / "params.release_v3.yaml").text_encoder
    v2 = load_params(REPO / "params.release.yaml").text_encoder
    assert v3.init_from == v2.release_to and v3.release_to != v2.release_to
    assert v3.pooling == "latent_attention" and v3.head_training.steps > 0
    assert (REPO / v3.release_to / "pooling_head.safetensors").is_file()
    assert "params.release_v3.yaml" in (REPO / v3.release_to / "MODEL_CARD.md").read_text()


def test_v4_profile_writes_the_committed_v4_release_from_v3() -> None:
    """v4 (a head trained beside the post-processed mean on v2's body, starting from v3's head)
    is reproducible from its profile, and the demo default uses it as released."""
    v4 = load_params(REPO / "params.release_v4.yaml").text_encoder
    v3 = load_params(REPO / "params.release_v3.yaml").text_encoder
    demo = load_params(REPO / "params.yaml").text_encoder
    assert v4.init_from == v3.release_to and v4.release_to != v3.release_to
    assert v4.pooling == "mean_and_latent_attention" and v4.head_training.steps > 0
    assert v4.postprocess.method != "none"
    folder = REPO / v4.release_to
    assert (folder / "pooling_head.safetensors").is_file()
    assert (folder / "postprocess.safetensors").is_file()
    assert "params.release_v4.yaml" in (folder / "MODEL_CARD.md").read_text()
    if demo.init_from == v4.release_to:  # the demo loads it with the same pooling and weight
        assert demo.pooling == v4.pooling
        assert demo.latent_attention.mean_weight == v4.latent_attention.mean_weight


def test_v5_profile_writes_the_committed_v5_release_from_v4() -> None:
    """v5 (v4's head trained further on finding statements in the report's own words and on
    normal-report statements) is reproducible from its profile."""
    v5 = load_params(REPO / "params.release_v5.yaml").text_encoder
    v4 = load_params(REPO / "params.release_v4.yaml").text_encoder
    demo = load_params(REPO / "params.yaml").text_encoder
    assert v5.init_from == v4.release_to and v5.release_to != v4.release_to
    assert v5.head_training.steps > 0 and v5.contrastive.steps == 0 and v5.mntp.steps == 0
    assert v5.contrastive.statement_phrasing == "both" and v5.contrastive.normal_statements
    assert v5.pooling == v4.pooling
    assert v5.latent_attention.mean_weight == v4.latent_attention.mean_weight
    folder = REPO / v5.release_to
    for name in ("pooling_head.safetensors", "postprocess.safetensors", "evaluation.json"):
        assert (folder / name).is_file(), name
    assert "params.release_v5.yaml" in (folder / "MODEL_CARD.md").read_text()
    assert demo.pooling == v5.pooling


def test_v6_profile_rereads_v5s_mean_and_the_demo_default_uses_it() -> None:
    """v6 is v5's weights with the mean read at two layers without the attention sink: no
    training step, only the post-processing refitted; the demo default starts from it with the
    same mean layers (its evaluation describes that encoder)."""
    import json

    v6 = load_params(REPO / "params.release_v6.yaml").text_encoder
    v5 = load_params(REPO / "params.release_v5.yaml").text_encoder
    demo = load_params(REPO / "params.yaml").text_encoder
    assert v6.init_from == v5.release_to and v6.release_to != v5.release_to
    assert v6.mntp.steps == v6.contrastive.steps == v6.head_training.steps == 0
    assert v6.mean_pooling.layers == [3, 24] and v6.mean_pooling.skip_first_token
    assert v6.pooling == v5.pooling
    assert v6.latent_attention.mean_weight == v5.latent_attention.mean_weight
    folder = REPO / v6.release_to
    stored = json.loads((folder / "encoder_config.json").read_text())
    assert stored["mean_layers"] == [3, 24] and stored["mean_skip_first_token"] is True
    assert "params.release_v6.yaml" in (folder / "MODEL_CARD.md").read_text()
    assert demo.init_from == v6.release_to and demo.pooling == v6.pooling
    assert demo.mean_pooling == v6.mean_pooling
    assert demo.latent_attention.mean_weight == v6.latent_attention.mean_weight


def test_v6_candidate_profile_is_a_statement_only_body_round_from_v5_kept_apart() -> None:
    """The measured, unreleased v6 candidate: a body LoRA round on finding statements only, then
    v5's head further; it writes no release and keeps its artifacts apart from the demo's."""
    v6 = load_params(REPO / "params.candidate_v6.yaml")
    v5 = load_params(REPO / "params.release_v5.yaml").text_encoder
    demo = load_params(REPO / "params.yaml")
    te = v6.text_encoder
    assert te.init_from == v5.release_to and te.release_to is None
    assert te.contrastive.steps > 0 and te.contrastive.tasks == ["finding_statement"]
    assert te.contrastive.statement_scoring == "label_aware" and te.head_training.steps > 0
    assert te.pooling == v5.pooling and te.corpus.source == "iu_csv"
    assert v6.paths.artifacts_dir != demo.paths.artifacts_dir
    assert v6.paths.reports_dir != demo.paths.reports_dir
