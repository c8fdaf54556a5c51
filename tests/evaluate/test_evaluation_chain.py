"""End to end on the tiny chain: embeddings table + search CLI, the full evaluation report,
promotion with robustness tolerance, rollback, and the dated re-evaluation with drift alert."""

from __future__ import annotations

import json

import pytest

from cxr_assets.stages import STAGE_NAMES, stage_module
from tests.helpers import tiny_params, write_params

pytestmark = pytest.mark.slow


def _run(name, params, paths):
    result = stage_module(name).run(params, paths, progress=False)
    assert not result.blocking_failures, (name, result.blocking_failures)
    return result


def test_evaluation_search_promotion_rollback_reevaluation(tmp_path, tiny_llm, monkeypatch, capsys):
    import torch

    from cxr_assets import cli
    from cxr_assets.config import load_params
    from cxr_assets.paths import ProjectPaths

    torch.set_num_threads(1)
    write_params(tmp_path, tiny_params(tmp_path, tiny_llm, evaluation={
        "bootstrap_samples": 50, "subset_per_finding": 5, "search_hnsw_min_rows": 5,
        # cross-site is off in the demo default (time); this chain keeps it covered
        "comparison": {"text_towers": ["adapted", "minilm", "minilm_finetuned", "raw_llm",
                                       "tfidf"], "cross_site": True}}))
    monkeypatch.setenv("CXR_PROJECT_ROOT", str(tmp_path))
    monkeypatch.setenv("CXR_ALERT_WEBHOOK", "http://127.0.0.1:9/unreachable")  # a dead hook
    monkeypatch.chdir(tmp_path)
    params = load_params(tmp_path / "params.yaml")
    paths = ProjectPaths.from_params(params, tmp_path)
    results = {name: _run(name, params, paths) for name in STAGE_NAMES}

    # (1) embeddings as a DuckDB table, HNSW-indexed (tiny threshold), searchable from the CLI
    emb = results["study_embeddings"].metadata
    assert emb["hnsw_index"] == "image_embedding, report_embedding"
    argv = ["--params", str(tmp_path / "params.yaml"), "search"]
    assert cli.main([*argv, "large right pleural effusion", "--k", "3", "--json"]) == 0
    out = capsys.readouterr().out
    hits = json.loads(out[out.index("["):])
    assert len(hits) == 3 and all(h["study_id"].startswith("s") for h in hits)
    assert "champion" not in out.splitlines()[0] or "v1" in out.splitlines()[0]
    image = next((tmp_path / "data/raw/demo/files").rglob("*.dcm"))
    assert cli.main([*argv, "--image", str(image), "--k", "2", "--model", "local"]) == 0
    assert cli.main([*argv, "--similar-to", hits[0]["study_id"], "--k", "2"]) == 0
    assert cli.main(argv) == 2  # no query given: a clear usage error
    _check_search_in_reports(argv, paths, capsys)

    # (2)-(6) the report: sections, plots, DVC metrics/plot files, Dagster metadata
    evaluation_dir = tmp_path / "reports/evaluation"
    metrics = json.loads((evaluation_dir / "metrics.json").read_text())
    for key in ("i2t_R@10", "grp_t2i_R@1", "report/rouge_l", "report/bleu4", "ci95_low/mean_recall",
                "style/impression_only/mean_recall", "style/full_report/mean_recall"):
        assert key in metrics, key
    assert metrics["ci95_low/mean_recall"] <= metrics["mean_recall"] <= metrics["ci95_high/mean_recall"]
    html = (evaluation_dir / "report.html").read_text()
    assert html.startswith("<!doctype html>") and "By report style" in html and "bootstrap" in html
    for name in ("recall_at_k.png", "per_style.png", "roc.png", "prompt_sensitivity.png",
                 "recall_at_k.csv", "per_style.csv"):
        assert (evaluation_dir / name).is_file(), name
    meta = results["evaluation_report"].metadata
    assert "per_style_plot" in meta and "base64," in meta["per_style_plot"].text

    # (5) the same-budget comparison: every tower in-domain and without the held-out site
    import polars as pl

    table = pl.read_csv(tmp_path / "reports/comparison/comparison.csv")
    assert set(zip(table["tower"], table["protocol"])) == {
        (t, p) for t in ("adapted", "minilm", "minilm_finetuned", "raw_llm", "tfidf")
        for p in ("in_domain", "cross_site:INST_C")}
    assert (table["mean_recall_ci_low"] <= table["mean_recall"]).all()
    assert (table["mean_recall"] <= table["mean_recall_ci_high"]).all()
    in_domain = table.filter(pl.col("protocol") == "in_domain")
    assert in_domain["n_eval"].n_unique() == 1  # every tower on the same test pool
    adapted = in_domain.filter(pl.col("tower") == "adapted").row(0, named=True)
    assert adapted["mean_recall"] == pytest.approx(metrics["mean_recall"], abs=1e-4)  # = clip_model's
    comparison = results["model_comparison"].metadata
    assert "Cross-site" in comparison["table"].text and "base64," in comparison["comparison_plot"].text
    assert (tmp_path / "reports/comparison/comparison.png").is_file()

    # (7) promotion: a worse challenger is refused, a better one accepted; rollback moves it back
    assert json.loads(paths.champion_file.read_text())["challenger_version"] == "1"
    _run("clip_model", params, paths)  # challenger v2
    _run("study_embeddings", params, paths)
    _run("evaluation_report", params, paths)
    metrics_file = evaluation_dir / "metrics.json"
    champion_score = float(json.loads(paths.champion_file.read_text())["challenger_score"])
    evaluated = json.loads(metrics_file.read_text())
    metrics_file.write_text(json.dumps({**evaluated, "mean_recall": champion_score - 0.2}))
    worse = _run("champion_model", params, paths).metadata
    assert worse["promoted"] is False and worse["champion_version"] == "1"
    robust_key = params.registry.robustness_metrics[0]
    metrics_file.write_text(json.dumps({**evaluated, "mean_recall": champion_score + 0.2,
                                        robust_key: -1.0}))
    fragile = _run("champion_model", params, paths).metadata
    assert fragile["promoted"] is False and "robustness regression" in fragile["reason"]
    metrics_file.write_text(json.dumps({**evaluated, "mean_recall": champion_score + 0.2}))
    better = _run("champion_model", params, paths).metadata
    assert better["promoted"] is True and better["champion_version"] == "2"

    assert cli.main(["--params", str(tmp_path / "params.yaml"), "rollback", "--reason", "test"]) == 0
    from cxr_assets.registry.tracking import CHAMPION, configure_mlflow, version_by_alias

    client = configure_mlflow(params, paths)
    assert str(version_by_alias(client, params.registry.model_name, CHAMPION).version) == "1"
    again = _run("champion_model", params, paths).metadata
    assert again["promoted"] is False and "rolled back" in again["reason"]
    history = (tmp_path / "reports/champion_history.jsonl").read_text().splitlines()
    assert [json.loads(h)["event"] for h in history][-2:] == ["rollback", "decision"]

    # (8) dated re-evaluation; a drop against the last report raises the warning and an alert
    from cxr_assets.stages import reevaluation

    first = reevaluation.run(params, paths, progress=False, today="2030-01-01")
    assert all(c.passed for c in first.checks)
    assert (tmp_path / "reports/reevaluation/2030-01-01/report.html").is_file()
    earlier = tmp_path / "reports/reevaluation/2030-01-01/metrics.json"
    inflated = {k: (v + 0.5 if k == "mean_recall" else v) for k, v in json.loads(earlier.read_text()).items()}
    earlier.write_text(json.dumps(inflated))
    second = reevaluation.run(params, paths, progress=False, today="2030-01-02")
    assert second.checks[0].passed is False and not second.checks[0].blocking
    alert = json.loads((tmp_path / "reports/alerts/drift.jsonl").read_text().splitlines()[-1])
    assert "mean_recall" in alert["dropped"] and alert["date"] == "2030-01-02"
    assert second.checks[0].metadata["webhook"].startswith("failed")  # reported, never raised


