"""text_encoder + report_embeddings stages on a tiny LLM: variants, evaluation files, MLflow, cache."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from cxr_assets.text.contrastive import task_batches

IU_CSV = Path(__file__).resolve().parents[3] / "shared" / "data" / "iu_xray" / "indiana_reports.csv"

FINDINGS = [
    "Heart size is normal. No pleural effusion.", "Small left pleural effusion.",
    "Right lower lobe opacity.", "Mild cardiomegaly. No pneumothorax.",
    "Lungs are clear.", "Bilateral interstitial opacities.",
]
IMPRESSIONS = ["No acute disease.", "Left effusion.", "Pneumonia.", "Cardiomegaly.",
               "Normal chest.", "Edema."]


def test_task_batches_hold_one_task_each() -> None:
    tasks = ["a"] * 10 + ["b"] * 5 + ["c"]  # "c" has a single pair: never drawn
    batches = task_batches(tasks, batch_size=4, steps=30, seed=0)
    assert len(batches) == 30
    for batch in batches:
        assert len({tasks[i] for i in batch}) == 1 and len(set(batch)) == len(batch)
    assert {tasks[b[0]] for b in batches} == {"a", "b"}
    assert batches == task_batches(tasks, batch_size=4, steps=30, seed=0)
    with pytest.raises(ValueError, match="at least 2 pairs"):
        task_batches(["x", "y"], 4, 3, 0)


def _project(root: Path, tiny_dir: Path, texts: list[str] | None = None, **text_encoder) -> tuple:
    from cxr_assets.config import parse_params
    from cxr_assets.paths import ProjectPaths
    from cxr_assets.reports.variants import build_variants
    from tests.helpers import tiny_params

    raw = tiny_params(root, tiny_dir)
    raw["text_encoder"].update(text_encoder)
    params = parse_params(raw)
    paths = ProjectPaths.from_params(params, root)
    n = 12 if texts is None else len(texts)
    reports = pl.DataFrame({
        "study_id": [f"s{i:02d}" for i in range(n)], "patient_id": [f"p{i}" for i in range(n)],
        "findings": [FINDINGS[i % 6] for i in range(n)],
        "impression": [IMPRESSIONS[i % 6] for i in range(n)],
    }).with_columns((pl.col("findings") + " " + pl.col("impression")).alias("report_for_training"))
    if texts is not None:  # whole reports as given (the findings/impression columns stay)
        reports = reports.with_columns(pl.Series("report_for_training", texts))
    n_train = (3 * n) // 4
    splits = pl.DataFrame({"study_id": reports["study_id"],
                           "split": ["train"] * n_train + ["test"] * (n - n_train)})
    paths.catalog_dir.mkdir(parents=True, exist_ok=True)
    reports.write_parquet(paths.report_texts_table)
    splits.write_parquet(paths.splits_table)
    build_variants(reports, splits, seed=1, progress=False).write_parquet(paths.report_variants_table)
    return params, paths


def test_query_adapter_reports_are_not_encoded_again(tiny_dir: Path, tmp_path: Path) -> None:
    """The training reports the query adapter was fitted against go into the report-embedding
    cache under the encoder's document hash: report_embeddings reads them, encodes the rest, and
    what it reads equals a fresh encode."""
    from cxr_assets.demo.generate import sample_reports
    from cxr_assets.stages import report_embeddings, text_encoder
    from cxr_assets.text.encoder import TextEncoder

    texts = list(dict.fromkeys(sample_reports(60, seed=4)))[:40]
    params, paths = _project(tmp_path, tiny_dir, texts=texts, mlflow=False,
                             evaluation={"enabled": False},
                             query_adapter={"steps": 20, "rank": 4, "n_fit": 16})
    meta = text_encoder.run(params, paths, progress=False).metadata
    assert meta["report_embeddings_cached"] == 16
    encoder = TextEncoder.from_pretrained(paths.text_encoder_dir)
    assert encoder.query_adapter is not None
    # The adapter moves only queries: the cache key leaves it out.
    assert encoder.document_hash != encoder.content_hash

    table = report_embeddings.run(params, paths, progress=False)
    assert table.metadata["n_from_cache"] == 16
    assert table.metadata["n_encoded_now"] == len(texts) - 16
    stored = pl.read_parquet(paths.report_embeddings_table)
    np.testing.assert_allclose(np.stack(stored["embedding"].to_numpy()),
                               encoder.encode(texts, progress=False), atol=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(not IU_CSV.is_file(), reason="shared IU reports absent")
def test_stages_train_on_variants_evaluate_log_and_cache(tiny_dir: Path, tmp_path: Path) -> None:
    import mlflow

    from cxr_assets.registry.tracking import tracking_uri
    from cxr_assets.stages import report_embeddings, text_encoder
    from cxr_assets.text.encoder import TextEncoder

    params, paths = _project(
        tmp_path, tiny_dir, pooling="latent_attention",
        latent_attention={"num_latents": 8, "num_heads": 8},
        evaluation={"iu_csv": str(IU_CSV), "max_reports": 30, "baselines": ["raw_llm", "tfidf"]},
    )
    result = text_encoder.run(params, paths, progress=False)
    meta = result.metadata
    # params.yaml turns finding statements on: report variants plus statement pairs.
    assert re.fullmatch(r"report_variants \+ [1-9]\d* finding statements", meta["training_source"])
    assert meta["n_hard_negatives"] > 0
    assert (paths.text_encoder_dir / "pooling_head.safetensors").is_file()
    # 6 distinct training reports: too few to fit a query adapter; the stage says so.
    assert meta["query_adapter"] == "none (fewer than 10 distinct training reports)"
    assert not (paths.text_encoder_dir / "query_adapter.safetensors").is_file()

    table = pl.DataFrame(__import__("json").loads(
        (paths.reports_dir / "text_encoder_eval.json").read_text())["rows"])
    assert set(table["encoder"]) == {"adapted", "adapted_no_pp", "raw_llm", "raw_llm+pp", "tfidf",
                                     "tfidf+pp"}
    eval_json = __import__("json").loads((paths.reports_dir / "text_encoder_eval.json").read_text())
    diffs = pl.DataFrame(eval_json["differences"])
    assert set(diffs["baseline"]) == {"adapted_no_pp", "raw_llm", "raw_llm+pp", "tfidf", "tfidf+pp"}
    assert (diffs["ci_low"] <= diffs["ci_high"]).all()
    assert {"abbreviation", "summarization", "error_discrimination", "label_consistency",
            "zero_shot"} <= set(table["task"])
    assert "| summarization | R@1" in (paths.reports_dir / "text_encoder_eval.md").read_text()

    mlflow.set_tracking_uri(tracking_uri(params, paths))
    client = mlflow.MlflowClient()
    run = client.get_run(meta["mlflow_run_id"])
    assert run.data.params["text_encoder.pooling"] == "latent_attention"
    assert len(client.get_metric_history(run.info.run_id, "mntp_loss")) == 2
    assert len(client.get_metric_history(run.info.run_id, "contrastive_loss")) == 2
    assert any(k.startswith("eval.adapted.summarization") for k in run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "text_encoder")}
    assert "text_encoder/encoder_config.json" in artifacts

    first = report_embeddings.run(params, paths, progress=False)
    assert first.metadata["n_encoded_now"] > 0
    # encode_path auto: a few dozen reports are below the probe's threshold (or the CPU has no
    # native bf16): fp32, and the metadata says why.
    assert first.metadata["encode_path"] == "fp32"
    assert first.metadata["encode_path_reason"].startswith("fp32: ")
    again = report_embeddings.run(params, paths, progress=False)
    assert again.metadata["n_encoded_now"] == 0  # unchanged reports: nothing re-encoded
    assert again.metadata["encode_path"] == "none"
    stored = pl.read_parquet(paths.report_embeddings_table)
    assert stored.schema["embedding"] == pl.Array(pl.Float32, stored["embedding"].dtype.size)
    texts = pl.read_parquet(paths.report_texts_table)["report_for_training"].to_list()
    assert stored["study_id"].to_list() == pl.read_parquet(paths.report_texts_table)["study_id"].to_list()
    fresh = TextEncoder.from_pretrained(paths.text_encoder_dir, threads=1)
    recomputed = fresh.encode(texts, instruction=fresh.instruction or None, progress=False)
    assert np.allclose(np.stack(stored["embedding"].to_numpy()), recomputed, atol=1e-5)


@pytest.mark.skipif(not IU_CSV.is_file(), reason="shared IU reports absent")
def test_iu_corpus_trains_only_on_the_training_part(tiny_dir: Path, tmp_path: Path) -> None:
    from cxr_assets.text.corpus import training_data
    from cxr_assets.text.evaluation import load_iu_reports

    params, paths = _project(tmp_path, tiny_dir, corpus={"source": "iu_csv", "iu_csv": str(IU_CSV)})
    data = training_data(params, paths, progress=False)
    iu = load_iu_reports(IU_CSV, params.text_encoder.corpus.salt,
                         params.text_encoder.corpus.heldout_fraction)
    held = set(iu.filter(pl.col("split") == "heldout")["report"])
    train = set(iu.filter(pl.col("split") == "train")["report"])
    assert data.source.startswith("iu_csv") and set(data.texts) == train and len(data.texts) > 1500
    assert not held & set(data.texts)  # identical texts never on both sides of the split
    sides = {t for pair in data.pairs for t in pair}
    assert len(data.pairs) > 4000 and data.tasks is not None and data.hard_negatives is not None
    assert sides & train and not sides & held
    # Abbreviation pairs are trained as they are used: abbreviated query -> full report.
    abbreviated = [pair for pair, task in zip(data.pairs, data.tasks) if task == "abbreviated"]
    assert abbreviated and all(report in train for _, report in abbreviated)
