"""Same-budget comparison of text towers, in-domain and across sites.

The question a user asks before trusting the adapted LLM encoder: does it beat the obvious
alternatives when everything else is equal, and does the advantage survive a site the model
never saw? For each text tower (the adapted encoder, all-MiniLM-L6-v2, the raw base LLM, TF-IDF)
a CLIP model is trained with the same clip params, seed and data, then evaluated:
- in-domain: trained on the train split (validated on val), evaluated on the test split;
- cross-site: trained on the train/val studies of every other site, evaluated on every study
  of the held-out site (none of its studies, reports or house style was seen in training).
Every cell carries image->report / report->image R@K, mean recall, chance and a bootstrap 95%
CI of mean recall, so small test pools are read with their uncertainty.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl


@dataclass
class ComparisonCell:
    tower: str
    protocol: str  # "in_domain" or "cross_site:<site>"
    n_train: int
    n_eval: int
    metrics: dict[str, float]
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)

    def row(self) -> dict:
        lo, hi = self.ci.get("mean_recall", (float("nan"), float("nan")))
        return {"tower": self.tower, "protocol": self.protocol, "n_train": self.n_train,
                "n_eval": self.n_eval, **{k: round(v, 4) for k, v in self.metrics.items()},
                "mean_recall_ci_low": round(lo, 4), "mean_recall_ci_high": round(hi, 4)}


def site_table(studies: pl.DataFrame, site_column: str, sites_csv: Path | None,
               study_prefix: str = "") -> pl.DataFrame:
    """study_id -> site, from a studies-table column or a CSV (study_id, site_column).

    `study_prefix` is prepended to the CSV's study ids (the demo's ground-truth CSV uses bare
    ids, the MIMIC-style layout catalogues them as "s<id>").
    """
    if sites_csv is None:
        if site_column not in studies.columns:
            raise ValueError(f"comparison: the studies table has no column {site_column!r} "
                             f"(columns: {', '.join(studies.columns)}); set "
                             "evaluation.comparison.sites_csv to a CSV that has it")
        return studies.select("study_id", pl.col(site_column).cast(pl.String).alias("site"))
    if not Path(sites_csv).is_file():
        raise FileNotFoundError(f"comparison: evaluation.comparison.sites_csv {sites_csv} not found")
    table = pl.read_csv(sites_csv, infer_schema=False)
    missing = {"study_id", site_column} - set(table.columns)
    if missing:
        raise ValueError(f"comparison: {sites_csv} lacks column(s) {sorted(missing)}; "
                         f"it has {', '.join(table.columns)}")
    return table.select((pl.lit(study_prefix) + pl.col("study_id")).alias("study_id"),
                        pl.col(site_column).alias("site")).unique("study_id")


def evaluate_cell(tower: str, protocol: str, n_train: int, image_emb: np.ndarray,
                  text_emb: np.ndarray, texts: list[str], study_ids: list[str], ks: list[int],
                  bootstrap_samples: int, seed: int) -> ComparisonCell:
    """Retrieval metrics (paired protocol and identical-text protocol) with a CI on mean recall."""
    from cxr_assets.evaluate.report import chance_recall, evaluate_pairs
    from cxr_assets.evaluate.robustness import bootstrap_ci, per_query_hits

    evaluation = evaluate_pairs(image_emb, text_emb, texts, study_ids, ks, n_worst=0)
    keep = [f"{d}_R@{k}" for d in ("i2t", "t2i") for k in ks] + [
        "mean_recall", "i2t_median_rank", "t2i_median_rank"]
    metrics = {k: float(evaluation.metrics[k]) for k in keep if k in evaluation.metrics}
    metrics["chance_mean_recall"] = float(np.mean([chance_recall(len(texts), k) for k in ks]))
    hits = per_query_hits(evaluation.i2t_ranks, evaluation.t2i_ranks, list(ks))
    ci = bootstrap_ci({"mean_recall": hits["mean_recall"]}, bootstrap_samples, seed)
    return ComparisonCell(tower, protocol, n_train, len(texts), metrics, ci)


def cross_site_split(pairs: pl.DataFrame, sites: pl.DataFrame, holdout: str
                     ) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(train, val, evaluation) pairs: other sites' train/val studies vs all of `holdout`'s."""
    with_site = pairs.join(sites, on="study_id", how="left")
    unknown = with_site.filter(pl.col("site").is_null())["study_id"].unique()
    if len(unknown):
        raise ValueError(f"comparison: {len(unknown)} studies have no site, e.g. {unknown[0]}")
    other = with_site.filter(pl.col("site") != holdout)
    held = with_site.filter(pl.col("site") == holdout)
    if held.is_empty():
        known = sorted(with_site["site"].unique().to_list())
        raise ValueError(f"comparison: held-out site {holdout!r} has no studies; sites are {known}")
    return (other.filter(pl.col("split") == "train").drop("site"),
            other.filter(pl.col("split") == "val").drop("site"), held.drop("site"))


