"""model_comparison: the adapted report encoder against baseline text towers, same CLIP budget.

For each tower in evaluation.comparison.text_towers (adapted, minilm, minilm_finetuned,
raw_llm, tfidf) a CLIP
model is trained with the clip params of this run (cached text tower, same seed, epochs and
data) and evaluated in-domain (test split) and cross-site (trained without a site, evaluated on
all its studies). The in-domain adapted row is the clip_model of this run itself. Writes
reports/comparison/{comparison.md, comparison.csv, metrics.json, comparison.png}; the table is
shown in the Dagster UI and logged to MLflow as its own run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from cxr_assets.config import Params
from cxr_assets.paths import ProjectPaths
from cxr_assets.stages.base import Markdown, StageResult, png_markdown, require, write_json


def _cached_encode(encoder, cache_key: str, texts: list[str], instruction: str | None,
                   paths: ProjectPaths, batch_size: int, progress: bool) -> np.ndarray:
    """Encode through the report-embedding cache, so a rerun encodes only new reports."""
    from cxr_assets.embed.text_cache import EmbeddingCache, text_hash

    cache = EmbeddingCache(paths.embedding_cache_dir, cache_key)
    keys = [text_hash(t, instruction) for t in texts]
    todo = cache.missing(keys)
    if todo:
        first = dict(zip(reversed(keys), reversed(texts)))
        vectors = encoder.encode([first[k] for k in todo], instruction=instruction,
                                 batch_size=batch_size, progress=progress)
        cache.add(todo, vectors)
    return cache.get(keys)


def tower_embeddings(name: str, params: Params, paths: ProjectPaths, studies: pl.DataFrame,
                     progress: bool) -> np.ndarray:
    """Report embeddings of `studies` (study_id, report, split) under text tower `name`."""
    from cxr_assets.text.base_model import resolve_base_model
    from cxr_assets.text.baselines import MiniLMEncoder, TfidfEncoder, raw_llm_encoder

    te = params.text_encoder
    texts = [t if t.strip() else "(empty report)" for t in studies["report"].to_list()]
    if name == "adapted":
        stored = pl.read_parquet(paths.report_embeddings_table).select("study_id", "embedding")
        joined = studies.select("study_id").join(stored, on="study_id", how="left", maintain_order="left")
        if joined["embedding"].null_count():
            raise ValueError("model_comparison: report_embeddings lacks studies; re-materialize it")
        return np.asarray(joined["embedding"].to_list(), dtype=np.float32)
    if name == "minilm":
        return _cached_encode(MiniLMEncoder(), "baseline-minilm-l6-v2", texts, None, paths,
                              te.embed_batch_size, progress)
    if name == "raw_llm":
        encoder = raw_llm_encoder(resolve_base_model(te.base_model, paths.base_model_cache),
                                  te.max_length, te.dtype)
        return _cached_encode(encoder, f"baseline-raw-{encoder.content_hash}", texts,
                              te.instruction or None, paths, te.embed_batch_size, progress)
    if name == "minilm_finetuned":
        return _finetuned_minilm_embeddings(params, paths, texts, progress)
    if name == "tfidf":  # vocabulary from the training reports only
        train_texts = [t for t, s in zip(texts, studies["split"].to_list()) if s == "train"]
        return TfidfEncoder(train_texts).encode(texts)
    raise ValueError(f"model_comparison: unknown text tower {name!r}")


def _finetuned_minilm_embeddings(params: Params, paths: ProjectPaths, texts: list[str],
                                 progress: bool) -> np.ndarray:
    """all-MiniLM-L6-v2 fine-tuned on the pipeline's training pairs with the adapted encoder's
    contrastive budget (the release's, when the encoder starts from one), cached by both."""
    import hashlib
    import json

    from cxr_assets.config import ContrastiveParams
    from cxr_assets.stages.text_encoder import training_data
    from cxr_assets.text.baselines import finetune_minilm

    te = params.text_encoder
    budget = te.contrastive
    if te.init_from:
        training = paths.at(te.init_from) / "training.json"
        if training.is_file():
            stored = json.loads(training.read_text())["params"]["contrastive"]
            budget = ContrastiveParams(**stored)
    if budget.steps == 0:
        raise ValueError("model_comparison: minilm_finetuned needs a contrastive budget > 0 steps")
    data = training_data(params, paths, progress=False)
    digest = hashlib.sha256(json.dumps([data.pairs, data.hard_negatives, data.tasks,
                                        budget.model_dump(), params.project.seed]).encode())
    key = f"baseline-minilm-ft-{digest.hexdigest()[:16]}"
    from cxr_assets.embed.text_cache import EmbeddingCache, text_hash

    cache = EmbeddingCache(paths.embedding_cache_dir, key)
    keys = [text_hash(t, None) for t in texts]
    if cache.missing(keys):
        encoder = finetune_minilm(data.pairs, data.hard_negatives, data.tasks, budget,
                                  params.project.seed, progress)
        return _cached_encode(encoder, key, texts, None, paths, te.embed_batch_size, progress)
    return cache.get(keys)


def _train_and_embed(params: Params, paths: ProjectPaths, train: pl.DataFrame, val: pl.DataFrame,
                     held: pl.DataFrame, emb: dict[str, np.ndarray], progress: bool
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Train CLIP on (train, val) rows and embed the held-out rows' images and reports.

    Same budget and in-batch positives (clip.positives) as clip_model, so towers differ only
    in their report embeddings.
    """
    from cxr_assets.clip.pairs import positive_keys
    from cxr_assets.clip.train import train_clip
    from cxr_assets.embed.images import embed_images, embed_texts

    c = params.clip
    budget = c.model_copy(update={
        "text_tower": "cached", "epochs": params.evaluation.comparison.epochs or c.epochs,
        "distributed": c.distributed.model_copy(update={"nproc_per_node": 1}),
        "checkpoint": c.checkpoint.model_copy(update={"every_n_steps": 0, "resume": False})})

    def rows(frame: pl.DataFrame) -> np.ndarray:
        return np.stack([emb[s] for s in frame["study_id"].to_list()]) if frame.height else \
            np.zeros((0, len(next(iter(emb.values())))), np.float32)

    result = train_clip([Path(p) for p in train["cache_path"]], rows(train),
                        [Path(p) for p in val["cache_path"]], rows(val), budget,
                        text_encoder_hash="comparison", seed=params.project.seed, progress=progress,
                        train_groups=positive_keys(train, c.positives, paths),
                        val_groups=positive_keys(val, c.positives, paths))
    images = embed_images(result.model, [Path(p) for p in held["cache_path"]], progress=False)
    return images, embed_texts(result.model, rows(held))


def run(params: Params, paths: ProjectPaths, progress: bool = True) -> StageResult:
    import mlflow

    from cxr_assets.clip.pairs import one_image_per_study, test_pool
    from cxr_assets.evaluate.comparison import (
        comparison_markdown,
        cross_site_split,
        evaluate_cell,
        plot_comparison,
        site_table,
    )
    from cxr_assets.registry.tracking import configure_mlflow

    require("model_comparison", {
        "study_embeddings": [paths.study_embeddings_table],
        "report_embeddings": [paths.report_embeddings_table],
        "study_images": [paths.study_images_table], "study_splits": [paths.splits_table],
        "report_texts": [paths.report_texts_table, paths.labels_table]})
    cfg, ev = params.evaluation.comparison, params.evaluation
    out = paths.reports_dir / "comparison"
    out.mkdir(parents=True, exist_ok=True)
    seed, ks = params.project.seed, list(ev.recall_at)

    # One row per cached image with its study's split and report text.
    reports = pl.read_parquet(paths.report_texts_table).select(
        "study_id", pl.col("report_for_training").fill_null("").alias("report"))
    pairs = (pl.read_parquet(paths.study_images_table).select("image_id", "study_id", "view_position", "cache_path")
             .join(pl.read_parquet(paths.splits_table).select("study_id", "split"), on="study_id")
             .join(reports, on="study_id").sort("study_id", "image_id"))
    studies = pairs.unique("study_id", keep="first", maintain_order=True).select("study_id", "report", "split")
    embeddings = {}
    for tower in cfg.text_towers:
        matrix = tower_embeddings(tower, params, paths, studies, progress)
        embeddings[tower] = dict(zip(studies["study_id"].to_list(), matrix))

    def cell(tower, protocol, n_train, held, image_emb, text_emb):
        return evaluate_cell(tower, protocol, n_train, image_emb, text_emb, held["report"].to_list(),
                             held["study_id"].to_list(), ks, ev.bootstrap_samples, seed)

    budget = (f"CLIP budget: {cfg.epochs or params.clip.epochs} epochs, batch "
              f"{params.clip.batch_size}, lr {params.clip.lr}, backbone "
              f"{params.clip.vision_backbone} at {params.clip.image_size} px, seed {seed}")
    cells, notes = [], [budget]
    train, val = pairs.filter(pl.col("split") == "train"), pairs.filter(pl.col("split") == "val")
    test = one_image_per_study(pairs.filter(pl.col("split") == "test"))
    for tower in cfg.text_towers:
        if tower == "adapted":  # the clip_model of this run, on the evaluation_report's test pool
            pool = test_pool(paths).rename({"report_for_training": "report"})
            cells.append(cell("adapted", "in_domain", train.height, pool,
                              np.asarray(pool["image_embedding"].to_list(), np.float32),
                              np.asarray(pool["report_embedding"].to_list(), np.float32)))
            continue
        image_emb, text_emb = _train_and_embed(params, paths, train, val, test, embeddings[tower], progress)
        cells.append(cell(tower, "in_domain", train.height, test, image_emb, text_emb))

    if cfg.cross_site:
        sites_csv = paths.at(cfg.sites_csv) if cfg.sites_csv else None
        sites = site_table(pl.read_parquet(paths.catalog_dir / "studies.parquet"), cfg.site_column,
                           sites_csv, cfg.sites_csv_study_prefix)
        present = sorted(set(sites.join(studies, on="study_id")["site"].drop_nulls().to_list()))
        holdouts = cfg.holdout_sites or present
        if len(present) < 2:
            notes.append(f"cross-site skipped: one site only ({present}) in column {cfg.site_column!r}")
            holdouts = []
        for site in holdouts:
            site_train, site_val, held = cross_site_split(pairs, sites, site)
            held = one_image_per_study(held)
            for tower in cfg.text_towers:
                image_emb, text_emb = _train_and_embed(params, paths, site_train, site_val, held,
                                                       embeddings[tower], progress)
                cells.append(cell(tower, f"cross_site:{site}", site_train.height, held, image_emb, text_emb))

    table = pl.DataFrame([c.row() for c in cells])
    table.write_csv(out / "comparison.csv")
    markdown = comparison_markdown(cells, ks, notes)
    (out / "comparison.md").write_text(markdown)
    plot = plot_comparison(cells, out / "comparison.png")
    metrics = {f"{c.protocol.replace(':', '_')}/{c.tower}/mean_recall": round(c.metrics["mean_recall"], 6)
               for c in cells}
    write_json(out / "metrics.json", metrics)

    configure_mlflow(params, paths)
    with mlflow.start_run(run_name="model_comparison"):
        mlflow.log_metrics({k.replace("@", "_at_"): v for k, v in metrics.items()})
        mlflow.log_artifacts(str(out), artifact_path="comparison")

    adapted = {c.protocol: c.metrics["mean_recall"] for c in cells if c.tower == "adapted"}
    best_other = {}
    for c in cells:
        if c.tower != "adapted":
            best_other[c.protocol] = max(best_other.get(c.protocol, float("-inf")), c.metrics["mean_recall"])
    wins = sum(adapted[p] > best_other[p] for p in adapted if p in best_other)
    return StageResult(
        "model_comparison",
        {"comparison_dir": out},
        {
            "towers": ", ".join(cfg.text_towers),
            "protocols": ", ".join(dict.fromkeys(c.protocol for c in cells)),
            "adapted_beats_every_baseline": f"{wins} of {len([p for p in adapted if p in best_other])} protocols",
            **metrics,
            "table": Markdown(markdown),
            "comparison_plot": Markdown(png_markdown(plot, "text towers compared")),
        },
    )
