"""text_encoder: adapt a base LLM (or a released adapted encoder) into a report encoder.

The recipe (cxr_assets/text/adapt.py): attention bidirectional or causal, LoRA masked next-token
prediction on the training split's reports (merged), then symmetric contrastive training on report
variants (abbreviated -> report, findings -> impression, style rewrites, with hard negatives;
single-task batches; optional teacher distillation) or, without the variants table, on
(findings, impression) pairs; merged; post-processing fitted on training reports; saved as one
folder (safetensors, tokenizer, pooling head, post-processing, encoder config with a content
hash). `text_encoder.init_from` starts from a release folder, `release_to` writes one.

`text_encoder.corpus.source: iu_csv` adapts on the IU reports instead (their training part of a
uid-level split, held-out texts removed). Afterwards the adapted encoder and the baselines, each
with and without post-processing, are evaluated on the held-out IU reports with paired bootstrap
intervals (`reports/text_encoder_eval.json` + `.md`, with the release's stored tables appended),
and both adaptation stages, the evaluation and the artifact are logged to MLflow.
"""

from __future__ import annotations

import json
import logging
import re
from functools import partial
from pathlib import Path
from typing import Any

import polars as pl

from cxr_assets.config import Params, params_file
from cxr_assets.fileio import flatten
from cxr_assets.paths import ProjectPaths
from cxr_assets.stages.base import Markdown, StageResult, require

log = logging.getLogger(__name__)
EVAL_JSON = "text_encoder_eval.json"
EVAL_MD = "text_encoder_eval.md"


class TrainingData:
    """Reports for MNTP and contrastive pairs (+ hard negatives, task per pair) for stage two."""

    def __init__(self, texts: list[str], pairs: list[tuple[str, str]],
                 hard_negatives: list[str | None] | None, tasks: list[str] | None, source: str):
        self.texts, self.pairs = texts, pairs
        self.hard_negatives, self.tasks, self.source = hard_negatives, tasks, source


# Variant kinds whose variant is the QUERY where the pair is used (the evaluation's abbreviation
# task and a user's shorthand search: abbreviated text -> full report); the variants table stores
# them as (full report, variant), so they are flipped, with a hard negative of the report side.
QUERY_SIDE_VARIANTS = ("abbreviated",)


def _pairs_from_variants(variants: pl.DataFrame, use_negatives: bool) -> TrainingData:
    import random

    from cxr_assets.reports.variants import hard_negative

    train = variants.filter(pl.col("split") == "train").sort("study_id", "variant_kind")
    train = train.filter(pl.col("anchor").str.strip_chars().str.len_chars() > 0
                         & (pl.col("positive").str.strip_chars().str.len_chars() > 0))
    pairs, negatives = [], []
    for row in train.iter_rows(named=True):
        if row["variant_kind"] in QUERY_SIDE_VARIANTS:
            pairs.append((row["positive"], row["anchor"]))
            rng = random.Random(f"{row['study_id']}:{row['variant_kind']}:flipped")
            negatives.append(hard_negative(row["anchor"], rng)[0])
        else:
            pairs.append((row["anchor"], row["positive"]))
            negatives.append(row["hard_negative"])
    return TrainingData([], pairs, negatives if use_negatives else None,
                        train["variant_kind"].to_list(), "report_variants")


def training_texts(paths: ProjectPaths) -> tuple[list[str], list[tuple[str, str]]]:
    """Reports of the training split, and (findings, impression) pairs drawn from them only."""
    reports = pl.read_parquet(paths.report_texts_table)
    splits = pl.read_parquet(paths.splits_table)
    train = reports.join(splits.filter(pl.col("split") == "train").select("study_id"), on="study_id")
    train = train.sort("study_id")
    texts = [t for t in train["report_for_training"].to_list() if t]
    pairs = [
        (f, i) for f, i in zip(train["findings"].to_list(), train["impression"].to_list()) if f and i
    ]
    return texts, pairs


def training_data(params: Params, paths: ProjectPaths, progress: bool = True) -> TrainingData:
    """What stage one and two train on, from the catalog or from the IU CSV (corpus.source),
    plus finding-statement pairs from the same reports when contrastive.finding_statements."""
    data = _report_pairs(params, paths, progress)
    if params.text_encoder.contrastive.finding_statements and data.texts:
        from cxr_assets.text.statements import finding_statement_pairs

        if data.hard_negatives is None:
            # A statement pair is scored against its opposite polarity only: without hard
            # negatives (contrastive.hard_negatives false) it would teach nothing.
            log.warning("finding_statements needs contrastive.hard_negatives: not added")
            return data
        pairs, negatives, tasks = finding_statement_pairs(data.texts, params.project.seed)
        n_before = len(data.pairs)
        data.pairs = data.pairs + pairs
        data.hard_negatives = data.hard_negatives + negatives
        data.tasks = (data.tasks or ["report_pair"] * n_before) + tasks
        data.source += f" + {len(pairs)} finding statements"
    return data


