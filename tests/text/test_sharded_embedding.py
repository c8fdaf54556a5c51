"""report_embeddings in shards (cxr_assets/embed/sharding.py): shards in separate processes, merged,
equal the single-process table; a killed shard re-runs only its unfinished texts.

The real TextEncoder runs on the tiny random Llama (tests/conftest.py::tiny_llm); the shard
processes are `cxr stage report_embeddings --shard I/N` or a small worker script, each its own
Python process, sharing only the project folder.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cxr_assets.embed.sharding import (
    CHUNK_CACHED_FAILPOINT,
    SHARDS_SETTING,
    check_shard,
    embed_shard,
    parse_shard,
    shard_of,
)
from cxr_assets.embed.text_cache import EmbeddingCache, embed_table, text_hash
from cxr_assets.failpoints import FAILPOINT_ENV, MARKER_ENV
from tests.text.sharding_project import Counting, assert_same_table, make_project, report_texts


def _cli_shard(root: Path, shard: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cxr_assets", "--no-progress", "--params", str(root / "params.yaml"),
         "stage", "report_embeddings", "--shard", shard],
        cwd=root, env={**os.environ, "CXR_PROJECT_ROOT": str(root), **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# ---------------------------------------------------------------- assignment and bad input

def test_shards_are_disjoint_cover_everything_and_ignore_row_order() -> None:
    keys = [text_hash(t, None) for t in report_texts(200)]
    for n in (1, 2, 3, 7):
        owners = [shard_of(k, n) for k in keys]
        assert set(owners) <= set(range(n))
        # a text's shard follows from the text alone: same in any order, any process
        assert [shard_of(k, n) for k in reversed(keys)] == owners[::-1]
    assert len({shard_of(k, 3) for k in keys}) == 3  # every shard gets work


def test_bad_shard_or_shard_count_names_the_setting(tmp_path: Path) -> None:
    for shard, n in ((2, 2), (-1, 2), (0, 0)):
        with pytest.raises(ValueError, match=SHARDS_SETTING):
            check_shard(shard, n)
    assert parse_shard("1/4") == (1, 4) and parse_shard("1", n_default=2) == (1, 2)
    with pytest.raises(ValueError, match=SHARDS_SETTING):
        parse_shard("3", n_default=2)
    with pytest.raises(ValueError, match="I/N"):
        parse_shard("one/2")

    from cxr_assets.config import ParamsError, parse_params
    from tests.helpers import tiny_params

    with pytest.raises(ParamsError, match=r"text_encoder\.embed_shards"):
        parse_params(tiny_params(tmp_path, tmp_path,
                                 text_encoder={"pooling": "mean", "embed_shards": 0}))

    from cxr_assets.cli import main
    from tests.helpers import write_params

    write_params(tmp_path, tiny_params(tmp_path, tmp_path,
                                       text_encoder={"pooling": "mean", "embed_shards": 2}))
    args = ["--params", str(tmp_path / "params.yaml"), "stage", "report_embeddings", "--shard"]
    assert main([*args, "2"]) == 2  # N from params: shards 0 and 1 only
    assert main([*args, "0/0"]) == 2
    assert main([*args[:-2], "text_encoder", "--shard", "0/2"]) == 2  # only report_embeddings


# ---------------------------------------------------------------- 2 processes == 1 process

def test_two_shard_processes_merged_equal_one_process(tmp_path: Path, tiny_llm: Path) -> None:
    from cxr_assets.stages import report_embeddings

    params_1, paths_1 = make_project(tmp_path / "single", tiny_llm)
    single = report_embeddings.run(params_1, paths_1, progress=False)
    distinct = len(set(report_texts()))
    assert single.metadata["n_encoded_now"] == distinct

    root = tmp_path / "sharded"
    params_2, paths_2 = make_project(root, tiny_llm, encoder_from=paths_1.text_encoder_dir,
                                     embed_shards=2)
    shards = [_cli_shard(root, "0/2"), _cli_shard(root, "1")]  # "1": N from params
    outputs = [p.communicate(timeout=900) for p in shards]
    for process, (out, err) in zip(shards, outputs):
        assert process.returncode == 0, err[-2000:]
    meta = [json.loads(out)["metadata"] for out, _ in outputs]
    assert [m["shard"] for m in meta] == ["0/2", "1/2"]
    assert all(m["n_texts_in_shard"] > 0 and m["n_from_cache"] == 0 for m in meta)
    assert sum(m["n_encoded_now"] for m in meta) == distinct  # disjoint and complete

    merged = report_embeddings.run(params_2, paths_2, progress=False)
    assert merged.metadata["n_encoded_now"] == 0  # the merge only reads the cache
    assert merged.metadata["n_reports"] == single.metadata["n_reports"]
    assert_same_table(paths_2.report_embeddings_table, paths_1.report_embeddings_table)


# ---------------------------------------------------------------- a killed shard

SHARD_WORKER = """
import sys
from pathlib import Path
from cxr_assets.embed.sharding import embed_shard
from cxr_assets.text.encoder import TextEncoder
encoder_dir, table, cache, shard = sys.argv[1:5]
encoder = TextEncoder.from_pretrained(Path(encoder_dir), threads=1)
embed_shard(encoder, Path(table), "report_for_training", Path(cache), None,
            shard=int(shard), n_shards=2, batch_size=4, chunk_size=4, progress=False)
