"""Report-embedding cache keyed by (text hash, encoder hash).

Re-materializing report_embeddings with unchanged reports and an unchanged encoder encodes
nothing; a changed report re-encodes only that report.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import polars as pl


def text_hash(text: str, instruction: str | None) -> str:
    payload = f"{instruction or ''}\x00{text}".encode()
    return hashlib.sha256(payload).hexdigest()[:32]


class EmbeddingCache:
    """One Parquet file per encoder hash: text_hash -> float32 vector."""

    def __init__(self, cache_dir: Path, encoder_hash: str):
        self.file = Path(cache_dir) / f"{encoder_hash}.parquet"
        self._vectors: dict[str, np.ndarray] = {}
        if self.file.exists():
            frame = pl.read_parquet(self.file)
            for key, vec in zip(frame["text_hash"], frame["embedding"]):
                self._vectors[key] = np.asarray(vec, dtype=np.float32)

    def __len__(self) -> int:
        return len(self._vectors)

    def missing(self, keys: list[str]) -> list[str]:
        return [k for k in dict.fromkeys(keys) if k not in self._vectors]

    def add(self, keys: list[str], vectors: np.ndarray) -> None:
        for key, vec in zip(keys, vectors):
            self._vectors[key] = np.asarray(vec, dtype=np.float32)

    def get(self, keys: list[str]) -> np.ndarray:
        return np.stack([self._vectors[k] for k in keys]).astype(np.float32)

    def save(self) -> None:
        self.file.parent.mkdir(parents=True, exist_ok=True)
        keys = list(self._vectors)
        frame = pl.DataFrame({"text_hash": keys, "embedding": [self._vectors[k].tolist() for k in keys]})
        tmp = self.file.with_name(f".{self.file.name}.tmp")
        frame.write_parquet(tmp)
        os.replace(tmp, self.file)


def encode_with_cache(encoder, texts: list[str], instruction: str | None, cache_dir: Path,
                      batch_size: int = 16, progress: bool = True) -> tuple[np.ndarray, int]:
    """Embeddings for `texts` (input order) and how many had to be computed."""
    cache = EmbeddingCache(cache_dir, encoder.content_hash)
    keys = [text_hash(t, instruction) for t in texts]
    todo = cache.missing(keys)
    if todo:
        by_key = {k: t for k, t in zip(keys, texts)}
        vectors = encoder.encode([by_key[k] for k in todo], instruction=instruction,
                                 batch_size=batch_size, progress=progress)
        cache.add(todo, vectors)
        cache.save()
    return cache.get(keys), len(todo)