def _report_pairs(params: Params, paths: ProjectPaths, progress: bool) -> TrainingData:
    te = params.text_encoder
    if te.corpus.source == "iu_csv":
        from cxr_assets.reports.variants import build_variants
        from cxr_assets.text.evaluation import load_iu_reports

        csv = paths.at(te.corpus.iu_csv)
        iu = load_iu_reports(csv, te.corpus.salt, te.corpus.heldout_fraction)
        train = iu.filter(pl.col("split") == "train").sort("study_id")
        report_texts = train.select(
            "study_id", pl.col("report").alias("report_for_training"), "findings", "impression"
        )
        splits = train.select("study_id", pl.lit("train").alias("split"))
        variants = build_variants(report_texts, splits, seed=params.project.seed, progress=progress)
        data = _pairs_from_variants(variants, te.contrastive.hard_negatives)
        data.texts = train["report"].to_list()
        data.source = f"iu_csv ({csv.name}, train part: {train.height} reports)"
        return data
    texts, pairs = training_texts(paths)
    variants_file = getattr(paths, "report_variants_table", None)
    if variants_file is not None and Path(variants_file).is_file():
        data = _pairs_from_variants(pl.read_parquet(variants_file), te.contrastive.hard_negatives)
        if len(data.pairs) >= 2:
            data.texts = texts
            return data
        log.warning("report_variants has < 2 training pairs: falling back to findings/impression")
    return TrainingData(texts, pairs, None, None, "findings_impression")


# --------------------------------------------------------------------------- evaluation
def evaluate(params: Params, paths: ProjectPaths, encoder_dir: Path, progress: bool,
             data: TrainingData | None = None,
             ) -> tuple[pl.DataFrame | None, list[str], pl.DataFrame | None]:
    """The adapted encoder and the baselines on the held-out IU reports, each with and without
    post-processing; (table, notes, adapted-minus-baseline differences with 95% intervals)."""
    from cxr_assets.text.encoder import TextEncoder
    from cxr_assets.text.evaluation import (
        FORMAT,
        build_eval_set,
        difference_table,
        load_iu_reports,
        score_encoder,
        scores_table,
    )
    from cxr_assets.text.postprocess import fit_for, fit_sample

    te = params.text_encoder
    csv = paths.at(te.evaluation.iu_csv)
    if not csv.is_file():
        return None, [f"evaluation skipped: IU reports CSV {csv} not found"], None
    # The held-out part must be the one never trained on: same salt/fraction as the corpus split.
    iu = load_iu_reports(csv, te.corpus.salt, te.corpus.heldout_fraction)
    eval_set = build_eval_set(iu, te.evaluation.max_reports, te.evaluation.seed)
    iu_train = iu.filter(pl.col("split") == "train")["report"].to_list()
    n_dup = iu.filter(pl.col("split") == "train_duplicate").height
    notes = [(f"{len(eval_set.reports)} held-out IU reports (uid-level split, salt "
              f"{te.corpus.salt!r}, held-out fraction {te.corpus.heldout_fraction}; {n_dup} "
              "training-side reports whose text also occurs held out are never trained on); "
              f"labels: {eval_set.label_source}; adapted on: {te.corpus.source}"),
             f"format: {FORMAT}",
             (f"+pp: centering and per-dimension scaling fitted on {te.postprocess.n_fit} IU "
              "training reports (the adapted encoder's own statistics come from its training "
              "reports and are applied by TextEncoder.encode)")]
    adapted = TextEncoder.from_pretrained(encoder_dir)
    # finish: the encoder's own post-processing (and, for a head beside the mean, the weighting).
    variants: dict[str, Any] = {"adapted": adapted.finish}
    if adapted.postprocess is not None:
        variants["adapted_no_pp"] = partial(adapted.finish, postprocess=False)
    scores = score_encoder(adapted, eval_set, variants, te.embed_batch_size, progress)
    for name in te.evaluation.baselines:
        try:
            encoder = _baseline(name, params, paths, iu_train, data, progress)
        except (ModuleNotFoundError, FileNotFoundError, ValueError) as error:
            notes.append(f"baseline {name} skipped: {error}")
            continue
        variants = {name: None}
        if te.evaluation.postprocess_baselines:
            fit_texts = fit_sample(iu_train, te.postprocess.n_fit, params.project.seed)
            variants[f"{name}+pp"] = fit_for(encoder, fit_texts, batch_size=te.embed_batch_size)
        scores += score_encoder(encoder, eval_set, variants, te.embed_batch_size, progress)
    table = scores_table([row for s in scores for row in s.rows])
    differences = difference_table(scores, "adapted", te.evaluation.bootstrap_samples,
                                   te.evaluation.seed) if te.evaluation.bootstrap_samples else None
    return table, notes, differences


