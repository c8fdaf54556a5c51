"""Text-tower evaluation on real reports (the IU / OpenI reports), for any encoder side by side.

The IU reports are split at uid level (hash of salt + uid, so the split never moves when rows are
added): the held-out part is never trained on, even with the IU adaptation profile. On it:

| task | query | pool / candidates | metric |
|---|---|---|---|
| abbreviation | abbreviated report (reports.abbreviations.abbreviate) | all original reports | R@1/5/10 |
| summarization | findings | all impressions; an identical impression counts as a hit | R@1/5/10 |
| error_discrimination | findings | its true impression + negation flip, laterality swap, finding swap | accuracy |
| error_discrimination_unseen | findings | true impression + severity/size change, location change | accuracy |
| label_consistency | report | other reports; hit = same labeler label set (positive observations) | P@10 |
| zero_shot | report | "There is X." vs "There is no X." per observation | AUC |

The training hard negatives come from the same edits as `error_discrimination`; the `_unseen`
edits (severity or size, location within the lung) are never produced in training, so that row
tells whether the encoder learned the meaning or the edit.

Format, declared once for every task and every encoder (FORMAT): plain text on both sides, no
instruction, which is how the adapted encoder is trained. Every encoder is called through
`encode(texts, instruction=None, batch_size, progress)`; identical texts are encoded once per
encoder, and post-processing variants (e.g. "+pp") reuse the same raw embeddings.
Every metric is also kept per item, so `paired_bootstrap` can put a 95% interval on the
difference between two encoders scored on the same items.
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
UNSEEN_ERROR_KINDS = ("severity_change", "location_change")
FORMAT = "plain text on both sides of every task, no instruction (as the adapted encoder is trained)"
# The five headline metrics of the issue tracker and the model card.
HEADLINE_METRICS = (("abbreviation", "R@1"), ("summarization", "R@10"),
                    ("error_discrimination", "accuracy"), ("label_consistency", "P@10"),
                    ("zero_shot", "mean_AUC"))


def _clean(text: Any) -> str:
    return " ".join(str(text).split()) if isinstance(text, str) and text.strip() else ""


def uid_heldout(uid: Any, salt: str, fraction: float) -> bool:
    """Deterministic uid-level split: True for the held-out (evaluation) part."""
    digest = hashlib.sha256(f"{salt}:{uid}".encode()).hexdigest()
    return int(digest[:12], 16) / float(1 << 48) < fraction


def load_iu_reports(csv: Path, salt: str, heldout_fraction: float) -> pl.DataFrame:
    """The IU reports as study_id, uid, findings, impression, report (findings + impression),
    split ('train', 'heldout', or 'train_duplicate' for a training-side report whose text also
    occurs on the held-out side: never trained on, so no held-out text is ever seen in training);
    rows without any text are dropped."""
    from cxr_assets.ingest.layouts.iu_xray import read_reports_csv

    csv = Path(csv)
    if not csv.is_file():
        raise FileNotFoundError(f"IU reports CSV not found: {csv}")
    raw = read_reports_csv(csv)  # the one IU CSV reader; it checks the columns
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
    heldout_texts = {_canonical(r["report"]) for r in rows if r["split"] == "heldout"}
    for r in rows:
        if r["split"] == "train" and _canonical(r["report"]) in heldout_texts:
            r["split"] = "train_duplicate"
    return pl.DataFrame(rows)


def with_validation_part(frame: pl.DataFrame, fraction: float, salt: str) -> pl.DataFrame:
    """`frame` (load_iu_reports) with a uid-level `fraction` of its 'train' rows moved to
    'validation' (for choosing among training variants without the held-out part), and the
    training rows whose text also occurs there to 'validation_duplicate' (never trained on)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    picked = frame["uid"].map_elements(lambda u: uid_heldout(u, salt, fraction),
                                       return_dtype=pl.Boolean)
    frame = frame.with_columns(
        pl.when((pl.col("split") == "train") & picked).then(pl.lit("validation"))
        .otherwise(pl.col("split")).alias("split"))
    canonical = frame["report"].map_elements(_canonical, return_dtype=pl.String)
    seen = set(canonical.filter(frame["split"] == "validation").to_list())
    return frame.with_columns(
        pl.when((pl.col("split") == "train") & canonical.is_in(list(seen)))
        .then(pl.lit("validation_duplicate")).otherwise(pl.col("split")).alias("split"))


def _canonical(text: str) -> str:
    """Case- and whitespace-insensitive identity of a report text."""
    return " ".join(text.lower().split())


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


_SEVERITY_SWAPS = (("small", "large"), ("mild", "severe"), ("minimal", "extensive"),
                   ("tiny", "large"), ("trace", "large"), ("slight", "marked"),
                   ("moderate", "minimal"), ("subtle", "prominent"))
