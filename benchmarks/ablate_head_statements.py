"""Ablation of the finding statements the latent-attention head trains on (not part of `make bench`).

Stage three trains the head alone on cached token states (text/head_training.py), so variants of
its training data cost minutes, not hours. Each variant here starts from the head of the release
that params.release_v5.yaml starts from and takes that profile's head_training budget, with the
profile's text_encoder settings plus the variant's statement settings:

- observation: statements name the CheXpert observation only (the v4 recipe), a control at the
  same budget;
- both: also the report's own words with their modifiers (contrastive.statement_phrasing);
- both_normal: and "No acute cardiopulmonary abnormality." for normal reports (normal_statements).

The head trains on the IU training part minus a validation part (corpus.validation_fraction, 20%
of the training uids; identical texts moved with them). Every variant is scored on that
validation part, where a variant is chosen, and on the held-out part (300 reports each), beside
all-MiniLM-L6-v2 and the starting release. Besides the five text-tower metrics it scores finding
search: the 20 queries of bench_search_quality.py, precision@5 by the labeler's findings, over
the scored reports and over 600 demo-style reports drawn with another seed than the demo's.

    python benchmarks/ablate_head_statements.py                          # ~35 min on 2 cores
    python benchmarks/ablate_head_statements.py observation both_normal  # some variants
Writes benchmarks/results/head_statement_ablation.json and prints the table.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

PROFILE = REPO / "params.release_v5.yaml"
VALIDATION_FRACTION = 0.2
VARIANTS: dict[str, dict] = {
    "observation": {"statement_phrasing": "observation", "normal_statements": False},
    "both": {"statement_phrasing": "both", "normal_statements": False},
    "both_normal": {"statement_phrasing": "both", "normal_statements": True},
}
HEADLINE = (("abbreviation", "R@1"), ("summarization", "R@10"), ("error_discrimination", "accuracy"),
            ("label_consistency", "P@10"), ("zero_shot", "mean_AUC"))
DEMO_SEED, DEMO_REPORTS = 99, 600  # the demo itself is seed 7: its benchmark stays unseen


class CachedStatesEncoder:
    """The release's embedding (post-processed mean beside `head`) from cached token states."""

    def __init__(self, states, head, encoder) -> None:
        import torch

        self.states, self.head, self.weight = states, head, encoder.mean_weight
        self.center = torch.from_numpy(encoder.postprocess.mean)
        self.scale = torch.from_numpy(encoder.postprocess.scale)

    def encode(self, texts: list[str], **_) -> np.ndarray:
        import torch

        from cxr_assets.text.pooling import mean_and_head, pool

        out = []
        with torch.no_grad():
            for start in range(0, len(texts), 64):
                hidden, mask = self.states.batch(texts[start:start + 64])
                raw = pool(hidden, mask, "mean_and_latent_attention", self.head)
                out.append(mean_and_head(raw, self.weight, self.center, self.scale).numpy())
        return np.concatenate(out)


def search_precision(encoder, reports: list[str]) -> float:
    """Mean precision@5 of the finding queries over `reports` (relevant: labeler positive)."""
    from bench_search_quality import QUERIES, precision_at_k

    from cxr_assets.reports.labeler import label_reports

    labels = label_reports(reports)
    relevant = np.stack([(labels[o] == 1.0).fill_null(False).to_numpy() for _, o in QUERIES])
    queries = encoder.encode([q for q, _ in QUERIES])
    return float(precision_at_k(queries, encoder.encode(reports), relevant).mean())


def validation_and_heldout(paths, te) -> tuple:
    """The IU reports with a validation part of the training side (VALIDATION_FRACTION of its
    uids), and 300-report eval sets of that validation part and of the held-out part."""
    import polars as pl

    from cxr_assets.text.corpus import validation_salt
    from cxr_assets.text.evaluation import build_eval_set, load_iu_reports, with_validation_part

    iu = with_validation_part(
        load_iu_reports(paths.at(te.corpus.iu_csv), te.corpus.salt, te.corpus.heldout_fraction),
        VALIDATION_FRACTION, validation_salt(te))
    scored = {
        "validation": build_eval_set(iu.with_columns(
            pl.when(pl.col("split") == "validation").then(pl.lit("heldout"))
            .otherwise(pl.lit("other")).alias("split")), 300, te.evaluation.seed),
        "heldout": build_eval_set(iu, 300, te.evaluation.seed),
    }
    return iu, scored


