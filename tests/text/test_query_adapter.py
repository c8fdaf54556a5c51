"""Query adapter: pairs from reports, the fit moves queries to their reports, storage and hashing."""

from __future__ import annotations

import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from cxr_assets.text.query_adapter import (
    QUERY_ADAPTER_FILE,
    QueryAdapter,
    fit_query_adapter,
    positives,
    query_pairs,
    report_clauses,
)

SETTINGS = SimpleNamespace(rank=24, steps=300, batch_size=64, lr=3e-3, weight_decay=1e-4,
                           loss_scale=20.0, per_report=2)


def test_report_clauses_are_short_lowercased_clauses() -> None:
    report = ("Heart size is normal. Small left pleural effusion, adjacent atelectasis; no "
              "pneumothorax. Normal. The lungs are otherwise clear without any focal consolidation "
              "or effusion seen today.")
    assert report_clauses(report) == [
        "heart size is normal", "small left pleural effusion", "adjacent atelectasis",
        "no pneumothorax"]


def test_positives_are_the_reports_containing_the_query() -> None:
    reports = ["Small left effusion. No pneumothorax.", "No pneumothorax.", "Cardiomegaly."]
    mask = positives(reports, [(0, "no pneumothorax"), (2, "Cardiomegaly."), (1, "absent words")])
    assert mask.tolist() == [[True, True, False], [False, False, True], [False, True, False]]


def test_query_pairs_hold_clauses_and_finding_statements() -> None:
    from cxr_assets.demo.generate import sample_reports

    reports = sample_reports(30, 5)
    pairs = query_pairs(reports, seed=1)
    assert pairs == query_pairs(reports, seed=1)  # reproducible
    clauses = [(i, q) for i, q in pairs if q in report_clauses(reports[i])]
    statements = [(i, q) for i, q in pairs if (i, q) not in clauses]
    assert clauses and statements
    assert all(q.endswith(".") for _, q in statements)  # "Small left pleural effusion."


class _ShiftedQueries:
    """A stand-in encoder: bag-of-words vectors, but every query-length text (<= 10 words) comes
    out through a fixed random rotation, so queries sit away from their reports until adapted."""

    def __init__(self, dim: int = 48) -> None:
        rng = np.random.default_rng(0)
        self.dim = dim
        self.rotation = np.linalg.qr(rng.normal(size=(dim, dim)))[0].astype(np.float32)

    def _words(self, text: str) -> np.ndarray:
        v = np.zeros(self.dim, dtype=np.float32)
        for word in text.lower().replace(".", " ").replace(",", " ").split():
            v[zlib.crc32(word.encode()) % self.dim] += 1.0
        return v

    def encode(self, texts, batch_size=16, progress=False) -> np.ndarray:
        out = np.stack([self._words(t) for t in texts]) if texts else np.zeros((0, self.dim))
        short = np.array([len(t.split()) <= 10 for t in texts])
        out[short] = out[short] @ self.rotation
        return out.astype(np.float32)


def test_fit_moves_held_aside_queries_to_their_reports() -> None:
    from cxr_assets.demo.generate import sample_reports

    reports = sample_reports(150, 2)
    fit = fit_query_adapter(_ShiftedQueries(), reports, SETTINGS, seed=0)
    assert fit.n_reports == len(set(reports)) and fit.n_pairs > fit.n_reports
    assert fit.losses[-1] < fit.losses[0]
    # Pairs never trained on: their queries now find a report that contains them.
    assert fit.heldout_hit_at_10_after > fit.heldout_hit_at_10_before + 0.15, fit


def test_fit_refuses_too_few_reports_and_a_rank_at_the_dim() -> None:
    from cxr_assets.demo.generate import sample_reports

    with pytest.raises(ValueError, match="at least 10 distinct training reports"):
        fit_query_adapter(_ShiftedQueries(), ["No acute findings."] * 20, SETTINGS, seed=0)
    with pytest.raises(ValueError, match="rank 48 must be below the embedding dim 48"):
        fit_query_adapter(_ShiftedQueries(), sample_reports(20, 2),
                          SimpleNamespace(**{**vars(SETTINGS), "rank": 48}), seed=0)


def test_adapter_starts_as_identity_and_round_trips(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 12)).astype(np.float32)
    identity = QueryAdapter(rng.normal(size=(12, 3)), np.zeros((3, 12)))
    np.testing.assert_allclose(identity(x), x / np.linalg.norm(x, axis=1, keepdims=True), rtol=1e-6)
    adapter = QueryAdapter(rng.normal(size=(12, 3)), rng.normal(size=(3, 12)), {"steps": 5})
    adapter.save(tmp_path / QUERY_ADAPTER_FILE)
    loaded = QueryAdapter.load(tmp_path / QUERY_ADAPTER_FILE)
    assert loaded.info == {"steps": 5} and loaded.rank == 3
    np.testing.assert_array_equal(loaded(x), adapter(x))
    with pytest.raises(ValueError, match="fitted for dim 12"):
        adapter(np.zeros((2, 5), dtype=np.float32))
    with pytest.raises(ValueError, match="down \\[dim, rank\\] and up \\[rank, dim\\]"):
        QueryAdapter(np.zeros((12, 3)), np.zeros((4, 12)))


def test_encoder_stores_and_applies_its_adapter(tiny_dir: Path, reports, tmp_path: Path) -> None:
    from cxr_assets.text.encoder import TextEncoder

    encoder = TextEncoder.from_base(tiny_dir, pooling="mean", max_length=48)
    np.testing.assert_array_equal(encoder.encode_queries(reports[:3]),
                                  encoder.encode(reports[:3], progress=False))  # no adapter
    encoder.save_pretrained(tmp_path / "plain")
    plain_hash = encoder.content_hash
    rng = np.random.default_rng(2)
    encoder.query_adapter = QueryAdapter(rng.normal(size=(encoder.dim, 4)),
                                         rng.normal(size=(4, encoder.dim)))
    encoder.save_pretrained(tmp_path / "adapted")
    assert encoder.content_hash != plain_hash  # the adapter is part of what the encoder computes
    loaded = TextEncoder.from_pretrained(tmp_path / "adapted", threads=1)
    assert loaded.query_adapter is not None and loaded.content_hash == encoder.content_hash
    documents = loaded.encode(reports[:3], progress=False)
    np.testing.assert_allclose(loaded.encode_queries(reports[:3]), encoder.query_adapter(documents),
                               rtol=1e-5, atol=1e-6)
    assert not np.allclose(loaded.encode_queries(reports[:3]), documents)
    with pytest.raises(ValueError, match="query adapter dim 7 != the encoder's"):
        TextEncoder(loaded.model, loaded.tokenizer, "mean", bidirectional=False,
                    query_adapter=QueryAdapter(np.zeros((7, 2)), np.zeros((2, 7))))
