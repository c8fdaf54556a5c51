"""Search quality: do finding queries return studies that have the finding? (precision@5)

What a user types into `cxr search` is a short finding ("large right pleural effusion"), not a
report. For 20 such queries (side and size where they apply), each search path returns its top 5
studies, and a returned study counts as relevant when the project labeler found the query's
observation positive in that study's report (`report_labels.parquet`). Paths, side by side:

- text -> reports, report encoder: the query (`encode_queries`: with the encoder's query adapter,
  and apart without it) and the reports in the text encoder's own space (artifacts/text_encoder,
  post-processed, `report_embeddings.parquet`), and the same with all-MiniLM-L6-v2 (the baseline
  the adapted encoder must beat);
- text -> reports, CLIP: the query through CLIP's text side against `report_embedding`;
- text -> studies: the query through CLIP's text side against the image embeddings (what
  `cxr search "..."` answers); its bar is twice the finding's base rate.

Needs a finished pipeline run in the project (`make run`); CXR_PROJECT_ROOT picks another one.
Writes benchmarks/results/search_quality.json.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
K = 5
QUERIES: tuple[tuple[str, str], ...] = (
    ("large right pleural effusion", "Pleural Effusion"),
    ("small left pleural effusion", "Pleural Effusion"),
    ("bilateral pleural effusions", "Pleural Effusion"),
    ("moderate cardiomegaly", "Cardiomegaly"),
    ("enlarged cardiac silhouette", "Cardiomegaly"),
    ("right pneumothorax", "Pneumothorax"),
    ("small left apical pneumothorax", "Pneumothorax"),
    ("pulmonary edema", "Edema"),
    ("mild interstitial edema", "Edema"),
    ("right lower lobe pneumonia", "Pneumonia"),
    ("left lower lobe consolidation", "Consolidation"),
    ("focal consolidation in the right upper lobe", "Consolidation"),
    ("bibasilar atelectasis", "Atelectasis"),
    ("left basilar atelectasis", "Atelectasis"),
    ("pulmonary nodule", "Lung Lesion"),
    ("right upper lobe mass", "Lung Lesion"),
    ("patchy airspace opacity", "Lung Opacity"),
    ("endotracheal tube in place", "Support Devices"),
    ("right PICC line", "Support Devices"),
    ("pacemaker leads", "Support Devices"),
)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def precision_at_k(queries: np.ndarray, docs: np.ndarray, relevant: np.ndarray, k: int = K
                   ) -> np.ndarray:
    """Per query: share of its top-k documents (cosine) that are relevant ([Q, N] bool)."""
    scores = _unit(queries) @ _unit(docs).T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(relevant, top, axis=1).mean(axis=1)


def measure(root: Path) -> dict:
    import polars as pl
    import torch

    from cxr_assets.config import load_params
    from cxr_assets.embed.search import LocalEncoder
    from cxr_assets.paths import ProjectPaths
    from cxr_assets.text.baselines import MiniLMEncoder
    from cxr_assets.text.encoder import TextEncoder

    params = load_params(root / "params.yaml")
    paths = ProjectPaths.from_params(params, root)
    studies = pl.read_parquet(paths.artifacts_dir / "study_embeddings.parquet").unique(
        "study_id", keep="first", maintain_order=True)
    labels = pl.read_parquet(paths.catalog_dir / "report_labels.parquet")
    frame = studies.join(labels, on="study_id", how="left")
    reports = pl.read_parquet(paths.artifacts_dir / "report_embeddings.parquet").select(
        "study_id", pl.col("embedding").alias("encoder_embedding"))
    frame = frame.join(reports, on="study_id", how="left")
    missing = frame["encoder_embedding"].is_null().sum()
    if missing:
        raise ValueError(f"{missing} studies of study_embeddings have no report embedding")
    relevant = np.stack([(frame[obs] == 1.0).fill_null(False).to_numpy() for _, obs in QUERIES])
    base_rate = relevant.mean(axis=1)
    texts = [q for q, _ in QUERIES]

    encoder = TextEncoder.from_pretrained(paths.text_encoder_dir)
    report_vectors = np.stack(frame["encoder_embedding"].to_list())
    clip = LocalEncoder(paths.text_encoder_dir, paths.clip_model_dir)
    minilm = MiniLMEncoder()
    torch.set_num_threads(2)
    start = time.perf_counter()
    report_texts = frame["report_text"].to_list()
    rows = {
        "text->reports (report encoder)": precision_at_k(
            encoder.encode_queries(texts), report_vectors, relevant),
        "text->reports (report encoder, no query adapter)": precision_at_k(
            encoder.encode(texts, progress=False), report_vectors, relevant),
        "text->reports (MiniLM)": precision_at_k(
            minilm.encode(texts, progress=False), minilm.encode(report_texts, progress=False),
            relevant),
        "text->reports (CLIP)": precision_at_k(
            clip.embed_texts(texts), np.stack(frame["report_embedding"].to_list()), relevant),
        "text->studies (CLIP image side)": precision_at_k(
            clip.embed_texts(texts), np.stack(frame["image_embedding"].to_list()), relevant),
    }
    per_query = [
        {"query": q, "observation": obs, "base_rate": round(float(base_rate[i]), 4),
         **{name: round(float(values[i]), 3) for name, values in rows.items()}}
        for i, (q, obs) in enumerate(QUERIES)
    ]
    return {
        "project": str(root), "n_studies": frame.height, "k": K, "n_queries": len(QUERIES),
        "text_encoder": encoder.content_hash, "clip_model_version": clip.version,
        "query_adapter": repr(encoder.query_adapter),
        "mean_base_rate": round(float(base_rate.mean()), 4),
        "precision_at_5": {name: round(float(values.mean()), 4) for name, values in rows.items()},
        "seconds": round(time.perf_counter() - start, 1),
        "per_query": per_query,
    }


def main() -> None:
    root = Path(os.environ.get("CXR_PROJECT_ROOT") or HERE.parent).resolve()
    result = measure(root)
    sys.path.insert(0, str(HERE))
    from provenance import provenance

    result["provenance"] = provenance()
    print(f"{result['n_queries']} finding queries, precision@{K} over {result['n_studies']} studies "
          f"(mean base rate {result['mean_base_rate']:.3f}; targets: text->reports >= 0.8, "
          f"text->studies >= 2x base rate = {2 * result['mean_base_rate']:.3f})")
    for name, value in result["precision_at_5"].items():
        print(f"  {name:<50}{value:.3f}")
    out = HERE / "results" / "search_quality.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    main()
