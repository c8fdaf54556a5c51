"""Evaluation of a set of paired image/report embeddings, and its human-readable report.

Shared by evaluation_report (the new challenger) and the champion re-evaluation schedule, so
both produce the same metrics and the same report layout.
"""

from __future__ import annotations

import hashlib
import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl


@dataclass
class Evaluation:
    metrics: dict[str, float]
    i2t_ranks: np.ndarray
    t2i_ranks: np.ndarray
    worst: list[dict]


def identical_text_groups(texts: list[str]) -> np.ndarray:
    """Group id per report: identical (whitespace-normalized, case-folded) texts share an id."""
    canon = [" ".join(t.lower().split()) for t in texts]
    ids: dict[str, int] = {}
    return np.array([ids.setdefault(hashlib.sha1(c.encode()).hexdigest(), len(ids)) for c in canon])


def evaluate_pairs(image_emb: np.ndarray, text_emb: np.ndarray, texts: list[str],
                   study_ids: list[str], ks: list[int], n_worst: int = 5) -> Evaluation:
    """Retrieval metrics under both protocols (paired only; identical text counts)."""
    from cxr_assets.evaluate.retrieval import per_query_ranks, retrieval_metrics

    groups = identical_text_groups(texts)
    metrics = retrieval_metrics(image_emb, text_emb, ks=tuple(ks), text_groups=groups)
    metrics["n_pairs"] = float(len(texts))
    metrics["n_unique_reports"] = float(len(set(groups.tolist())))
    i2t, t2i = per_query_ranks(image_emb, text_emb)
    sims = image_emb @ text_emb.T
    worst = []
    for i in np.argsort(-i2t)[:n_worst]:
        top = int(np.argmax(sims[i]))
        worst.append({"study_id": study_ids[i], "rank_of_true_report": int(i2t[i]),
                      "true_report": texts[i], "retrieved_study": study_ids[top],
                      "retrieved_report": texts[top]})
    return Evaluation(metrics, i2t, t2i, worst)


def recall_curve_table(evaluation: Evaluation, max_k: int = 50) -> pl.DataFrame:
    """Recall@K for K = 1..max_k in both directions (the DVC plot source)."""
    ks = np.arange(1, max_k + 1)
    return pl.DataFrame({
        "k": ks,
        "image_to_report": [(evaluation.i2t_ranks <= k).mean() for k in ks],
        "report_to_image": [(evaluation.t2i_ranks <= k).mean() for k in ks],
    })


def chance_recall(n: int, k: int) -> float:
    return min(1.0, k / max(n, 1))


def render_report(title: str, evaluation: Evaluation, context: dict[str, str], ks: list[int],
                  plot_png: Path | None, sections: list[str] | None = None) -> tuple[str, str]:
    """Markdown and standalone HTML versions of the same report."""
    m = evaluation.metrics
    n = int(m["n_pairs"])
    rows = []
    for k in ks:
        rows.append((f"R@{k}", m[f"i2t_R@{k}"], m[f"t2i_R@{k}"], m.get(f"grp_i2t_R@{k}"),
                     m.get(f"grp_t2i_R@{k}"), chance_recall(n, k)))
    md = [f"# {title}", ""]
    md += [f"- **{k}**: {v}" for k, v in context.items()]
    md += ["", f"Test pool: {n} image-report pairs ({int(m['n_unique_reports'])} distinct reports).",
           ("Protocol *paired*: only the study's own report counts. Protocol *identical text*: any "
           "report with the same text counts as correct."), "",
           ("| metric | image->report | report->image | image->report (identical text) | "
           "report->image (identical text) | chance |"), "|---|---|---|---|---|---|"]
    fmt = lambda v: "" if v is None else f"{v:.3f}"
    md += [f"| {r[0]} | " + " | ".join(fmt(v) for v in r[1:]) + " |" for r in rows]
    md += [f"| mean rank | {m['i2t_mean_rank']:.1f} | {m['t2i_mean_rank']:.1f} | | | {(n + 1) / 2:.1f} |",
           f"| median rank | {m['i2t_median_rank']:.1f} | {m['t2i_median_rank']:.1f} | | | |",
           "", f"**mean recall** (both directions, all K): {m['mean_recall']:.3f}", ""]
    if plot_png is not None:
        md += [f"![recall at K]({plot_png.name})", ""]
    for section in sections or []:
        md += [section, ""]
    if evaluation.worst:
        md += ["## Worst image->report retrievals", "",
               "| study | rank of true report | true report | top-1 retrieved report |", "|---|---|---|---|"]
        for w in evaluation.worst:
            clean = lambda t: " ".join(t.split()).replace("|", "/")[:220]
            md.append(f"| {w['study_id']} | {w['rank_of_true_report']} | {clean(w['true_report'])} | "
                      f"{clean(w['retrieved_report'])} |")
    markdown = "\n".join(md) + "\n"
    return markdown, markdown_to_html(title, markdown)


def markdown_to_html(title: str, markdown: str) -> str:
    """A small, dependency-free renderer for the report's own markdown (headings, lists, tables, images)."""
    body, in_table = [], False
    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if all(set(c) <= {"-"} for c in cells):
                continue
            tag = "th" if not in_table else "td"
            if not in_table:
                body.append("<table>")
                in_table = True
            body.append("<tr>" + "".join(f"<{tag}>{_inline(c)}</{tag}>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("# "):
            body.append(f"<h1>{_inline(line[2:])}</h1>")
        elif line.startswith("### "):
            body.append(f"<h3>{_inline(line[4:])}</h3>")
        elif line.startswith("## "):
            body.append(f"<h2>{_inline(line[3:])}</h2>")
        elif line.startswith("- "):
            body.append(f"<li>{_inline(line[2:])}</li>")
        elif line.startswith("!["):
            alt, src = line[2:].split("](", 1)
            body.append(f'<img alt="{html.escape(alt)}" src="{html.escape(src.rstrip(")"))}" width="640">')
        elif line.strip():
            body.append(f"<p>{_inline(line)}</p>")
    if in_table:
        body.append("</table>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
             "font-size:14px;vertical-align:top}th{background:#f3f3f3}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")


def _inline(text: str) -> str:
    escaped = html.escape(text)
    parts = escaped.split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))