_LOCATION_SWAPS = (("upper", "lower"), ("apex", "base"), ("apical", "basilar"),
                   ("anterior", "posterior"), ("medial", "lateral"), ("superior", "inferior"))


def _swap_words(text: str, swaps: tuple[tuple[str, str], ...], rng: random.Random) -> str | None:
    """Replace one seeded-random occurrence of a word from `swaps` (either direction), keeping
    its case; None when no such word occurs."""
    import re

    table = {a: b for a, b in swaps} | {b: a for a, b in swaps}
    pattern = re.compile(r"\b(" + "|".join(sorted(table, key=len, reverse=True)) + r")\b",
                         re.IGNORECASE)
    hits = list(pattern.finditer(text))
    if not hits:
        return None
    m = hits[rng.randrange(len(hits))]
    word = m.group(1)
    new = table[word.lower()]
    new = new.capitalize() if word[0].isupper() else new
    return text[: m.start()] + new + text[m.end():]


def unseen_corruptions(impression: str, seed: int) -> dict[str, str]:
    """Edits the training never makes: a changed severity or size, a changed location."""
    rng = random.Random(f"{seed}:unseen:{impression}")
    out = {"severity_change": _swap_words(impression, _SEVERITY_SWAPS, rng),
           "location_change": _swap_words(impression, _LOCATION_SWAPS, rng)}
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
    unseen: list[dict[str, str]] = field(default_factory=list)  # per impression: kind -> text


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
    findings, impressions, corrupted, unseen = [], [], [], []
    for f, imp in zip(held["findings"].to_list(), held["impression"].to_list()):
        if f and imp:
            findings.append(f)
            impressions.append(imp)
            corrupted.append(corruptions(imp, seed))
            unseen.append(unseen_corruptions(imp, seed))
    label_sets, labels, source = _labels(reports)
    return EvalSet(reports, abbreviated, findings, impressions, corrupted, label_sets, labels,
                   source, unseen=unseen)


# --------------------------------------------------------------------------- metrics
def _normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


class _Embedder:
    """Encode each distinct text once per encoder (raw, before any post-processing); returns
    L2-normalised rows after the variant's `transform` (e.g. fitted post-processing)."""

    def __init__(self, encoder: Any, batch_size: int, progress: bool) -> None:
        from cxr_assets.text.postprocess import _takes_postprocess

        self.encoder = encoder
        self.batch_size = batch_size
        self.progress = progress
        self.raw_kwargs = {"postprocess": False} if _takes_postprocess(encoder) else {}
        self.cache: dict[str, np.ndarray] = {}

    def prefetch(self, texts: list[str]) -> None:
        todo = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if not todo:
            return
        vectors = self.encoder.encode(todo, instruction=None, batch_size=self.batch_size,
                                      progress=self.progress, **self.raw_kwargs)
        for text, vec in zip(todo, np.asarray(vectors, dtype=np.float32)):
            self.cache[text] = vec

    def view(self, transform: Any) -> Any:
        def embed(texts: list[str], query: bool = False) -> np.ndarray:
            self.prefetch(texts)
            x = np.stack([self.cache[t] for t in texts])
            return _normalize(transform(x) if transform is not None else x)
        return embed


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


@dataclass
class EncoderScores:
    """One encoder variant's tidy rows and, per metric, its per-item outcomes (for bootstrap)."""

    name: str
    rows: list[dict[str, Any]]
    items: dict[tuple[str, str], Any]  # (task, metric) -> per-item array, or an AUC item set


def evaluate_encoder(encoder: Any, data: EvalSet, name: str, batch_size: int = 16,
                     progress: bool = False, min_class: int = 5) -> list[dict[str, Any]]:
    """Tidy rows (encoder, task, metric, value, n) of every task for one encoder, embedding as
    its `encode` does by default (with its own post-processing, when it has one)."""
    own = getattr(encoder, "finish", None) or getattr(encoder, "postprocess", None)
    transform = own if callable(own) else None
    return score_encoder(encoder, data, {name: transform}, batch_size, progress, min_class)[0].rows


def score_encoder(encoder: Any, data: EvalSet, variants: dict[str, Any], batch_size: int = 16,
                  progress: bool = False, min_class: int = 5) -> list[EncoderScores]:
    """Score one encoder under each variant {name: transform or None}, embedding texts once."""
    embedder = _Embedder(encoder, batch_size, progress)
    # Everything any task embeds, in one pass (length-sorted batches over the whole set).
    texts = list(data.reports) + [a for a in data.abbreviated if a] + data.findings \
        + data.impressions + [t for c in data.corrupted for t in c.values()] \
        + [t for c in data.unseen for t in c.values()] + _prompts(data)
    embedder.prefetch(texts)
    return [_score(embedder.view(transform), data, name, min_class)
            for name, transform in variants.items()]


