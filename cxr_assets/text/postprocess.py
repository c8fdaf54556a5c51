"""Embedding post-processing: centering and per-dimension scaling, fitted on training reports.

A decoder LLM's mean-pooled states are dominated by a few outlier dimensions (on SmolLM2-135M
five of 576 carry most of the mean vector's energy), so every pair of reports has a cosine near
0.9 and retrieval ranks on a thin margin. Subtracting the training-report mean and dividing each
dimension by its standard deviation (a diagonal whitening) spreads the cosines out. The statistics
are fitted on training reports only, stored beside the encoder (`postprocess.safetensors`) and
applied by `TextEncoder.encode`, so every consumer embeds the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

POSTPROCESS_FILE = "postprocess.safetensors"
METHODS = ("center_scale", "center")


class EmbeddingPostprocess:
    """y = (x - mean) / scale, per dimension; `scale` is 1 for method 'center'."""

    def __init__(self, mean: np.ndarray, scale: np.ndarray, method: str, n_fit: int) -> None:
        if method not in METHODS:
            raise ValueError(f"post-processing method must be one of {METHODS}, got {method!r}")
        mean = np.asarray(mean, dtype=np.float32).reshape(-1)
        scale = np.asarray(scale, dtype=np.float32).reshape(-1)
        if mean.shape != scale.shape:
            raise ValueError(f"mean {mean.shape} and scale {scale.shape} differ in size")
        if not np.all(np.isfinite(mean)) or not np.all(scale > 0):
            raise ValueError("post-processing statistics must be finite with a positive scale")
        self.mean, self.scale, self.method, self.n_fit = mean, scale, method, int(n_fit)

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def __repr__(self) -> str:
        return f"EmbeddingPostprocess({self.method}, dim={self.dim}, fitted on {self.n_fit})"

    @classmethod
    def fit(cls, vectors: np.ndarray, method: str = "center_scale") -> EmbeddingPostprocess:
        """Statistics of `vectors` [N, D] (N >= 2): mean, and std (floored) for center_scale."""
        x = np.asarray(vectors, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] < 2:
            raise ValueError(f"post-processing needs at least 2 embeddings [N, D], got {x.shape}")
        mean = x.mean(axis=0)
        if method == "center":
            scale = np.ones_like(mean)
        else:
            std = x.std(axis=0)
            # Floor: a dimension that never varies must not be blown up into noise.
            scale = np.maximum(std, 1e-3 * max(float(np.median(std)), 1e-12))
        # Stored at fp16's precision: last-bit noise of the encode kernels then does not change
        # the saved bytes (nor the encoder's content hash) from one identical run to the next.
        return cls(round_to_fp16_precision(mean), round_to_fp16_precision(scale), method,
                   x.shape[0])

    def __call__(self, vectors: np.ndarray) -> np.ndarray:
        x = np.asarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"post-processing fitted for dim {self.dim}, got embeddings {x.shape}")
        return ((x - self.mean) / self.scale).astype(np.float32)

    def save(self, file: Path) -> None:
        from safetensors.numpy import save_file

        save_file({"mean": self.mean, "scale": self.scale}, str(file),
                  metadata=single_key_metadata("postprocess",
                                               {"method": self.method, "n_fit": self.n_fit}))

    @classmethod
    def load(cls, file: Path) -> EmbeddingPostprocess:
        from safetensors import safe_open
        from safetensors.numpy import load_file

        file = Path(file)
        if not file.is_file():
            raise FileNotFoundError(f"{file}: post-processing statistics missing")
        with safe_open(str(file), "np") as handle:
            meta = read_single_key_metadata(handle.metadata(), "postprocess")
        tensors = load_file(str(file))
        if {"mean", "scale"} - set(tensors):
            raise ValueError(f"{file}: needs tensors 'mean' and 'scale', has {sorted(tensors)}")
        return cls(tensors["mean"], tensors["scale"], meta.get("method", "center_scale"),
                   int(meta.get("n_fit", 0)))


def single_key_metadata(key: str, values: dict[str, Any]) -> dict[str, str]:
    """safetensors metadata as one JSON entry: the library writes a metadata map in a random
    key order, so two or more keys would make identical files differ in bytes (and hash)."""
    import json

    return {key: json.dumps(values, sort_keys=True)}


def read_single_key_metadata(meta: dict[str, str] | None, key: str) -> dict[str, Any]:
    """Read what single_key_metadata wrote (or, for older files, the flat string map)."""
    import json

    meta = meta or {}
    return json.loads(meta[key]) if key in meta else dict(meta)


def round_to_fp16_precision(values: np.ndarray) -> np.ndarray:
    """Keep 11 significant bits (fp16's precision, at any magnitude)."""
    mantissa, exponent = np.frexp(np.asarray(values, dtype=np.float64))
    return np.ldexp(np.round(mantissa * 2048) / 2048, exponent).astype(np.float32)


class PostprocessedEncoder:
    """Any encoder (`encode(texts, ...)`) followed by fitted post-processing, for baselines."""

    def __init__(self, encoder: Any, postprocess: EmbeddingPostprocess) -> None:
        self.encoder, self.postprocess = encoder, postprocess
        self.dim = getattr(encoder, "dim", postprocess.dim)
        self.name = f"{getattr(encoder, 'name', type(encoder).__name__)}+pp"

    def encode(self, texts: list[str], instruction: str | None = None, batch_size: int = 16,
               progress: bool = True) -> np.ndarray:
        return self.postprocess(self.encoder.encode(texts, instruction=instruction,
                                                    batch_size=batch_size, progress=progress))


def fit_sample(texts: list[str], n: int, seed: int) -> list[str]:
    """Up to `n` distinct non-empty texts, a seeded sample: the reports statistics are fitted on."""
    import random

    unique = list(dict.fromkeys(t for t in texts if isinstance(t, str) and t.strip()))
    return unique if len(unique) <= n else random.Random(seed).sample(unique, n)


def fit_for(encoder: Any, texts: list[str], method: str = "center_scale", batch_size: int = 16,
            progress: bool = False) -> EmbeddingPostprocess:
    """Fit post-processing on `encoder`'s raw embeddings of `texts` (training reports)."""
    raw = encoder.encode(list(texts), batch_size=batch_size, progress=progress,
                         **({"postprocess": False} if _takes_postprocess(encoder) else {}))
    return EmbeddingPostprocess.fit(raw, method)


def _takes_postprocess(encoder: Any) -> bool:
    import inspect

    try:
        return "postprocess" in inspect.signature(encoder.encode).parameters
    except (TypeError, ValueError):
        return False