def comparison_markdown(cells: list[ComparisonCell], ks: list[int], notes: list[str]) -> str:
    """One table per protocol: towers as rows, best mean recall in bold."""
    lines = ["# Text towers compared with the same CLIP budget", ""]
    lines += [f"- {n}" for n in notes] + ([""] if notes else [])
    for protocol in dict.fromkeys(c.protocol for c in cells):
        group = [c for c in cells if c.protocol == protocol]
        best = max(c.metrics.get("mean_recall", float("-inf")) for c in group)
        first = group[0]
        title = ("In-domain (train split -> test split)" if protocol == "in_domain" else
                 f"Cross-site: trained without site `{protocol.split(':', 1)[1]}`, evaluated on all its studies")
        lines += [f"## {title}", "",
                  f"{first.n_eval} evaluation pairs; chance mean recall {first.metrics['chance_mean_recall']:.3f}.", ""]
        heads = ["text tower", "train pairs"] + [f"i2t R@{k}" for k in ks] + [f"t2i R@{k}" for k in ks] + [
            "mean recall (95% CI)"]
        lines += ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
        for c in group:
            mean = c.metrics.get("mean_recall", float("nan"))
            lo, hi = c.ci.get("mean_recall", (float("nan"), float("nan")))
            cell = f"{mean:.3f} ({lo:.3f}-{hi:.3f})"
            cell = f"**{cell}**" if mean == best else cell
            values = [f"{c.metrics.get(f'{d}_R@{k}', float('nan')):.3f}" for d in ("i2t", "t2i") for k in ks]
            lines.append("| " + " | ".join([c.tower, str(c.n_train), *values, cell]) + " |")
        lines.append("")
    return "\n".join(lines)


def plot_comparison(cells: list[ComparisonCell], out_png: Path) -> Path:
    """Grouped bars: mean recall per tower and protocol, CI whiskers, chance as a dashed tick."""
    from cxr_assets.evaluate.plots import _new_figure, _save

    protocols = list(dict.fromkeys(c.protocol for c in cells))
    towers = list(dict.fromkeys(c.tower for c in cells))
    figure = _new_figure(7.2, 4.2)
    axes = figure.add_subplot()
    width = 0.8 / max(len(towers), 1)
    for t, tower in enumerate(towers):
        xs, ys, err = [], [], [[], []]
        for p, protocol in enumerate(protocols):
            cell = next((c for c in cells if c.tower == tower and c.protocol == protocol), None)
            if cell is None:
                continue
            mean = cell.metrics["mean_recall"]
            lo, hi = cell.ci.get("mean_recall", (mean, mean))
            xs.append(p + (t - (len(towers) - 1) / 2) * width)
            ys.append(mean)
            err[0].append(max(mean - lo, 0.0))
            err[1].append(max(hi - mean, 0.0))
        axes.bar(xs, ys, width=width * 0.95, yerr=err, capsize=3, label=tower)
    for p, protocol in enumerate(protocols):
        chance = next(c for c in cells if c.protocol == protocol).metrics["chance_mean_recall"]
        axes.hlines(chance, p - 0.45, p + 0.45, colors="black", linestyles="dashed", linewidth=1)
    axes.set_xticks(range(len(protocols)), [p.replace("cross_site:", "without ") for p in protocols])
    axes.set_ylabel("mean recall (R@K averaged, both directions)")
    axes.set_title("Text towers at the same CLIP budget (dashed: chance)")
    axes.legend(fontsize=8)
    return _save(figure, out_png)