def _check_search_in_reports(argv, paths, capsys) -> None:
    """`cxr search --in-reports`: the query through the encoder's query adapter against the
    report encoder's own embeddings, best first; embeddings of another encoder are refused."""
    import numpy as np
    import polars as pl

    from cxr_assets import cli
    from cxr_assets.embed.search import reports_for_text
    from cxr_assets.text.encoder import TextEncoder

    query = "small left pleural effusion"
    capsys.readouterr()  # what the earlier searches printed
    assert cli.main([*argv, "--in-reports", query, "--k", "3", "--json"]) == 0
    out = capsys.readouterr().out
    assert "reports (report encoder) for" in out
    hits = json.loads(out[out.index("["):])
    encoder = TextEncoder.from_pretrained(paths.text_encoder_dir)
    assert encoder.query_adapter is not None
    table = pl.read_parquet(paths.report_embeddings_table)
    docs = np.stack(table["embedding"].to_list())
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    q = encoder.encode_queries([query])[0]
    expected = np.argsort(-(docs @ (q / np.linalg.norm(q))), kind="stable")[:3]
    assert [h["study_id"] for h in hits] == table["study_id"].gather(expected).to_list()
    assert all(h["report_text"] for h in hits)
    assert {h["split"] for h in hits} <= {"train", "val", "test"}
    assert cli.main([*argv, "--in-reports"]) == 2  # no query: usage error
    stale = table.with_columns(pl.lit("0" * 16).alias("encoder_hash"))
    stale.write_parquet(paths.report_embeddings_table)
    try:
        with pytest.raises(LookupError, match="embedded by another text encoder"):
            reports_for_text(paths, query)
    finally:
        table.write_parquet(paths.report_embeddings_table)
