"""What the text encoder trains on: the training split's reports (MNTP) and contrastive pairs
with hard negatives and a task per pair (stage two), from the pipeline's catalog or from the IU
reports CSV (`text_encoder.corpus.source`), plus finding-statement pairs from the same reports."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import polars as pl

from cxr_assets.config import Params
from cxr_assets.paths import ProjectPaths

log = logging.getLogger(__name__)


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


def validation_salt(te: Any) -> str:
    """The salt of the validation part (corpus.validation_fraction): apart from the held-out one."""
    return f"{te.corpus.salt}:validation"


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
        pairs, negatives, tasks = finding_statement_pairs(
            data.texts, params.project.seed,
            phrasing=params.text_encoder.contrastive.statement_phrasing,
            normal=params.text_encoder.contrastive.normal_statements)
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
        from cxr_assets.text.evaluation import load_iu_reports, with_validation_part

        csv = paths.at(te.corpus.iu_csv)
        iu = load_iu_reports(csv, te.corpus.salt, te.corpus.heldout_fraction)
        if te.corpus.validation_fraction:
            iu = with_validation_part(iu, te.corpus.validation_fraction, validation_salt(te))
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