# --------------------------------------------------------------------------- the whole comparison
def comparison_pairs(paths) -> pl.DataFrame:
    """One row per cached image with its study's split and report text (`report`), by study."""
    reports = pl.read_parquet(paths.report_texts_table).select(
        "study_id", pl.col("report_for_training").fill_null("").alias("report"))
    return (pl.read_parquet(paths.study_images_table).select("image_id", "study_id", "view_position", "cache_path")
            .join(pl.read_parquet(paths.splits_table).select("study_id", "split"), on="study_id")
            .join(reports, on="study_id").sort("study_id", "image_id"))


def train_and_embed(params, paths, train: pl.DataFrame, val: pl.DataFrame, held: pl.DataFrame,
                    emb: dict[str, np.ndarray], progress: bool, threads: int | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Train CLIP on (train, val) rows and embed the held-out rows' images and reports.

    Same budget and in-batch positives (clip.positives) as clip_model, so towers differ only
    in their report embeddings (`emb`: study_id -> report embedding). `threads`: instead of
    clip.threads (a worker process's share).
    """
    import torch

    from cxr_assets.clip.pairs import positive_keys
    from cxr_assets.clip.train import train_clip
    from cxr_assets.embed.images import embed_images, embed_texts

    c = params.clip
    if threads is not None:
        torch.set_num_threads(threads)
    budget = c.model_copy(update={
        "threads": threads or c.threads,
        "text_tower": "cached", "epochs": params.evaluation.comparison.epochs or c.epochs,
        "distributed": c.distributed.model_copy(update={"nproc_per_node": 1}),
        "checkpoint": c.checkpoint.model_copy(update={"every_n_steps": 0, "resume": False})})

    def rows(frame: pl.DataFrame) -> np.ndarray:
        return np.stack([emb[s] for s in frame["study_id"].to_list()]) if frame.height else \
            np.zeros((0, len(next(iter(emb.values())))), np.float32)

    result = train_clip([Path(p) for p in train["cache_path"]], rows(train),
                        [Path(p) for p in val["cache_path"]], rows(val), budget,
                        text_encoder_hash="comparison", seed=params.project.seed, progress=progress,
                        train_groups=positive_keys(train, c.positives, paths),
                        val_groups=positive_keys(val, c.positives, paths))
    images = embed_images(result.model, [Path(p) for p in held["cache_path"]], progress=False)
    return images, embed_texts(result.model, rows(held))


def compare_towers(params, paths, pairs: pl.DataFrame, studies: pl.DataFrame,
                   embeddings: dict[str, dict[str, np.ndarray]], progress: bool
                   ) -> tuple[list[ComparisonCell], list[str]]:
    """Every tower in-domain, then (evaluation.comparison.cross_site) without each held-out
    site: (cells, notes). `pairs` from `comparison_pairs`, `studies` one row per study of them,
    `embeddings` tower -> study_id -> report embedding. The in-domain `adapted` row is the
    clip_model of this run itself, scored on evaluation_report's test pool."""
    from cxr_assets.clip.pairs import one_image_per_study, test_pool

    cfg, ev = params.evaluation.comparison, params.evaluation
    seed, ks = params.project.seed, list(ev.recall_at)

    def cell(tower, protocol, n_train, held, image_emb, text_emb):
        return evaluate_cell(tower, protocol, n_train, image_emb, text_emb, held["report"].to_list(),
                             held["study_id"].to_list(), ks, ev.bootstrap_samples, seed)

    budget = (f"CLIP budget: {cfg.epochs or params.clip.epochs} epochs, batch "
              f"{params.clip.batch_size}, lr {params.clip.lr}, backbone "
              f"{params.clip.vision_backbone} at {params.clip.image_size} px, seed {seed}")
    cells, notes = [], [budget]
    train, val = pairs.filter(pl.col("split") == "train"), pairs.filter(pl.col("split") == "val")
    test = one_image_per_study(pairs.filter(pl.col("split") == "test"))
    # Every CLIP to train: (tower, protocol, train rows, val rows, held-out rows).
    jobs = [(tower, "in_domain", train, val, test) for tower in cfg.text_towers
            if tower != "adapted"]
    if "adapted" in cfg.text_towers:  # the clip_model of this run, on evaluation_report's pool
        pool = test_pool(paths).rename({"report_for_training": "report"})
        cells.append(cell("adapted", "in_domain", train.height, pool,
                          np.asarray(pool["image_embedding"].to_list(), np.float32),
                          np.asarray(pool["report_embedding"].to_list(), np.float32)))

    if cfg.cross_site:
        sites_csv = paths.at(cfg.sites_csv) if cfg.sites_csv else None
        sites = site_table(pl.read_parquet(paths.catalog_dir / "studies.parquet"), cfg.site_column,
                           sites_csv, cfg.sites_csv_study_prefix)
        present = sorted(set(sites.join(studies, on="study_id")["site"].drop_nulls().to_list()))
        holdouts = cfg.holdout_sites or present
        if len(present) < 2:
            notes.append(f"cross-site skipped: one site only ({present}) in column {cfg.site_column!r}")
            holdouts = []
        for site in holdouts:
            site_train, site_val, held = cross_site_split(pairs, sites, site)
            held = one_image_per_study(held)
            jobs += [(tower, f"cross_site:{site}", site_train, site_val, held)
                     for tower in cfg.text_towers]
    trained = train_side_by_side(
        params, paths, [(train_rows, val_rows, held, embeddings[tower])
                        for tower, _, train_rows, val_rows, held in jobs], cfg.workers, progress)
    for (tower, protocol, train_rows, _, held), (image_emb, text_emb) in zip(jobs, trained):
        cells.append(cell(tower, protocol, train_rows.height, held, image_emb, text_emb))
    order = {tower: i for i, tower in enumerate(cfg.text_towers)}  # rows by protocol, then tower
    protocols = list(dict.fromkeys(["in_domain", *(protocol for _, protocol, *_ in jobs)]))
    cells.sort(key=lambda c: (protocols.index(c.protocol), order[c.tower]))
    if cfg.workers > 1 and len(jobs) > 1:
        notes.append(f"{len(jobs)} CLIPs trained {min(cfg.workers, len(jobs))} at a time, "
                     f"{max(1, params.clip.threads // cfg.workers)} thread(s) each")
    return cells, notes


def _train_job(args: tuple) -> tuple[np.ndarray, np.ndarray]:
    """One CLIP of `train_side_by_side` (module level: a spawned worker process imports it)."""
    params, paths, train, val, held, emb, threads = args
    return train_and_embed(params, paths, train, val, held, emb, progress=False, threads=threads)


def train_side_by_side(params, paths, jobs: list[tuple], workers: int, progress: bool
                       ) -> list[tuple[np.ndarray, np.ndarray]]:
    """`train_and_embed` for each (train, val, held, embeddings) job, in order: here one by one,
    or `workers` at a time in spawned processes sharing clip.threads between them."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from tqdm.auto import tqdm

    workers = min(workers, len(jobs))
    if workers <= 1:
        return [train_and_embed(params, paths, train, val, held, emb, progress)
                for train, val, held, emb in jobs]
    threads = max(1, params.clip.threads // workers)
    args = [(params, paths, train, val, held, emb, threads) for train, val, held, emb in jobs]
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        return list(tqdm(pool.map(_train_job, args), total=len(args), disable=not progress,
                         desc=f"comparison CLIPs ({workers} at a time)", unit="CLIP"))


def cell_metrics(cells: list[ComparisonCell]) -> dict[str, float]:
    """metrics.json of the comparison: `<protocol>/<tower>/mean_recall` per cell."""
    return {f"{c.protocol.replace(':', '_')}/{c.tower}/mean_recall": round(c.metrics["mean_recall"], 6)
            for c in cells}


def adapted_wins(cells: list[ComparisonCell]) -> tuple[int, int]:
    """(protocols where the adapted tower beats every baseline, protocols with both)."""
    adapted = {c.protocol: c.metrics["mean_recall"] for c in cells if c.tower == "adapted"}
    best_other: dict[str, float] = {}
    for c in cells:
        if c.tower != "adapted":
            best_other[c.protocol] = max(best_other.get(c.protocol, float("-inf")), c.metrics["mean_recall"])
    compared = [p for p in adapted if p in best_other]
    return sum(adapted[p] > best_other[p] for p in compared), len(compared)
