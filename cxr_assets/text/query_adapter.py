"""Query adapter: a small map that moves short search queries into the reports' embedding space.

What users type into a search box ("pacemaker leads", "right upper lobe mass") is two to six
words; the encoder was trained on report-to-report and statement pairs, so a short query's
embedding still sits near reports that share its *words* (a left upper lobe pneumonia for "right
upper lobe mass") rather than its finding. This module fits, on frozen embeddings, a low-rank
residual map applied to the query side only:

    q' = u + (u @ down) @ up,   u = q / |q|

Training pairs come from the training reports themselves, with no labels: each report's short
clauses ("left-sided pacemaker generator with intact leads") and the labeler-checked statements
of its findings in its own words ("Right upper lobe nodule.", text/statements.py) are queries,
and every training report that contains the query's text is its positive (a soft target over
them), against all other training reports. Document embeddings never change, so report vectors
already stored (report_embeddings, the search table) stay valid; the adapter is stored beside
the encoder (`query_adapter.safetensors`, part of its content hash) and applied by
`TextEncoder.encode_queries`. Measured on the demo-style search proxy (20 finding queries, 600
reports): precision@5 0.55 -> 0.76-0.82 with release v6 (see the README's search section).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

QUERY_ADAPTER_FILE = "query_adapter.safetensors"
# A clause is query-like when it has this many words (shorter: a fragment; longer: a sentence).
CLAUSE_WORDS = (2, 10)
MIN_REPORTS = 10  # fewer distinct training reports: no adapter is fitted (the stage notes why)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class QueryAdapter:
    """q -> unit(q) + unit(q) @ down @ up (float32 [N, dim] in and out, output not normalised)."""

    def __init__(self, down: np.ndarray, up: np.ndarray, info: dict[str, Any] | None = None) -> None:
        down = np.asarray(down, dtype=np.float32)
        up = np.asarray(up, dtype=np.float32)
        if down.ndim != 2 or up.ndim != 2 or down.shape[1] != up.shape[0] or down.shape[0] != up.shape[1]:
            raise ValueError(f"query adapter needs down [dim, rank] and up [rank, dim], got "
                             f"{down.shape} and {up.shape}")
        if not (np.all(np.isfinite(down)) and np.all(np.isfinite(up))):
            raise ValueError("query adapter weights must be finite")
        self.down, self.up, self.info = down, up, dict(info or {})

    @property
    def dim(self) -> int:
        return int(self.down.shape[0])

    @property
    def rank(self) -> int:
        return int(self.down.shape[1])

    def __repr__(self) -> str:
        return f"QueryAdapter(dim={self.dim}, rank={self.rank})"

    def __call__(self, vectors: np.ndarray) -> np.ndarray:
        x = np.asarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"query adapter fitted for dim {self.dim}, got embeddings {x.shape}")
        u = _unit(x)
        return (u + (u @ self.down) @ self.up).astype(np.float32)

    def save(self, file: Path) -> None:
        from safetensors.numpy import save_file

        from cxr_assets.text.postprocess import single_key_metadata

        save_file({"down": self.down, "up": self.up}, str(file),
                  metadata=single_key_metadata("query_adapter", self.info))

    @classmethod
    def load(cls, file: Path) -> QueryAdapter:
        from safetensors import safe_open
        from safetensors.numpy import load_file

        from cxr_assets.text.postprocess import read_single_key_metadata

        file = Path(file)
        if not file.is_file():
            raise FileNotFoundError(f"{file}: query adapter missing")
        with safe_open(str(file), "np") as handle:
            info = read_single_key_metadata(handle.metadata(), "query_adapter")
        tensors = load_file(str(file))
        if {"down", "up"} - set(tensors):
            raise ValueError(f"{file}: needs tensors 'down' and 'up', has {sorted(tensors)}")
        return cls(tensors["down"], tensors["up"], info)


def load_query_adapter(folder: Path) -> QueryAdapter | None:
    """The adapter stored in an encoder or release folder, or None when it has none."""
    file = Path(folder) / QUERY_ADAPTER_FILE
    return QueryAdapter.load(file) if file.is_file() else None


def report_clauses(report: str) -> list[str]:
    """A report's query-like clauses, lower-cased: sentences split at ',' and ';', each of
    CLAUSE_WORDS words."""
    out = []
    for sentence in re.split(r"(?<=[.;])\s+", report):
        for clause in re.split(r"[,;]\s+", sentence.strip(" .;")):
            words = clause.split()
            if CLAUSE_WORDS[0] <= len(words) <= CLAUSE_WORDS[1]:
                out.append(" ".join(words).lower())
    return out


def query_pairs(reports: list[str], seed: int, per_report: int = 2) -> list[tuple[int, str]]:
    """(report index, query) pairs: up to `per_report` clauses of each report and up to
    `per_report` statements of its findings in its own words (labeler-checked)."""
    from cxr_assets.text.statements import finding_statement_pairs

    pairs: list[tuple[int, str]] = []
    for index, report in enumerate(reports):
        clauses = report_clauses(report)
        rng = random.Random(f"{seed}:{index}")
        pairs += [(index, c) for c in rng.sample(clauses, min(per_report, len(clauses)))]
    statements, _, _ = finding_statement_pairs(reports, seed, per_report=per_report,
                                               phrasing="report_words")
    first = {}
    for index, report in enumerate(reports):
        first.setdefault(report, index)
    pairs += [(first[report], text) for report, text in statements]
    return pairs


def positives(reports: list[str], pairs: list[tuple[int, str]]) -> np.ndarray:
    """[n_pairs, n_reports] bool: a report is a positive of a query when it contains the query's
    text (case-insensitive), and always for the report the query came from."""
    lowered = [" ".join(r.split()).lower() for r in reports]
    mask = np.zeros((len(pairs), len(reports)), dtype=bool)
    for row, (index, text) in enumerate(pairs):
        key = text.lower().strip(" .")
        mask[row] = [key in report for report in lowered]
        mask[row, index] = True
    return mask


@dataclass(frozen=True)
class QueryAdapterFit:
    adapter: QueryAdapter
    n_reports: int
    n_pairs: int
    losses: list[float]
    # Held-aside query pairs (a tenth, never trained on): share whose top-10 holds a positive.
    heldout_hit_at_10_before: float
    heldout_hit_at_10_after: float
    # The distinct reports fitted against and their embeddings (`encoder.encode`, no
    # instruction): report_embeddings takes them from the cache instead of encoding them again.
    reports: list[str] = field(default_factory=list)
    report_vectors: np.ndarray | None = None


def _hit_at_10(queries: np.ndarray, docs: np.ndarray, mask: np.ndarray) -> float:
    if len(queries) == 0:
        return float("nan")
    top = np.argsort(-(_unit(queries) @ _unit(docs).T), axis=1, kind="stable")[:, :10]
    return float(np.take_along_axis(mask, top, axis=1).any(axis=1).mean())


def fit_query_adapter(encoder: Any, reports: list[str], settings: Any, seed: int,
                      batch_size: int = 16, progress: bool = False,
                      docs: np.ndarray | None = None) -> QueryAdapterFit:
    """Fit an adapter on `encoder`'s embeddings of `reports` (training reports) and their query
    pairs. `settings`: rank, steps, batch_size, lr, weight_decay, loss_scale, per_report
    (config.QueryAdapterParams). A tenth of the query pairs is held aside to measure the fit.
    `docs`: `encoder.encode(reports)` when the caller has it already (`reports` then distinct)."""
    import torch

    distinct = list(dict.fromkeys(r for r in reports if isinstance(r, str) and r.strip()))
    if docs is not None and (distinct != list(reports) or len(docs) != len(reports)):
        raise ValueError("query adapter: precomputed docs need distinct non-empty reports, one "
                         f"row each ({len(reports)} reports, {len(docs)} rows)")
    reports = distinct
    if len(reports) < MIN_REPORTS:
        raise ValueError(f"query adapter: needs at least {MIN_REPORTS} distinct training reports, "
                         f"got {len(reports)}")
    pairs = query_pairs(reports, seed, settings.per_report)
    if len(pairs) < 10:
        raise ValueError(f"query adapter: only {len(pairs)} query pairs from {len(reports)} reports "
                         "(reports without short clauses or labeled findings)")
    if docs is None:
        docs = encoder.encode(reports, batch_size=batch_size, progress=progress)
    if not 1 <= settings.rank < docs.shape[1]:
        raise ValueError(f"query adapter rank {settings.rank} must be below the embedding dim "
                         f"{docs.shape[1]}")
    queries = encoder.encode([q for _, q in pairs], batch_size=batch_size, progress=progress)
    mask = positives(reports, pairs)
    aside = np.array([random.Random(f"{seed}:aside:{i}").random() < 0.1 for i, _ in pairs])

    generator = torch.Generator().manual_seed(seed)
    dim, rank = docs.shape[1], settings.rank
    down = torch.nn.Parameter(torch.randn(dim, rank, generator=generator) * 0.01)
    up = torch.nn.Parameter(torch.zeros(rank, dim))  # starts as the identity map
    train_q = torch.from_numpy(_unit(queries[~aside]))
    docs_t = torch.from_numpy(_unit(docs))
    target = torch.from_numpy(mask[~aside].astype(np.float32))
    target = target / target.sum(dim=1, keepdim=True)
    optimizer = torch.optim.AdamW([down, up], lr=settings.lr, weight_decay=0.0)
    losses = []
    for _ in range(settings.steps):
        batch = torch.randint(0, len(train_q), (settings.batch_size,), generator=generator)
        q = train_q[batch]
        moved = torch.nn.functional.normalize(q + (q @ down) @ up, dim=1)
        log_p = torch.log_softmax(settings.loss_scale * moved @ docs_t.T, dim=1)
        loss = -(target[batch] * log_p).sum(dim=1).mean()
        penalty = settings.weight_decay * ((down ** 2).sum() + (up ** 2).sum())
        optimizer.zero_grad()
        (loss + penalty).backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    from cxr_assets.text.postprocess import round_to_fp16_precision as rounded

    # Rounded like the post-processing statistics: last-bit noise does not change the hash.
    adapter = QueryAdapter(rounded(down.detach().numpy()), rounded(up.detach().numpy()),
                           {"n_reports": len(reports), "n_pairs": len(pairs), "steps": settings.steps,
                            "seed": seed})
    return QueryAdapterFit(
        adapter, len(reports), len(pairs), losses,
        _hit_at_10(queries[aside], docs, mask[aside]),
        _hit_at_10(adapter(queries[aside]), docs, mask[aside]),
        reports, docs,
    )