def main(argv: list[str]) -> int:
    import torch
    from bench_search_quality import QUERIES
    from provenance import provenance

    from cxr_assets.config import load_params
    from cxr_assets.demo.generate import sample_reports
    from cxr_assets.paths import ProjectPaths
    from cxr_assets.text.baselines import MiniLMEncoder
    from cxr_assets.text.corpus import training_data
    from cxr_assets.text.encode_paths import auto_candidates, convert_model, cpu_flags
    from cxr_assets.text.encoder import TextEncoder
    from cxr_assets.text.evaluation import (
        _prompts,
        evaluate_encoder,
    )
    from cxr_assets.text.head_training import CachedTeacher, TokenStates, train_pooling_head

    chosen = argv or list(VARIANTS)
    unknown = sorted(set(chosen) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    torch.set_num_threads(2)
    params = load_params(PROFILE)
    paths = ProjectPaths.from_params(params, REPO)
    te = params.text_encoder
    start_release = paths.at(te.init_from)
    encoder = TextEncoder.from_pretrained(start_release)
    te = te.model_copy(update={"corpus": te.corpus.model_copy(
        update={"validation_fraction": VALIDATION_FRACTION})})
    _, scored = validation_and_heldout(paths, te)
    demo = sample_reports(DEMO_REPORTS, DEMO_SEED)

    def variant_data(settings: dict):
        contrastive = te.contrastive.model_copy(update=settings)
        data = training_data(params.model_copy(update={"text_encoder": te.model_copy(
            update={"contrastive": contrastive})}), paths, progress=False)
        keep = [i for i, t in enumerate(data.tasks) if t in te.head_training.tasks]
        return ([data.pairs[i] for i in keep], [data.hard_negatives[i] for i in keep],
                [data.tasks[i] for i in keep])

    datas = {name: variant_data(VARIANTS[name]) for name in chosen}
    texts = set(demo) | {q for q, _ in QUERIES}
    for data in scored.values():
        texts |= set(data.reports) | {a for a in data.abbreviated if a} | set(data.findings) \
            | set(data.impressions) | {t for c in data.corrupted for t in c.values()} \
            | {t for c in data.unseen for t in c.values()} | set(_prompts(data))
    for pairs, negatives, _ in datas.values():
        texts |= {t for pair in pairs for t in pair} | {n for n in negatives if n}
    # Token states once, in bf16 Linear layers where the CPU has native bf16 (cosine to fp32
    # 0.9998 on the encode-path benchmark), else fp32.
    fast = "bf16_linear" in auto_candidates(cpu_flags(), False)[0]
    body = convert_model(encoder.model, "bf16_linear") if fast else encoder.model
    began = time.perf_counter()
    states = TokenStates.compute(body, encoder.tokenizer, sorted(texts), te.max_length,
                                 te.embed_batch_size, progress=True)
    states_seconds = time.perf_counter() - began

    rows: list[dict] = []

    def score(name: str, model, extra: dict) -> None:
        for split, data in scored.items():
            values = {f"{r['task']}/{r['metric']}": r["value"]
                      for r in evaluate_encoder(model, data, name)}
            row = {"row": name, "scored_on": split, **extra,
                   **{f"{t}/{m}": round(values[f"{t}/{m}"], 4) for t, m in HEADLINE},
                   "search_p@5": round(search_precision(model, data.reports), 4)}
            if split == "validation":
                row["demo_search_p@5"] = round(search_precision(model, demo), 4)
            rows.append(row)
            print(json.dumps(row), flush=True)

    score("minilm", MiniLMEncoder(), {})
    score(start_release.name, CachedStatesEncoder(states, encoder.pooling_head, encoder), {})
    budget = te.head_training
    for name, (pairs, negatives, tasks) in datas.items():
        head = copy.deepcopy(encoder.pooling_head)
        teacher = CachedTeacher(MiniLMEncoder(), [t for p in pairs for t in p]
                                + [n for n in negatives if n])
        began = time.perf_counter()
        losses = train_pooling_head(
            head, states, pairs, budget.as_contrastive(), params.project.seed + 3, negatives, tasks,
            teacher, progress=True, pooling=te.pooling, mean_weight=te.latent_attention.mean_weight,
            postprocess=encoder.postprocess)
        score(name, CachedStatesEncoder(states, head, encoder), {
            "statements": VARIANTS[name], "pairs": len(pairs),
            "train_seconds": round(time.perf_counter() - began, 1),
            "loss_first_last_50": [round(float(np.mean(losses[:50])), 4),
                                   round(float(np.mean(losses[-50:])), 4)]})

    result = {
        "profile": PROFILE.name, "start": start_release.name,
        "budget": budget.model_dump(), "validation_fraction": VALIDATION_FRACTION,
        "token_states": {"texts": len(texts), "bf16_linear": fast,
                         "seconds": round(states_seconds, 1)},
        "demo_style_reports": {"n": DEMO_REPORTS, "seed": DEMO_SEED},
        "rows": rows, "provenance": provenance(),
    }
    out = HERE / "results" / "head_statement_ablation.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(render(result))
    print(f"wrote {out}")
    return 0


def render(result: dict) -> str:
    """Markdown table: one line per row and scored part."""
    head = [f"{t} {m}" for t, m in HEADLINE] + ["search P@5", "demo search P@5"]
    lines = ["| row | scored on | " + " | ".join(head) + " |", "|---|---|" + "---:|" * len(head)]
    for row in result["rows"]:
        cells = [f"{row[f'{t}/{m}']:.3f}" for t, m in HEADLINE] + [f"{row['search_p@5']:.2f}"]
        cells.append(f"{row['demo_search_p@5']:.2f}" if "demo_search_p@5" in row else "-")
        lines.append(f"| {row['row']} | {row['scored_on']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
