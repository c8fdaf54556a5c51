"""Ablation of where the release's mean part is read (not part of `make bench`).

Release v6 is v5's weights with its mean read differently (pooling.MeanTaps): from one or more
hidden-state layers side by side, without each text's first token (a causal LLM's attention
sink). Nothing is trained, so every candidate here costs one column slice: the texts are encoded
once with the union of the candidates' layers, and each candidate keeps its own layers' blocks,
gets its post-processing fitted as the release profile fits it (n_fit IU training reports) and
is combined with v5's head at v5's mean weight, as `TextEncoder.finish`
does. Rows: v5 as released (last layer, every token), then each candidate; each scored on the
validation part of the IU training side (where the layers are chosen) and on the 300 held-out
reports, with the finding-search precision@5 over 600 demo-style reports beside the validation
row (the demo itself is another seed).

    python benchmarks/ablate_mean_layers.py          # ~20 min on 2 cores
Writes benchmarks/results/mean_layer_ablation.json and prints the table.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

from ablate_head_statements import (  # after the path set-up
    DEMO_REPORTS,
    DEMO_SEED,
    HEADLINE,
    VALIDATION_FRACTION,
    search_precision,
    validation_and_heldout,
)

PROFILE = REPO / "params.release_v6.yaml"
CANDIDATES: dict[str, tuple[int, ...]] = {  # all without the first token
    "last": (-1,),
    "24": (24,),
    "1+24": (1, 24),
    "2+24": (2, 24),
    "3+24": (3, 24),
    "3+27": (3, 27),
    "3+last": (3, -1),
}


class CandidateView:
    """One candidate's embedding from the union encoder's raw output: its layers' mean blocks
    (post-processed with statistics of its own) beside the head, as TextEncoder.finish does."""

    def __init__(self, union, cache: dict[str, np.ndarray], layers: tuple[int, ...]) -> None:
        self.union, self.cache, self.width = union, cache, union.hidden_size
        positions = [union.mean_taps.layers.index(layer) for layer in layers]
        self.columns = np.concatenate(
            [np.arange(p * self.width, (p + 1) * self.width) for p in positions]
            + [np.arange(union.mean_width, union.dim)])  # the head's block
        self.center = self.scale = None

    def raw(self, texts: list[str]) -> np.ndarray:
        todo = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if todo:
            for text, row in zip(todo, self.union.encode(todo, progress=False, postprocess=False)):
                self.cache[text] = row
        return np.stack([self.cache[t] for t in texts])[:, self.columns]

    def fit(self, texts: list[str]) -> None:
        from cxr_assets.text.postprocess import EmbeddingPostprocess

        mean = self.raw(texts)[:, :-self.width]
        stats = EmbeddingPostprocess.fit(mean, "center_scale")
        self.center, self.scale = stats.mean, stats.scale

    def finish(self, raw: np.ndarray, postprocess: bool = True) -> np.ndarray:
        import torch

        from cxr_assets.text.pooling import mean_and_head

        center, scale = ((torch.from_numpy(self.center), torch.from_numpy(self.scale))
                         if postprocess else (None, None))
        return mean_and_head(torch.from_numpy(np.ascontiguousarray(raw, dtype=np.float32)),
                             self.union.mean_weight, center, scale, head_width=self.width).numpy()

    def encode(self, texts: list[str], instruction: str | None = None, batch_size: int = 16,
               progress: bool = False, postprocess: bool = True) -> np.ndarray:
        raw = self.raw(list(texts))
        return self.finish(raw) if postprocess else raw


def main() -> int:
    import polars as pl
    import torch
    from provenance import provenance

    from cxr_assets.config import load_params
    from cxr_assets.demo.generate import sample_reports
    from cxr_assets.paths import ProjectPaths
    from cxr_assets.text.encoder import TextEncoder
    from cxr_assets.text.evaluation import evaluate_encoder
    from cxr_assets.text.pooling import MeanTaps
    from cxr_assets.text.postprocess import fit_sample
    from cxr_assets.text.release import read_release

    torch.set_num_threads(2)
    params = load_params(PROFILE)
    paths = ProjectPaths.from_params(params, REPO)
    te = params.text_encoder
    start = paths.at(te.init_from)
    iu, scored = validation_and_heldout(paths, te)
    demo = sample_reports(DEMO_REPORTS, DEMO_SEED)
    # Statistics from training reports outside the validation part (the stage draws its sample,
    # with this seed, from the whole training part: the validation part is not kept out there).
    fit_texts = fit_sample(iu.filter(pl.col("split") == "train")["report"].to_list(),
                           te.postprocess.n_fit, params.project.seed + 11)

    rows: list[dict] = []

    def score(name: str, model, layers: list[int] | None, skip: bool | None) -> None:
        for split, data in scored.items():
            values = {f"{r['task']}/{r['metric']}": r["value"]
                      for r in evaluate_encoder(model, data, name)}
            row = {"row": name, "scored_on": split, "layers": layers, "skip_first_token": skip,
                   **{f"{t}/{m}": round(values[f"{t}/{m}"], 4) for t, m in HEADLINE}}
            if split == "validation":
                row["demo_search_p@5"] = round(search_precision(model, demo), 4)
            rows.append(row)
            print(json.dumps(row), flush=True)

    began = time.perf_counter()
    score(start.name, TextEncoder.from_pretrained(start), [-1], False)
    # v5's weights and head, its mean read at every candidate's layers (no statistics yet).
    union_layers = tuple(sorted({layer for c in CANDIDATES.values() for layer in c}))
    union = TextEncoder(**{**read_release(start), "postprocess": None,
                           "mean_taps": MeanTaps(union_layers, skip_first_token=True)})
    cache: dict[str, np.ndarray] = {}
    for name, layers in CANDIDATES.items():
        view = CandidateView(union, cache, layers)
        view.fit(fit_texts)
        score(name, view, list(layers), True)

    result = {"profile": PROFILE.name, "start": start.name, "mean_weight": te.latent_attention
              .mean_weight, "n_fit": te.postprocess.n_fit, "validation_fraction":
              VALIDATION_FRACTION, "demo_style_reports": {"n": DEMO_REPORTS, "seed": DEMO_SEED},
              "seconds": round(time.perf_counter() - began, 1), "rows": rows,
              "provenance": provenance()}
    out = HERE / "results" / "mean_layer_ablation.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(render(result))
    print(f"wrote {out}")
    return 0


def render(result: dict) -> str:
    names = [f"{t}/{m}" for t, m in HEADLINE]
    lines = ["| mean read at | scored on | " + " | ".join(names) + " | demo search P@5 |",
             "|---|---|" + "---:|" * (len(names) + 1)]
    for row in result["rows"]:
        lines.append(f"| {row['row']} | {row['scored_on']} | "
                     + " | ".join(f"{row[n]:.3f}" for n in names)
                     + f" | {row.get('demo_search_p@5', float('nan')):.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
