"""The held-out evaluation of a trained report encoder: it and each baseline of
`text_encoder.evaluation.baselines`, with and without post-processing, on the held-out IU reports,
with paired-bootstrap intervals of each difference; written to reports/text_encoder_eval.{json,md}
with the tables stored with the release the encoder started from."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import polars as pl

from cxr_assets.config import Params
from cxr_assets.paths import ProjectPaths
from cxr_assets.text.corpus import TrainingData

EVAL_JSON = "text_encoder_eval.json"
EVAL_MD = "text_encoder_eval.md"


def evaluate_heldout(params: Params, paths: ProjectPaths, encoder_dir: Path, progress: bool,
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
            encoder = baseline_encoder(name, params, paths, iu_train, data, progress)
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


def baseline_encoder(name: str, params: Params, paths: ProjectPaths, iu_train: list[str],
              data: TrainingData | None, progress: bool) -> Any:
    """One baseline of text_encoder.evaluation.baselines, by name (text.baselines.BASELINES)."""
    from cxr_assets.text.base_model import resolve_base_model
    from cxr_assets.text.baselines import BaselineSetup, build_baseline
    from cxr_assets.text.pooling import mean_taps_of

    te = params.text_encoder
    return build_baseline(name, BaselineSetup(
        base_model=lambda: resolve_base_model(te.base_model, paths.base_model_cache),
        max_length=te.max_length, dtype=te.dtype,
        # tfidf is fitted on the IU training part (in-domain vocabulary, never the held-out
        # part), whatever the encoder itself was adapted on.
        fit_corpus=iu_train,
        training=data, contrastive=te.contrastive, seed=params.project.seed, progress=progress,
        mean_taps=mean_taps_of(te.mean_pooling)))


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
