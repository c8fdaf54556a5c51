"""The full evaluation of one model on one test pool, shared by evaluation_report and re-evaluation.

Retrieval under both protocols (`report.evaluate_pairs`), bootstrap 95% CIs on the headline
numbers, report-level scores of the top-1 retrieved report (ROUGE-L, BLEU-4, labeler F1),
a 5x200-style subset, zero-shot AUC per observation with prompt ensembles, and every per-query
metric broken down by report style. Writes its plots and CSVs into `out_dir` and returns flat
metrics (metrics.json keys) plus the Markdown sections of the report.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

HEADLINE = ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "mean_recall",
            "report/rouge_l")


@dataclass
class WrittenReport:
    metrics: dict[str, float]  # what metrics.json holds: 6 decimals, NaN left out
    markdown: str
    recall_plot: Path


@dataclass
class SuiteResult:
    evaluation: object  # report.Evaluation: ranks, worst examples, retrieval metrics
    metrics: dict[str, float]
    sections: list[str]
    plots: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _fmt(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def run_suite(image_emb: np.ndarray, text_emb: np.ndarray, texts: list[str], study_ids: list[str],
              ev, out_dir: Path, seed: int, profile: pl.DataFrame | None = None, labeler=None,
              embed_texts: Callable[[list[str]], np.ndarray] | None = None) -> SuiteResult:
    """Evaluate paired embeddings; `ev` is the EvaluationParams section."""
    from cxr_assets.evaluate import plots
    from cxr_assets.evaluate.report import evaluate_pairs
    from cxr_assets.evaluate.report_scores import label_f1, overlap_scores
    from cxr_assets.evaluate.retrieval import retrieval_metrics
    from cxr_assets.evaluate.robustness import (
        bootstrap_ci,
        five_by_n_subset,
        group_breakdown,
        per_query_hits,
        style_groups,
    )

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    image_emb = np.asarray(image_emb, dtype=np.float32)
    text_emb = np.asarray(text_emb, dtype=np.float32)
    evaluation = evaluate_pairs(image_emb, text_emb, texts, study_ids, ev.recall_at, ev.n_worst_examples)
    metrics = dict(evaluation.metrics)
    sections: list[str] = []
    notes: list[str] = []
    result_plots: dict[str, Path] = {}

    # --- report-level scores of the top-1 retrieved report -------------------------------------
    top1 = np.argmax(image_emb @ text_emb.T, axis=1)
    overlap = overlap_scores([texts[j] for j in top1], texts)
    columns = per_query_hits(evaluation.i2t_ranks, evaluation.t2i_ranks, list(ev.recall_at))
    columns["report/rouge_l"] = overlap["rouge_l"]
    columns["report/bleu4"] = overlap["bleu4"]
    metrics["report/rouge_l"] = float(overlap["rouge_l"].mean())
    metrics["report/bleu4"] = float(overlap["bleu4"].mean())
    labels = None
    if labeler is not None:
        from cxr_assets.evaluate.labels import positive_mask

        labels = labeler.matrix(texts)
        positives = positive_mask(labels)
        f1 = label_f1(positives[top1], positives, list(labeler.observations))
        metrics |= {f"report/{k}": v for k, v in f1.items()}
    else:
        notes.append("labeler unavailable: label F1, 5x200 subset and zero-shot AUC skipped")
    lines = ["## Report-level scores of the top-1 retrieved report", "",
             ("Each image retrieves its best-matching report from the test pool; that report is scored "
             "against the image's true report."), "", "| score | value |", "|---|---|",
             f"| ROUGE-L F1 | {_fmt(metrics['report/rouge_l'])} |", f"| BLEU-4 | {_fmt(metrics['report/bleu4'])} |"]
    if labels is not None:
        lines += [f"| labeler F1 micro | {_fmt(metrics['report/f1_micro'])} |",
                  f"| labeler F1 macro | {_fmt(metrics['report/f1_macro'])} |"]
        lines += [f"| F1 {k.split('/', 2)[2]} | {_fmt(v)} |" for k, v in metrics.items()
                  if k.startswith("report/f1/")]
    sections.append("\n".join(lines))

    # --- bootstrap CIs on the headline numbers ------------------------------------------------
    ci = bootstrap_ci({k: columns[k] for k in HEADLINE if k in columns}, ev.bootstrap_samples, seed)
    for key, (low, high) in ci.items():
        metrics[f"ci95_low/{key}"], metrics[f"ci95_high/{key}"] = low, high
    if ci:
        lines = ["## Headline numbers with bootstrap 95% confidence intervals", "",
                 f"{ev.bootstrap_samples} resamples of the test queries (seed {seed}).", "",
                 "| metric | value | 95% CI |", "|---|---|---|"]
        lines += [f"| {k} | {_fmt(metrics[k])} | {_fmt(lo)} - {_fmt(hi)} |" for k, (lo, hi) in ci.items()]
        sections.append("\n".join(lines))

    # --- by report style ------------------------------------------------------------------------
    groups = style_groups(study_ids, profile, ev.abbreviation_heavy_density, ev.min_group_size)
    breakdown = group_breakdown({k: v for k, v in columns.items()}, groups)
    if breakdown.height:
        breakdown.write_csv(out_dir / "per_style.csv")
        shown = ["mean_recall", "i2t_R@1", "t2i_R@1", "report/rouge_l"]
        for row in breakdown.iter_rows(named=True):
            for key in shown:
                metrics[f"style/{row['group']}/{key.replace('report/', '')}"] = row[key]
        result_plots["per_style"] = plots.plot_group_bars(
            breakdown["group"].to_list(), {k: breakdown[k].to_list() for k in shown},
            out_dir / "per_style.png", ylabel="score", title="Retrieval and report scores by report style")
        lines = ["## By report style", "",
                 ("Ranks are those of the full test pool; each group averages its own queries. "
                 f"Abbreviation-heavy: abbreviation density >= {ev.abbreviation_heavy_density}."), "",
                 "| group | n | mean recall | image->report R@1 | report->image R@1 | ROUGE-L |",
                 "|---|---|---|---|---|---|"]
        lines += [f"| {r['group']} | {r['n']} | {_fmt(r['mean_recall'])} | {_fmt(r['i2t_R@1'])} | "
                  f"{_fmt(r['t2i_R@1'])} | {_fmt(r['report/rouge_l'])} |" for r in breakdown.iter_rows(named=True)]
        lines += ["", "![per style](per_style.png)"]
        sections.append("\n".join(lines))
    else:
        notes.append("no report profile (or every style group too small): style breakdown skipped")

    # --- 5x200-style subset -------------------------------------------------------------------
    if labels is not None:
        try:
            idx, counts = five_by_n_subset(labels, list(labeler.observations), list(ev.subset_findings),
                                           ev.subset_per_finding, seed)
        except ValueError as error:
            idx, counts = np.array([], dtype=int), {}
            notes.append(f"5x200 subset skipped: {error}")
        if len(idx) >= 2:
            from cxr_assets.evaluate.report import identical_text_groups

            sub = retrieval_metrics(image_emb[idx], text_emb[idx], ks=tuple(ev.recall_at),
                                    text_groups=identical_text_groups([texts[i] for i in idx]))
            metrics |= {f"subset5x200/{k}": v for k, v in sub.items()}
            lines = [f"## {len(ev.subset_findings)}x{ev.subset_per_finding}-style subset", "",
                     ("Studies positive for exactly one of the listed findings, drawn per finding with a fixed "
                     "seed; the candidate pool is the subset itself."), "",
                     "- drawn: " + ", ".join(f"{k} {v}" for k, v in counts.items()), "",
                     ("| metric | image->report | report->image | image->report (identical text) | "
                     "report->image (identical text) |"), "|---|---|---|---|---|"]
            lines += [f"| R@{k} | {_fmt(sub[f'i2t_R@{k}'])} | {_fmt(sub[f't2i_R@{k}'])} | "
                      f"{_fmt(sub[f'grp_i2t_R@{k}'])} | {_fmt(sub[f'grp_t2i_R@{k}'])} |" for k in ev.recall_at]
            sections.append("\n".join(lines))
        elif counts:
            notes.append(f"5x200 subset too small ({len(idx)} studies: {counts}); skipped")

    # --- zero-shot classification ---------------------------------------------------------------
    if labels is not None and ev.zero_shot and embed_texts is not None:
        from cxr_assets.evaluate.zero_shot import zero_shot

        zs = zero_shot(image_emb, labels, list(labeler.observations), embed_texts)
        if zs["auc"]:
            rows = [{"observation": o, **per} for o, per in zs["auc"].items()]
            pl.DataFrame(rows).write_csv(out_dir / "zero_shot_auc.csv")
            ensemble = {o: per["ensemble"] for o, per in zs["auc"].items()}
            spreads = [max(v for s, v in per.items() if s != "ensemble") -
                       min(v for s, v in per.items() if s != "ensemble") for per in zs["auc"].values()]
            metrics |= {f"zeroshot/auc/{o}": v for o, v in ensemble.items()}
            metrics["zeroshot/mean_auc"] = float(np.mean(list(ensemble.values())))
            metrics["zeroshot/prompt_spread"] = float(np.mean(spreads))
            result_plots["roc"] = plots.plot_roc_curves(zs["roc"], ensemble, out_dir / "roc.png")
            result_plots["prompt_sensitivity"] = plots.plot_prompt_sensitivity(
                zs["auc"], out_dir / "prompt_sensitivity.png")
            styles = [s for s in rows[0] if s != "observation"]
            lines = ["## Zero-shot classification", "",
                     ("Score = similarity to the positive prompts minus similarity to the negative prompts "
                     "(fixed prompt lists per style); labels from the labeler on the true report "
                     "(uncertain left out)."), "",
                     (f"Mean ensemble AUC {_fmt(metrics['zeroshot/mean_auc'])}; mean spread across prompt "
                     f"styles {_fmt(metrics['zeroshot/prompt_spread'])}."), "",
                     "| observation | positives | " + " | ".join(styles) + " |", "|---" * (len(styles) + 2) + "|"]
            lines += [f"| {r['observation']} | {zs['n_positive'][r['observation']]} | "
                      + " | ".join(_fmt(r[s]) for s in styles) + " |" for r in rows]
            lines += ["", "![ROC](roc.png)", "", "![prompt sensitivity](prompt_sensitivity.png)"]
            sections.append("\n".join(lines))
        else:
            notes.append("zero-shot skipped: no observation has both positive and negative test studies")
    elif labels is not None and ev.zero_shot:
        notes.append("zero-shot skipped: no text encoder available to embed the prompts")

    # DVC declares these plot files: say why one is missing instead of failing the stage.
    for name, why in (("per_style", "style breakdown unavailable (no report profile)"),
                      ("roc", "zero-shot ROC unavailable (no labeler, encoder or two-class observation)"),
                      ("prompt_sensitivity", "prompt sensitivity unavailable (see notes)")):
        if name not in result_plots:
            plots.plot_placeholder(why, out_dir / f"{name}.png")
    if not (out_dir / "per_style.csv").exists() or not breakdown.height:
        pl.DataFrame({"group": [], "n": [], "mean_recall": []},
                     schema={"group": pl.Utf8, "n": pl.Int64, "mean_recall": pl.Float64}).write_csv(
            out_dir / "per_style.csv")
    if notes:
        sections.append("## Notes\n\n" + "\n".join(f"- {n}" for n in notes))
    return SuiteResult(evaluation, metrics, sections, result_plots, notes)


def write_report(suite: SuiteResult, title: str, context: dict[str, str], ev,
                 out_dir: Path) -> WrittenReport:
    """recall_at_k.png, metrics.json, report.md and report.html of an evaluated pool into
    `out_dir` (evaluation_report and re-evaluation write the same report)."""
    from cxr_assets.evaluate.plots import plot_recall_curve
    from cxr_assets.evaluate.report import render_report
    from cxr_assets.fileio import write_json_atomic

    evaluation = suite.evaluation
    plot = plot_recall_curve({"image->report": evaluation.i2t_ranks,
                              "report->image": evaluation.t2i_ranks}, out_dir / "recall_at_k.png")
    metrics = {k: round(float(v), 6) for k, v in suite.metrics.items() if not np.isnan(v)}
    write_json_atomic(out_dir / "metrics.json", metrics)
    markdown, html = render_report(title, evaluation, context, ev.recall_at, plot, suite.sections)
    (out_dir / "report.md").write_text(markdown)
    (out_dir / "report.html").write_text(html)
    return WrittenReport(metrics, markdown, plot)
