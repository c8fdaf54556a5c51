"""Ablations of the text-encoder recipe at one small, equal budget (not part of `make bench`).

Each named variant trains an encoder from the base model on the IU reports' training part with
params.release.yaml's text_encoder section plus the variant's overrides, then scores it with and
without its post-processing on the held-out IU reports, beside the raw baselines. Results are
appended to <out>/ablations.jsonl (one line per variant, so an interrupted run keeps what it
finished and a rerun skips those) and rendered to <out>/ABLATIONS.md.

    python benchmarks/ablate_text_encoder.py                     # every variant
    python benchmarks/ablate_text_encoder.py causal bidirectional # some
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# The shared small budget: every variant gets the same steps, batch and LoRA placement.
BUDGET = {"mntp": {"steps": 0}, "contrastive": {"steps": 24, "batch_size": 8, "warmup_steps": 3,
                                                "distill_weight": 0.0},
          "lora": {"top_layers": 10}, "postprocess": {"n_fit": 256}}
VARIANTS: dict[str, dict] = {  # in order of interest: an interrupted run keeps the first ones
    "causal": {"bidirectional": False},
    "bidirectional": {"bidirectional": True},
    "causal_distill": {"bidirectional": False, "contrastive": {"distill_weight": 1.0}},
    "bidirectional_mntp": {"bidirectional": True, "mntp": {"steps": 12, "batch_size": 8}},
    "causal_one_directional_loss": {"bidirectional": False, "contrastive": {"symmetric": False}},
    "causal_lora_r8_attention": {"bidirectional": False, "lora": {
        "r": 8, "alpha": 16, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}},
}
BASELINES = ("raw_llm", "minilm")  # the release's EVALUATION.md has every baseline at 300 reports
HEADLINE = (("abbreviation", "R@1"), ("summarization", "R@10"), ("error_discrimination", "accuracy"),
            ("error_discrimination_unseen", "accuracy"), ("label_consistency", "P@10"),
            ("zero_shot", "mean_AUC"))


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def main(argv: list[str]) -> int:
    import polars as pl
    import torch
    import yaml

    from cxr_assets.config import parse_params
    from cxr_assets.paths import ProjectPaths
    from cxr_assets.text.adapt import adapt_text_encoder
    from cxr_assets.text.corpus import training_data
    from cxr_assets.text.encoder import TextEncoder
    from cxr_assets.text.evaluation import build_eval_set, load_iu_reports, score_encoder
    from cxr_assets.text.heldout import baseline_encoder
    from cxr_assets.text.postprocess import fit_for, fit_sample

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="*", help=f"some of {', '.join(VARIANTS)} (default all)")
    parser.add_argument("--reports", type=int, default=100, help="held-out IU reports scored")
    parser.add_argument("--out", type=Path, default=None, help="default: the release folder")
    parser.add_argument("--work", type=Path, default=REPO / "artifacts" / "ablations")
    args = parser.parse_args(argv)
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variant(s) {sorted(unknown)}")
    torch.set_num_threads(2)
    raw = yaml.safe_load((REPO / "params.release.yaml").read_text())
    out = args.out or REPO / raw["text_encoder"]["release_to"]
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "ablations.jsonl"
    done = {json.loads(line)["variant"] for line in results_file.read_text().splitlines()
            if line.strip()} if results_file.is_file() else set()

    params = parse_params(raw)
    paths = ProjectPaths.from_params(params, REPO)
    te = params.text_encoder
    iu = load_iu_reports(paths.at(te.corpus.iu_csv), te.corpus.salt, te.corpus.heldout_fraction)
    data = build_eval_set(iu, args.reports, te.evaluation.seed)
    iu_train = list(dict.fromkeys(iu.filter(pl.col("split") == "train")["report"].to_list()))
    fit_texts = fit_sample(iu_train, BUDGET["postprocess"]["n_fit"], params.project.seed)

    def record(variant: str, scores: list, seconds: float, extra: dict) -> None:
        for s in scores:
            values = {f"{r['task']}/{r['metric']}": r["value"] for r in s.rows}
            line = {"variant": variant, "row": s.name, "seconds": round(seconds, 1),
                    "n_reports": args.reports, **extra,
                    "metrics": {f"{t}/{m}": values.get(f"{t}/{m}") for t, m in HEADLINE}}
            with results_file.open("a") as handle:
                handle.write(json.dumps(line) + "\n")

    for name in [b for b in BASELINES if f"baseline:{b}" not in done]:
        start = time.perf_counter()
        encoder = baseline_encoder(name, params, paths, iu_train, None, progress=False)
        scores = score_encoder(encoder, data, {name: None, f"{name}+pp": fit_for(encoder, fit_texts)})
        record(f"baseline:{name}", scores, time.perf_counter() - start, {})
        print(f"baseline {name} done", flush=True)

    for variant in args.variants or list(VARIANTS):
        if variant in done:
            print(f"{variant}: already measured, skipped", flush=True)
            continue
        over = _merge(_merge({}, BUDGET), VARIANTS[variant])
        variant_raw = _merge(raw, {"text_encoder": {**over, "release_to": None}})
        vparams = parse_params(variant_raw)
        train = training_data(vparams, paths, progress=False)
        start = time.perf_counter()
        result = adapt_text_encoder(train.texts, train.pairs, vparams.text_encoder,
                                    paths.base_model_cache, args.work / variant,
                                    seed=params.project.seed, progress=True,
                                    hard_negatives=train.hard_negatives, tasks=train.tasks,
                                    checkpoint_dir=args.work / f"{variant}-checkpoints")
        seconds = time.perf_counter() - start
        encoder = TextEncoder.from_pretrained(result.encoder_dir)
        scores = score_encoder(encoder, data, {f"{variant}+pp": encoder.postprocess,
                                               variant: None})
        losses = result.contrastive_losses
        record(variant, scores, seconds, {
            "overrides": VARIANTS[variant],
            "contrastive_loss_first_last": [losses[0], losses[-1]] if losses else None,
            "mntp_fixed_batch_loss": result.mntp_eval_loss})
        print(f"{variant} done in {seconds / 60:.1f} min", flush=True)
        (out / "ABLATIONS.md").write_text(render(results_file))
    (out / "ABLATIONS.md").write_text(render(results_file))
    print((out / "ABLATIONS.md").read_text())
    return 0


def render(results_file: Path) -> str:
    """The ablation table: one row per variant (with and without post-processing)."""
    lines = [json.loads(line) for line in results_file.read_text().splitlines() if line.strip()]
    n = lines[0]["n_reports"] if lines else "?"
    table = ["## Ablations at one small budget", "",
             (f"Every variant: 24 contrastive steps of 8 pairs (+ hard negatives), LoRA r16 on every "
             f"linear layer of the last 10 layers unless stated, no MNTP unless stated, trained on "
             f"the IU training part; scored on {n} held-out IU reports (`+pp`: with the fitted "
             "post-processing). Reproduce: `python benchmarks/ablate_text_encoder.py`."), "",
             "| row | " + " | ".join(f"{t} {m}" for t, m in HEADLINE) + " | train min |",
             "|---|" + "---:|" * (len(HEADLINE) + 1)]
    for line in lines:
        cells = [("-" if line["metrics"][f"{t}/{m}"] is None else f"{line['metrics'][f'{t}/{m}']:.3f}")
                 for t, m in HEADLINE]
        minutes = "-" if line["variant"].startswith("baseline:") else f"{line['seconds'] / 60:.1f}"
        table.append(f"| {line['row']} | " + " | ".join(cells) + f" | {minutes} |")
    return "\n".join(table) + "\n"


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
