"""Shards of a stage's work: which shard a key belongs to, and `I/N` checked against the setting.

Shared by the sharded stages (report_embeddings: cxr_assets/embed/sharding.py, study_images:
cxr_assets/ingest/image_shards.py). A key is a hex digest (a text hash, an image cache key), so
its shard follows from the key alone: shards are disjoint, together cover every key, and do not
depend on row order or on which process asks. Standard library only.
"""

from __future__ import annotations


def check_shard(shard: int, n_shards: int, setting: str) -> None:
    """A clear error, naming the setting (e.g. "ingest.decode_shards"), for a shard that does not
    exist."""
    if n_shards < 1:
        raise ValueError(f"{setting} must be >= 1, got {n_shards}")
    if not 0 <= shard < n_shards:
        raise ValueError(f"shard {shard} does not exist with {setting} = {n_shards}: "
                         f"shards are numbered 0..{n_shards - 1}")


def parse_shard(spec: str, n_default: int | None, setting: str) -> tuple[int, int]:
    """'I/N' -> (I, N); 'I' alone takes N from n_default (the value of `setting`)."""
    index, slash, total = spec.partition("/")
    try:
        shard = int(index)
        n_shards = int(total) if slash else n_default
    except ValueError:
        raise ValueError(f"a shard is I/N (e.g. 0/2) or I, got {spec!r}") from None
    if n_shards is None:
        raise ValueError(f"a shard is I/N (e.g. 0/2) here, got {spec!r}")
    check_shard(shard, n_shards, setting)
    return shard, n_shards


def shard_of(key: str, n_shards: int) -> int:
    """The shard of a key: the hex digest modulo n_shards; stable across processes and runs."""
    return int(key, 16) % n_shards