"""


def _wait_for(path: Path, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"shard exited ({process.returncode}) before its failpoint: "
                                 f"{process.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"shard never reached {CHUNK_CACHED_FAILPOINT}")
        time.sleep(0.2)


def test_killed_shard_rerun_encodes_only_its_unfinished_texts(tmp_path: Path, tiny_llm: Path) -> None:
    from cxr_assets.text.encoder import TextEncoder

    _, paths = make_project(tmp_path / "project", tiny_llm)
    table, cache_dir = paths.report_texts_table, tmp_path / "cache"
    encoder = TextEncoder.from_pretrained(paths.text_encoder_dir, threads=1)
    keys = {text_hash(t, None): t for t in report_texts()}
    mine = {k for k in keys if shard_of(k, 2) == 1}
    other = set(keys) - mine

    def worker(shard: int, env: dict | None = None) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-c", SHARD_WORKER, str(paths.text_encoder_dir), str(table),
             str(cache_dir), str(shard)],
            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)

    marker = tmp_path / "failpoint-reached"
    finishing = worker(0)
    dying = worker(1, {FAILPOINT_ENV: CHUNK_CACHED_FAILPOINT, MARKER_ENV: str(marker)})
    try:
        _wait_for(marker, dying, timeout=600)  # shard 1 has cached its first chunk, and waits
    finally:
        dying.send_signal(signal.SIGKILL)
        dying.wait()
    assert finishing.wait(timeout=600) == 0, finishing.stderr.read()[-2000:]

    cache = EmbeddingCache(cache_dir, encoder.document_hash)
    done = {k for k in keys if k in cache}
    assert other <= done  # the other shard finished
    kept = done & mine
    assert kept and mine - kept, "shard 1 should die with some, not all, of its texts cached"

    rerun = Counting(encoder)
    summary = embed_shard(rerun, table, "report_for_training", cache_dir, None, shard=1,
                          n_shards=2, batch_size=4, chunk_size=4, progress=False)
    assert {text_hash(t, None) for t in rerun.encoded} == mine - kept  # only the unfinished
    assert len(rerun.encoded) == len(mine - kept)  # each once; none of shard 0's
    assert (summary.n_encoded, summary.n_cached) == (len(mine - kept), len(kept))

    merge = Counting(encoder)
    embed_table(merge, table, "report_for_training", ["study_id", "patient_id"],
                tmp_path / "sharded.parquet", cache_dir, None, batch_size=4, progress=False)
    assert merge.encoded == []  # nothing left: the merge re-encodes nobody's reports
    embed_table(encoder, table, "report_for_training", ["study_id", "patient_id"],
                tmp_path / "single.parquet", tmp_path / "single-cache", None, batch_size=4,
                progress=False)
    assert_same_table(tmp_path / "sharded.parquet", tmp_path / "single.parquet")