def _baseline(name: str, params: Params, paths: ProjectPaths, iu_train: list[str],
              data: TrainingData | None, progress: bool) -> Any:
    """One baseline of text_encoder.evaluation.baselines, by name (text.baselines.BASELINES)."""
    from cxr_assets.text.base_model import resolve_base_model
    from cxr_assets.text.baselines import BaselineSetup, build_baseline

    te = params.text_encoder
    return build_baseline(name, BaselineSetup(
        base_model=lambda: resolve_base_model(te.base_model, paths.base_model_cache),
        max_length=te.max_length, dtype=te.dtype,
        # tfidf is fitted on the IU training part (in-domain vocabulary, never the held-out
        # part), whatever the encoder itself was adapted on.
        fit_corpus=iu_train,
        training=data, contrastive=te.contrastive, seed=params.project.seed, progress=progress))


def write_evaluation(table: pl.DataFrame | None, notes: list[str], out_dir: Path,
                     differences: pl.DataFrame | None = None,
                     extra_markdown: str = "") -> tuple[Path, Path]:
    """reports/text_encoder_eval.{json,md}; written even when skipped (with the reason), so the
    stage's declared outputs always exist."""
    from cxr_assets.text.evaluation import to_markdown

    out_dir.mkdir(parents=True, exist_ok=True)
    json_file, md_file = out_dir / EVAL_JSON, out_dir / EVAL_MD
    rows = table.to_dicts() if table is not None else []
    diffs = differences.to_dicts() if differences is not None else []
    json_file.write_text(json.dumps({"rows": rows, "differences": diffs, "notes": notes},
                                    indent=2) + "\n")
    if table is not None and table.height:
        md_file.write_text(to_markdown(table, notes, differences) + extra_markdown)
    else:
        md_file.write_text("# Text-tower evaluation\n\n" + "\n".join(f"- {n}" for n in notes)
                           + "\n" + extra_markdown)
    return json_file, md_file


# --------------------------------------------------------------------------- MLflow
def log_to_mlflow(params: Params, paths: ProjectPaths, result: Any, data: TrainingData,
                  table: pl.DataFrame | None, eval_files: tuple[Path, Path] | None) -> str:
    """One MLflow run: params, MNTP / SimCSE / contrastive loss curves, eval metrics, artifact."""
    import mlflow

    from cxr_assets.registry.tracking import configure_mlflow

    configure_mlflow(params, paths)
    with mlflow.start_run(run_name="text_encoder") as run:
        flat = flatten(params.text_encoder.model_dump(), "text_encoder")
        mlflow.log_params({k: str(v)[:500] for k, v in flat.items()})
        mlflow.log_params({"training_source": data.source, "n_pairs": len(data.pairs),
                           "n_train_reports": len(data.texts)})
        mlflow.set_tags({"stage": "text_encoder", "encoder_hash": result.content_hash})
        for stage, losses in (("mntp", result.mntp_losses), ("simcse", result.simcse_losses),
                              ("contrastive", result.contrastive_losses),
                              ("head", result.head_losses)):
            for step, loss in enumerate(losses):
                mlflow.log_metric(f"{stage}_loss", loss, step=step)
        if table is not None:
            for row in table.iter_rows(named=True):
                key = f"eval.{row['encoder']}.{row['task']}.{row['metric']}".replace("@", "_at_")
                # MLflow names allow alphanumerics and _-./: and spaces ("raw_llm+pp" -> raw_llm_pp)
                mlflow.log_metric(re.sub(r"[^A-Za-z0-9_\-./: ]", "_", key).replace(" ", "_"),
                                  row["value"])
        for file in eval_files or ():
            mlflow.log_artifact(str(file), artifact_path="evaluation")
        # The artifact: the whole folder when small; a large LLM's weights stay in the DVC-tracked
        # folder (referenced by tag and content hash) instead of a second copy in mlartifacts.
        folder = Path(result.encoder_dir)
        size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
        for file in sorted(folder.iterdir()):
            if file.is_file() and (size < 200 * 2**20 or not file.name.endswith(".safetensors")
                                   or file.name == "pooling_head.safetensors"):
                mlflow.log_artifact(str(file), artifact_path="text_encoder")
        mlflow.set_tag("encoder_dir", str(folder))
        return run.info.run_id