def _prompts(data: EvalSet) -> list[str]:
    out = []
    for obs in data.labels:
        if obs != "No Finding":
            out += [f"There is {obs.lower()}.", f"There is no {obs.lower()}."]
    return out


def _score(embed: Any, data: EvalSet, name: str, min_class: int) -> EncoderScores:
    rows: list[dict[str, Any]] = []
    items: dict[tuple[str, str], Any] = {}

    def add(task: str, metric: str, per_item: Any, n: int, value: float | None = None) -> None:
        value = float(np.mean(per_item)) if value is None else float(value)
        rows.append({"encoder": name, "task": task, "metric": metric, "value": value, "n": n})
        items[(task, metric)] = per_item

    def recall_items(scores: np.ndarray, correct: np.ndarray, task: str) -> None:
        order = np.argsort(-scores, axis=1, kind="stable")
        hits = np.take_along_axis(correct, order, axis=1)
        for k in RECALL_AT:
            add(task, f"R@{k}", hits[:, :k].any(axis=1).astype(float), len(scores))

    # 1. abbreviation understanding: abbreviated -> original, over the whole report pool.
    docs = embed(data.reports)
    pairs = [(i, a) for i, a in enumerate(data.abbreviated) if a]
    if pairs:
        queries = embed([a for _, a in pairs], query=True)
        text = np.array(data.reports, dtype=object)
        correct = np.stack([text == data.reports[i] for i, _ in pairs])
        recall_items(queries @ docs.T, correct, "abbreviation")

    # 2. summarization: findings -> impression; identical impressions count as hits.
    if data.findings:
        queries = embed(data.findings, query=True)
        pool = embed(data.impressions)
        text = np.array(data.impressions, dtype=object)
        correct = np.stack([text == imp for imp in data.impressions])
        recall_items(queries @ pool.T, correct, "summarization")

        # 3. error discrimination: the true impression must beat every applicable corruption.
        for task, corrupted, kinds in (("error_discrimination", data.corrupted, ERROR_KINDS),
                                       ("error_discrimination_unseen", data.unseen,
                                        UNSEEN_ERROR_KINDS)):
            usable = [i for i, c in enumerate(corrupted) if c]
            if not usable:
                continue
            q = embed([data.findings[i] for i in usable], query=True)
            true = embed([data.impressions[i] for i in usable])
            true_score = (q * true).sum(1)
            beats_all = np.ones(len(usable), dtype=bool)
            for kind in kinds:
                rows_k = [j for j, i in enumerate(usable) if kind in corrupted[i]]
                if not rows_k:
                    continue
                wrong = embed([corrupted[usable[j]][kind] for j in rows_k])
                wins = true_score[rows_k] > (q[rows_k] * wrong).sum(1)
                beats_all[rows_k] &= wins
                add(task, f"acc_{kind}", wins.astype(float), len(rows_k))
            add(task, "accuracy", beats_all.astype(float), len(usable))

    # 4. label consistency: P@10 of neighbours with the same label set.
    n = len(data.reports)
    if n > 10:
        sims = docs @ docs.T
        np.fill_diagonal(sims, -np.inf)
        top = np.argsort(-sims, axis=1, kind="stable")[:, :10]
        sets = data.label_sets
        precision = np.array([np.mean([sets[j] == sets[i] for j in top[i]]) for i in range(n)])
        add("label_consistency", "P@10", precision, n)

    # 5. zero-shot label AUC from positive / negative prompts.
    aucs, auc_items = [], []
    for obs, y in data.labels.items():
        if obs == "No Finding":
            continue
        n_pos, n_neg = int(np.nansum(y == 1)), int(np.nansum(y == 0))
        if n_pos < min_class or n_neg < min_class:
            continue
        name_lc = obs.lower()
        prompts = embed([f"There is {name_lc}.", f"There is no {name_lc}."])
        score = docs @ prompts[0] - docs @ prompts[1]
        value = auc(score, y)
        aucs.append(value)
        auc_items.append((score, y))
        add("zero_shot", f"AUC_{obs.replace(' ', '_')}", AucItems([(score, y)]), n_pos, value)
    if aucs:
        add("zero_shot", "mean_AUC", AucItems(auc_items), len(aucs), float(np.mean(aucs)))
    return EncoderScores(name, rows, items)


