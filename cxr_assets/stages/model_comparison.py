"""model_comparison: the adapted report encoder against baseline text towers, same CLIP budget.

For each tower in evaluation.comparison.text_towers (adapted, minilm, minilm_finetuned,
raw_llm, tfidf) a CLIP
model is trained with the clip params of this run (cached text tower, same seed, epochs and
data) and evaluated in-domain (test split) and cross-site (trained without a site, evaluated on
all its studies). The in-domain adapted row is the clip_model of this run itself. Writes
reports/comparison/{comparison.md, comparison.csv, metrics.json, comparison.png}; the table is
shown in the Dagster UI and logged to MLflow as its own run. The towers' report embeddings come
from `evaluate/towers.py`, the training and scoring from `evaluate/comparison.py`.
"""

from __future__ import annotations

import polars as pl

from cxr_assets.config import Params
from cxr_assets.paths import ProjectPaths
from cxr_assets.stages.base import Markdown, StageResult, png_markdown, require, write_json


def run(params: Params, paths: ProjectPaths, progress: bool = True) -> StageResult:
    from cxr_assets.evaluate.comparison import (
        adapted_wins,
        cell_metrics,
        compare_towers,
        comparison_markdown,
        comparison_pairs,
        plot_comparison,
    )
    from cxr_assets.evaluate.towers import tower_embeddings
    from cxr_assets.registry.run_logging import log_comparison
    from cxr_assets.registry.tracking import configure_mlflow
    from cxr_assets.text.corpus import training_data

    require("model_comparison", {
        "study_embeddings": [paths.study_embeddings_table],
        "report_embeddings": [paths.report_embeddings_table],
        "study_images": [paths.study_images_table], "study_splits": [paths.splits_table],
        "report_texts": [paths.report_texts_table, paths.labels_table]})
    cfg = params.evaluation.comparison
    out = paths.reports_dir / "comparison"
    out.mkdir(parents=True, exist_ok=True)

    pairs = comparison_pairs(paths)
    studies = pairs.unique("study_id", keep="first", maintain_order=True).select("study_id", "report", "split")
    embeddings = {}
    for tower in cfg.text_towers:
        matrix = tower_embeddings(tower, params, paths, studies, progress,
                                  training=lambda: training_data(params, paths, progress=False))
        embeddings[tower] = dict(zip(studies["study_id"].to_list(), matrix))
    cells, notes = compare_towers(params, paths, pairs, studies, embeddings, progress)

    pl.DataFrame([c.row() for c in cells]).write_csv(out / "comparison.csv")
    markdown = comparison_markdown(cells, list(params.evaluation.recall_at), notes)
    (out / "comparison.md").write_text(markdown)
    plot = plot_comparison(cells, out / "comparison.png")
    metrics = cell_metrics(cells)
    write_json(out / "metrics.json", metrics)
    configure_mlflow(params, paths)
    log_comparison(metrics, out)

    wins, compared = adapted_wins(cells)
    return StageResult(
        "model_comparison",
        {"comparison_dir": out},
        {
            "towers": ", ".join(cfg.text_towers),
            "protocols": ", ".join(dict.fromkeys(c.protocol for c in cells)),
            "adapted_beats_every_baseline": f"{wins} of {compared} protocols",
            **metrics,
            "table": Markdown(markdown),
            "comparison_plot": Markdown(png_markdown(plot, "text towers compared")),
        },
    )