def release_markdown(init_from: str | None, paths: ProjectPaths) -> str:
    """The evaluation and ablation tables stored with the release the encoder starts from (they
    need hours of training, so they are measured once per release, not on every run)."""
    if not init_from:
        return ""
    parts = [paths.at(init_from) / name for name in ("EVALUATION.md", "ABLATIONS.md")]
    stored = "\n".join(p.read_text() for p in parts if p.is_file())
    if not stored:
        return ""
    return (f"\n## Stored with the release `{init_from}` (measured when it was trained)\n\n"
            + stored.replace("\n# ", "\n### ").replace("\n## ", "\n### "))


def run(params: Params, paths: ProjectPaths, progress: bool = True) -> StageResult:
    from cxr_assets.text.adapt import adapt_text_encoder

    te = params.text_encoder
    if te.init_from:  # relative to the project root, wherever the process runs
        te = te.model_copy(update={"init_from": str(paths.at(te.init_from))})
    if te.corpus.source == "catalog":
        require("text_encoder", {"report_texts": [paths.report_texts_table],
                                 "study_splits": [paths.splits_table]})
    data = training_data(params, paths, progress)
    if not data.texts:
        raise ValueError("text_encoder: the training split has no report text to adapt on")
    result = adapt_text_encoder(
        data.texts, data.pairs, te, paths.base_model_cache, paths.text_encoder_dir,
        seed=params.project.seed, progress=progress,
        hard_negatives=data.hard_negatives, tasks=data.tasks,
        checkpoint_dir=paths.artifacts_dir / "text_encoder_checkpoints",
        release_dir=paths.at(te.release_to) if te.release_to else None,
    )

    table, notes = None, ["evaluation disabled (text_encoder.evaluation.enabled: false)"]
    differences = None
    if te.evaluation.enabled:
        table, notes, differences = evaluate(params, paths, result.encoder_dir, progress, data)
        if table is None:
            log.warning("; ".join(notes))
    notes = notes + result.notes
    eval_files = write_evaluation(table, notes, paths.reports_dir, differences,
                                  release_markdown(params.text_encoder.init_from, paths))
    if result.release_dir is not None:
        import shutil

        from cxr_assets.text.release import write_model_card

        shutil.copyfile(eval_files[0], result.release_dir / "evaluation.json")
        write_model_card(result.release_dir, params, result, data.source,
                         eval_files[1].read_text(),
                         f"CXR_PARAMS={params_file().name} cxr stage text_encoder")
    run_id = None
    if te.mlflow:
        run_id = log_to_mlflow(params, paths, result, data, table, eval_files)

    def first_last(values: list[float]) -> str:
        return f"{values[0]:.3f} -> {values[-1]:.3f}" if values else "skipped"

    metadata: dict[str, Any] = {
        "base_model": te.base_model,
        "encoder_hash": result.content_hash,
        "training_source": data.source,
        "n_train_reports": result.n_train_reports,
        "n_pairs": result.n_pairs,
        "n_hard_negatives": sum(1 for h in (data.hard_negatives or []) if h),
        "mntp_loss": first_last(result.mntp_losses),
        "mntp_fixed_batch_loss": ("skipped" if result.mntp_eval_loss is None else
                                  f"{result.mntp_eval_loss[0]:.3f} -> {result.mntp_eval_loss[1]:.3f}"),
        "contrastive_loss": first_last(result.contrastive_losses),
        "head_loss": first_last(result.head_losses),
        "resumed_from": result.resumed_from or "fresh start",
        "init_from": te.init_from or "base model",
        "bidirectional": te.bidirectional,
        "postprocess": te.postprocess.method,
        "lora_r": te.lora.r,
        "pooling": te.pooling,
        "seconds": round(result.seconds, 1),
        "mlflow_run_id": run_id or "disabled",
    }
    metadata["evaluation"] = Markdown(eval_files[1].read_text())
    metadata["evaluation_file"] = eval_files[0]
    return StageResult("text_encoder", {"text_encoder": result.encoder_dir}, metadata)
