"""Text-tower evaluation on real reports (the IU / OpenI reports), for any encoder side by side.

The IU reports are split at uid level (hash of salt + uid, so the split never moves when rows are
added): the held-out part is never trained on, even with the IU adaptation profile. On it:

| task | query | pool / candidates | metric |
|---|---|---|---|
| abbreviation | abbreviated report (reports.abbreviations.abbreviate) | all original reports | R@1/5/10 |
| summarization | findings | all impressions; an identical impression counts as a hit | R@1/5/10 |
| error_discrimination | findings | its true impression + negation flip, laterality swap, finding swap | accuracy |
| label_consistency | report | other reports; hit = same labeler label set (positive observations) | P@10 |
| zero_shot | report | "There is X." vs "There is no X." per observation | AUC |

Every encoder is called through `encode(texts, instruction=None, batch_size, progress)`; queries
carry the encoder's retrieval instruction when it has one (`instruction` attribute), documents do
not (the asymmetric LLM2Vec format). Identical texts are encoded once per encoder.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

RECALL_AT = (1, 5, 10)
ERROR_KINDS = ("negation_flip", "laterality_swap", "finding_swap")


def _clean(text: Any) -> str:
    return " ".join(str(text).split()) if isinstance(text, str) and text.strip() else ""


def uid_heldout(uid: Any, salt: str, fraction: float) -> bool:
    """Deterministic uid-level split: True for the held-out (evaluation) part."""
    digest = hashlib.sha256(f"{salt}:{uid}".encode()).hexdigest()
    return int(digest[:12], 16) / float(1 << 48) < fraction


def load_iu_reports(csv: Path, salt: str, heldout_fraction: float) -> pl.DataFrame:
    """The IU reports as study_id, uid, findings, impression, report (findings + impression),
    split ('train' or 'heldout'); rows without any text are dropped."""
    csv = Path(csv)
    if not csv.is_file():
        raise FileNotFoundError(f"IU reports CSV not found: {csv}")
    raw = pl.read_csv(csv, infer_schema_length=0)
    missing = {"uid", "findings", "impression"} - set(raw.columns)
    if missing:
        raise ValueError(f"{csv}: missing column(s) {sorted(missing)}")
    rows = []
    for row in raw.iter_rows(named=True):
        findings, impression = _clean(row["findings"]), _clean(row["impression"])
        report = " ".join(t for t in (findings, impression) if t)
        if not report:
            continue
        rows.append({
            "study_id": f"iu-{row['uid']}", "uid": str(row["uid"]),
            "findings": findings or None, "impression": impression or None, "report": report,
            "problems": row.get("Problems"),
            "split": "heldout" if uid_heldout(row["uid"], salt, heldout_fraction) else "train",
        })
    return pl.DataFrame(rows)


# --------------------------------------------------------------------------- corruptions
def corruptions(impression: str, seed: int) -> dict[str, str]:
    """The applicable corrupted versions of an impression, by kind (reports.variants' edits)."""
    from cxr_assets.reports.variants import finding_swap, laterality_swap, negation_flip

    rng = random.Random(f"{seed}:{impression}")
    out = {
        "negation_flip": negation_flip(impression, rng),
        "laterality_swap": laterality_swap(impression),
        "finding_swap": finding_swap(impression, rng),
    }
    return {k: v for k, v in out.items() if v and _clean(v) != _clean(impression)}


# --------------------------------------------------------------------------- evaluation data
@dataclass
class EvalSet:
    """Everything the tasks need, prepared once and shared by all encoders."""

    reports: list[str]
    abbreviated: list[str]  # same length as reports; "" when abbreviation changed nothing
    findings: list[str]  # findings of reports with both sections ...
    impressions: list[str]  # ... and their impressions (aligned)
    corrupted: list[dict[str, str]]  # per impression: kind -> corrupted text
    label_sets: list[frozenset[str]]  # per report
    labels: dict[str, np.ndarray]  # observation -> 1 / 0 / nan per report
    label_source: str
    notes: list[str] = field(default_factory=list)


def _labels(reports: list[str]) -> tuple[list[frozenset[str]], dict[str, np.ndarray], str]:
    """Label sets (positive observations) and per-observation labels from the project labeler."""
    from cxr_assets.reports.labeler import CHEXPERT_OBSERVATIONS, label_reports

    table = label_reports(reports)
    sets = []
    for row in table.iter_rows(named=True):
        sets.append(frozenset(o for o in CHEXPERT_OBSERVATIONS if row.get(o) == 1.0))
    labels: dict[str, np.ndarray] = {}
    for obs in CHEXPERT_OBSERVATIONS:
        values = table[obs].to_numpy().astype(float) if obs in table.columns else None
        if values is None:
            continue
        # positive = 1; negative = explicitly negated or not mentioned; uncertain = excluded.
        y = np.where(values == 1.0, 1.0, np.where(values == -1.0, np.nan, 0.0))
        y[np.isnan(values)] = 0.0
        labels[obs] = y
    return sets, labels, "reports.labeler (CheXpert observations)"


def build_eval_set(frame: pl.DataFrame, max_reports: int, seed: int) -> EvalSet:
    """An EvalSet from the held-out rows of load_iu_reports (capped, deterministic order)."""
    from cxr_assets.reports.abbreviations import abbreviate

    held = frame.filter(pl.col("split") == "heldout")
    if held.height == 0:
        raise ValueError("no held-out IU report to evaluate on")
    # Deterministic sample independent of CSV order: sort by a hash of the uid.
    held = held.with_columns(
        pl.col("uid").map_elements(lambda u: hashlib.sha256(f"{seed}:{u}".encode()).hexdigest(),
                                   return_dtype=pl.String).alias("_key")
    ).sort("_key").head(max_reports)
    reports = held["report"].to_list()
    abbreviated = []
    for i, text in enumerate(reports):
        short = _clean(abbreviate(text, seed=seed + i))
        abbreviated.append(short if short and short != text else "")
    findings, impressions, corrupted = [], [], []
    for f, imp in zip(held["findings"].to_list(), held["impression"].to_list()):
        if f and imp:
            findings.append(f)
            impressions.append(imp)
            corrupted.append(corruptions(imp, seed))
    label_sets, labels, source = _labels(reports)
    return EvalSet(reports, abbreviated, findings, impressions, corrupted, label_sets, labels,
                   source)


# --------------------------------------------------------------------------- metrics
def _normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


class _Embedder:
    """Encode each distinct (text, is_query) once per encoder; returns L2-normalised rows."""

    def __init__(self, encoder: Any, batch_size: int, progress: bool) -> None:
        self.encoder = encoder
        self.instruction = getattr(encoder, "instruction", None) or None
        self.batch_size = batch_size
        self.progress = progress
        self.cache: dict[tuple[str, bool], np.ndarray] = {}

    def prefetch(self, texts: list[str], query: bool) -> None:
        todo = list(dict.fromkeys(t for t in texts if (t, query) not in self.cache))
        if not todo:
            return
        vectors = self.encoder.encode(todo, instruction=self.instruction if query else None,
                                      batch_size=self.batch_size, progress=self.progress)
        for text, vec in zip(todo, _normalize(np.asarray(vectors, dtype=np.float32))):
            self.cache[(text, query)] = vec

    def __call__(self, texts: list[str], query: bool) -> np.ndarray:
        self.prefetch(texts, query)
        return np.stack([self.cache[(t, query)] for t in texts])


def recall_at(scores: np.ndarray, correct: np.ndarray, ks: tuple[int, ...] = RECALL_AT) -> dict[str, float]:
    """R@k where correct [Q, P] bool marks every acceptable answer (identical answers count)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    hits = np.take_along_axis(correct, order, axis=1)
    return {f"R@{k}": float(hits[:, :k].any(axis=1).mean()) for k in ks}


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC by rank statistic (ties get half credit); nan when a class is missing."""
    keep = ~np.isnan(labels)
    s, y = scores[keep], labels[keep]
    pos, neg = s[y == 1], s[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def evaluate_encoder(encoder: Any, data: EvalSet, name: str, batch_size: int = 16,
                     progress: bool = False, min_class: int = 5) -> list[dict[str, Any]]:
    """Tidy rows (encoder, task, metric, value, n) of every task for one encoder."""
    embed = _Embedder(encoder, batch_size, progress)
    rows: list[dict[str, Any]] = []

    def add(task: str, metric: str, value: float, n: int) -> None:
        rows.append({"encoder": name, "task": task, "metric": metric, "value": float(value), "n": n})

    # 1. abbreviation understanding: abbreviated -> original, over the whole report pool.
    docs = embed(data.reports, query=False)
    pairs = [(i, a) for i, a in enumerate(data.abbreviated) if a]
    if pairs:
        queries = embed([a for _, a in pairs], query=True)
        text = np.array(data.reports, dtype=object)
        correct = np.stack([text == data.reports[i] for i, _ in pairs])
        for metric, value in recall_at(queries @ docs.T, correct).items():
            add("abbreviation", metric, value, len(pairs))

    # 2. summarization: findings -> impression; identical impressions count as hits.
    if data.findings:
        queries = embed(data.findings, query=True)
        pool = embed(data.impressions, query=False)
        text = np.array(data.impressions, dtype=object)
        correct = np.stack([text == imp for imp in data.impressions])
        for metric, value in recall_at(queries @ pool.T, correct).items():
            add("summarization", metric, value, len(data.findings))

        # 3. error discrimination: the true impression must beat every applicable corruption.
        usable = [i for i, c in enumerate(data.corrupted) if c]
        if usable:
            q = embed([data.findings[i] for i in usable], query=True)
            true = embed([data.impressions[i] for i in usable], query=False)
            true_score = (q * true).sum(1)
            beats_all = np.ones(len(usable), dtype=bool)
            for kind in ERROR_KINDS:
                rows_k = [j for j, i in enumerate(usable) if kind in data.corrupted[i]]
                if not rows_k:
                    continue
                wrong = embed([data.corrupted[usable[j]][kind] for j in rows_k], query=False)
                wins = true_score[rows_k] > (q[rows_k] * wrong).sum(1)
                beats_all[rows_k] &= wins
                add("error_discrimination", f"acc_{kind}", wins.mean(), len(rows_k))
            add("error_discrimination", "accuracy", beats_all.mean(), len(usable))

    # 4. label consistency: P@10 of neighbours with the same label set.
    n = len(data.reports)
    if n > 10:
        sims = docs @ docs.T
        np.fill_diagonal(sims, -np.inf)
        top = np.argsort(-sims, axis=1, kind="stable")[:, :10]
        sets = data.label_sets
        precision = [np.mean([sets[j] == sets[i] for j in top[i]]) for i in range(n)]
        add("label_consistency", "P@10", float(np.mean(precision)), n)

    # 5. zero-shot label AUC from positive / negative prompts.
    aucs = []
    for obs, y in data.labels.items():
        if obs == "No Finding":
            continue
        n_pos, n_neg = int(np.nansum(y == 1)), int(np.nansum(y == 0))
        if n_pos < min_class or n_neg < min_class:
            continue
        name_lc = obs.lower()
        prompts = embed([f"There is {name_lc}.", f"There is no {name_lc}."], query=False)
        score = docs @ prompts[0] - docs @ prompts[1]
        value = auc(score, y)
        aucs.append(value)
        add("zero_shot", f"AUC_{obs.replace(' ', '_')}", value, n_pos)
    if aucs:
        add("zero_shot", "mean_AUC", float(np.mean(aucs)), len(aucs))
    return rows


def evaluate_text_encoders(encoders: dict[str, Any], data: EvalSet, batch_size: int = 16,
                           progress: bool = True) -> pl.DataFrame:
    """The tidy table (encoder, task, metric, value, n) for every encoder, side by side."""
    rows: list[dict[str, Any]] = []
    for name, encoder in encoders.items():
        rows.extend(evaluate_encoder(encoder, data, name, batch_size, progress))
    return pl.DataFrame(rows, schema={"encoder": pl.String, "task": pl.String,
                                      "metric": pl.String, "value": pl.Float64, "n": pl.Int64})


HEADLINE = (("abbreviation", "R@1"), ("abbreviation", "R@5"), ("abbreviation", "R@10"),
            ("summarization", "R@1"), ("summarization", "R@5"), ("summarization", "R@10"),
            ("error_discrimination", "accuracy"), ("label_consistency", "P@10"),
            ("zero_shot", "mean_AUC"))


def to_markdown(table: pl.DataFrame, notes: list[str] | None = None) -> str:
    """A headline table (metrics as rows, encoders as columns) plus the full per-metric table."""
    encoders = list(dict.fromkeys(table["encoder"].to_list()))
    lines = ["# Text-tower evaluation (held-out IU reports)", ""]
    lines += ["| task | metric | " + " | ".join(encoders) + " |",
              "|---|---|" + "---:|" * len(encoders)]
    metrics = list(dict.fromkeys(zip(table["task"].to_list(), table["metric"].to_list())))
    headline = [m for m in HEADLINE if m in metrics] + [m for m in metrics if m not in HEADLINE]
    for task, metric in headline:
        cells = []
        for enc in encoders:
            hit = table.filter((pl.col("encoder") == enc) & (pl.col("task") == task)
                               & (pl.col("metric") == metric))
            cells.append(f"{hit['value'][0]:.3f}" if hit.height else "-")
        n = table.filter((pl.col("task") == task) & (pl.col("metric") == metric))["n"][0]
        lines.append(f"| {task} | {metric} (n={n}) | " + " | ".join(cells) + " |")
    if notes:
        lines += ["", *[f"- {note}" for note in notes]]
    return "\n".join(lines) + "\n"