@dataclass
class AucItems:
    """Per-report scores and labels of one or more observations; a bootstrap resamples reports."""

    parts: list[tuple[np.ndarray, np.ndarray]]

    def __len__(self) -> int:
        return len(self.parts[0][0])

    def value(self, index: np.ndarray | None = None) -> float:
        vals = [auc(s if index is None else s[index], y if index is None else y[index])
                for s, y in self.parts]
        return float(np.nanmean(vals)) if not all(np.isnan(vals)) else float("nan")


def paired_bootstrap(a: Any, b: Any, samples: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """(difference a - b, 2.5%, 97.5%) by resampling the same items for both encoders."""
    rng = np.random.default_rng(seed)
    if isinstance(a, AucItems):
        n = len(a)
        diff = a.value() - b.value()
        draws = [a.value(ix) - b.value(ix) for ix in (rng.integers(0, n, n) for _ in range(samples))]
    else:
        a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
        if a.shape != b.shape:
            raise ValueError(f"paired bootstrap needs the same items, got {a.shape} and {b.shape}")
        n = len(a)
        diff = float(a.mean() - b.mean())
        index = rng.integers(0, n, (samples, n))
        draws = (a[index] - b[index]).mean(axis=1)
    low, high = np.nanpercentile(np.asarray(draws, dtype=float), [2.5, 97.5])
    return float(diff), float(low), float(high)


def difference_table(scores: list[EncoderScores], reference: str, samples: int = 1000,
                     seed: int = 0) -> pl.DataFrame:
    """reference - each other encoder on the headline metrics, with paired 95% intervals."""
    by_name = {s.name: s for s in scores}
    if reference not in by_name:
        raise ValueError(f"no scores for reference encoder {reference!r}")
    ref = by_name[reference]
    rows = []
    for other in scores:
        if other.name == reference:
            continue
        for key in HEADLINE_METRICS:
            if key in ref.items and key in other.items:
                diff, low, high = paired_bootstrap(ref.items[key], other.items[key], samples, seed)
                rows.append({"reference": reference, "baseline": other.name, "task": key[0],
                             "metric": key[1], "difference": diff, "ci_low": low, "ci_high": high})
    return pl.DataFrame(rows, schema={"reference": pl.String, "baseline": pl.String,
                                      "task": pl.String, "metric": pl.String,
                                      "difference": pl.Float64, "ci_low": pl.Float64,
                                      "ci_high": pl.Float64})


def evaluate_text_encoders(encoders: dict[str, Any], data: EvalSet, batch_size: int = 16,
                           progress: bool = True) -> pl.DataFrame:
    """The tidy table (encoder, task, metric, value, n) for every encoder, side by side."""
    rows: list[dict[str, Any]] = []
    for name, encoder in encoders.items():
        rows.extend(evaluate_encoder(encoder, data, name, batch_size, progress))
    return scores_table(rows)


def scores_table(rows: list[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema={"encoder": pl.String, "task": pl.String,
                                      "metric": pl.String, "value": pl.Float64, "n": pl.Int64})


HEADLINE = (("abbreviation", "R@1"), ("abbreviation", "R@5"), ("abbreviation", "R@10"),
            ("summarization", "R@1"), ("summarization", "R@5"), ("summarization", "R@10"),
            ("error_discrimination", "accuracy"), ("error_discrimination_unseen", "accuracy"),
            ("label_consistency", "P@10"), ("zero_shot", "mean_AUC"))


def to_markdown(table: pl.DataFrame, notes: list[str] | None = None,
                differences: pl.DataFrame | None = None) -> str:
    """A headline table (metrics as rows, encoders as columns) plus the full per-metric table,
    and the paired-bootstrap differences when given."""
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
    if differences is not None and differences.height:
        lines += ["", differences_markdown(differences)]
    if notes:
        lines += ["", *[f"- {note}" for note in notes]]
    return "\n".join(lines) + "\n"


def differences_markdown(differences: pl.DataFrame) -> str:
    """Reference minus each baseline on the headline metrics: difference [95% interval]."""
    reference = differences["reference"][0]
    baselines = list(dict.fromkeys(differences["baseline"].to_list()))
    lines = [f"## {reference} minus each baseline (paired bootstrap, 95% interval)", "",
             "| task | metric | " + " | ".join(baselines) + " |",
             "|---|---|" + "---:|" * len(baselines)]
    for task, metric in HEADLINE_METRICS:
        cells = []
        for base in baselines:
            hit = differences.filter((pl.col("baseline") == base) & (pl.col("task") == task)
                                     & (pl.col("metric") == metric))
            cells.append("-" if not hit.height else
                         f"{hit['difference'][0]:+.3f} [{hit['ci_low'][0]:+.3f}, {hit['ci_high'][0]:+.3f}]")
        lines.append(f"| {task} | {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
