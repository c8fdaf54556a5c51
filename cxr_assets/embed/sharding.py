"""Sharded report embedding: n processes each encode one share of the reports into the cache,
then the ordinary single-process run writes the table from the cache.

Design (a Dagster fan-out, the pattern of Dagster's "dynamic graphs"):

    report_texts, text_encoder
        -> plan: one shard per i in 0..n-1   (n = text_encoder.embed_shards)
        -> shard i of n: `embed_shard`       (each its own step: own process or pod)
        -> merge: `embed_table`              (writes report_embeddings.parquet)

- Which shard a report belongs to is decided by its text hash (`shard_of`), so shards are
  disjoint, together cover every report, and do not depend on row order or on which process
  asks. The same text in two rows is one text, encoded once, by one shard.
- A shard writes nothing but cache files: `EmbeddingCache` adds one Parquet file per encoded
  chunk (unique name, written atomically), so shards never write the same file, and a killed
  shard keeps every chunk it finished. Running it again encodes only what is still missing.
- The merge is the unchanged single-process run (`text_cache.embed_table`): with every text
  cached it encodes nothing and writes the same table, in report_texts order, that one process
  would write. Any text still missing (a shard that never ran) is encoded there, so the merge
  is always correct, only slower.

Engines: Dagster runs the shards as mapped steps of the report_embeddings asset
(dags_defs/assets.py): the multiprocess executor locally, one pod per step with the Kubernetes
executor. By hand, or from a DVC foreach or a cluster array job:
`cxr stage report_embeddings --shard I/N` per shard, then `cxr stage report_embeddings`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cxr_assets import sharding
from cxr_assets.embed.text_cache import CHUNK_SIZE, EmbeddingCache, encode_missing, text_hash
from cxr_assets.failpoints import failpoint

SHARDS_SETTING = "text_encoder.embed_shards"
# Reached after each chunk a shard has written to the cache (fault tests kill the shard here).
CHUNK_CACHED_FAILPOINT = "embed_shard_chunk_cached"


def check_shard(shard: int, n_shards: int) -> None:
    """A clear error, naming the setting, for a shard that does not exist."""
    sharding.check_shard(shard, n_shards, SHARDS_SETTING)


def parse_shard(spec: str, n_default: int | None = None) -> tuple[int, int]:
    """'I/N' -> (I, N); 'I' alone takes N from n_default (text_encoder.embed_shards)."""
    return sharding.parse_shard(spec, n_default, SHARDS_SETTING)


# The shard of a text: its hash (hex) modulo n_shards; stable across processes and runs.
shard_of = sharding.shard_of


@dataclass
class ShardSummary:
    shard: int
    n_shards: int
    n_texts: int  # distinct texts assigned to this shard
    n_encoded: int  # encoded by this run; the rest were in the cache already

    @property
    def n_cached(self) -> int:
        return self.n_texts - self.n_encoded


def embed_shard(
    encoder,
    table_file: Path,
    text_column: str,
    cache_dir: Path,
    instruction: str | None,
    shard: int,
    n_shards: int,
    batch_size: int = 16,
    chunk_size: int = CHUNK_SIZE,
    progress: bool = True,
) -> ShardSummary:
    """Encode into the cache the texts of `table_file` that belong to shard `shard` of `n_shards`.

    Reads the table one chunk of rows at a time; the chunk's texts of this shard that are not
    cached yet are encoded and added to the cache at once, so a kill loses at most one chunk.
    """
    from tqdm.auto import tqdm

    from cxr_assets.parquet_io import iter_parquet_chunks, parquet_rows

    check_shard(shard, n_shards)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    cache = EmbeddingCache(cache_dir, encoder.document_hash)
    seen: set[str] = set()  # this shard's distinct texts (hashes only)
    n_encoded = 0
    with tqdm(total=parquet_rows(table_file), desc=f"report_embeddings shard {shard}/{n_shards}",
              unit="report", disable=not progress) as bar:
        for chunk in iter_parquet_chunks(table_file, chunk_size, [text_column]):
            texts, keys = [], []
            for text in chunk[text_column].fill_null("").to_list():
                key = text_hash(text, instruction)
                if shard_of(key, n_shards) == shard:
                    texts.append(text)
                    keys.append(key)
            seen.update(keys)
            encoded = encode_missing(encoder, cache, keys, texts, instruction, batch_size)
            n_encoded += encoded
            bar.update(chunk.height)
            if encoded:
                failpoint(CHUNK_CACHED_FAILPOINT)
    return ShardSummary(shard=shard, n_shards=n_shards, n_texts=len(seen), n_encoded=n_encoded)
