"""study_images in shards (cxr_assets/ingest/image_shards.py): shards in separate processes, merged,
equal the single-process stage (table, quarantine, cached PNG bytes); a killed shard re-runs only
its unfinished images and leaves the other shard's untouched.

The shard processes are `cxr stage study_images --shard I/N` or a small worker script, each its
own Python process, sharing only the project folder. The merge runs here, with decoding (and
reading cached images) made to fail: it must take everything from the cache and the records.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import polars as pl
import pytest

from cxr_assets.failpoints import FAILPOINT_ENV, MARKER_ENV
from cxr_assets.ingest import image_cache
from cxr_assets.ingest.image_shards import (
    CHUNK_DECODED_FAILPOINT,
    RECORDS_FOLDER,
    SHARDS_SETTING,
    check_shard,
    parse_shard,
    records_dir,
    shard_of,
)
from tests.ingest.sharding_images import (
    assert_same_output,
    make_project,
    relative_table,
    write_image_tree,
)


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    return write_image_tree(tmp_path_factory.mktemp("sharded-images") / "raw")


def _keys(paths) -> list[str]:
    """The cache key of every catalogued image, in catalog order."""
    shas = pl.read_parquet(paths.images_table)["file_sha256"].to_list()
    return [image_cache.cache_key(sha, 32, 8) for sha in shas]


def _cli_shard(root: Path, shard: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cxr_assets", "--no-progress", "--params", str(root / "params.yaml"),
         "stage", "study_images", "--shard", shard],
        cwd=root, env={**os.environ, "CXR_PROJECT_ROOT": str(root), **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@contextmanager
def no_image_work(monkeypatch):
    """Inside: decoding an image or reading a cached one fails the test."""
    def forbidden(*args, **kwargs):
        pytest.fail(f"the merge touched an image: {args[0]}")

    with monkeypatch.context() as patch:
        patch.setattr(image_cache, "_cache_one", forbidden)
        patch.setattr(image_cache, "_digest_task", forbidden)
        yield


# ---------------------------------------------------------------- assignment and bad input

def test_shards_are_disjoint_cover_every_image_and_bad_shards_name_the_setting(
        tmp_path: Path, raw: Path) -> None:
    _, paths = make_project(tmp_path / "p", raw)
    keys = _keys(paths)
    for n in (1, 2, 3):
        owners = [shard_of(k, n) for k in keys]
        assert set(owners) <= set(range(n))
        assert [shard_of(k, n) for k in reversed(keys)] == owners[::-1]  # the key alone decides
    assert len({shard_of(k, 2) for k in keys}) == 2  # both shards get work

    for shard, n in ((2, 2), (-1, 2), (0, 0)):
        with pytest.raises(ValueError, match=SHARDS_SETTING):
            check_shard(shard, n)
    assert parse_shard("1/4") == (1, 4) and parse_shard("1", n_default=2) == (1, 2)
    with pytest.raises(ValueError, match=SHARDS_SETTING):
        parse_shard("3", n_default=2)

    from cxr_assets.cli import main
    from cxr_assets.config import ParamsError, parse_params
    from tests.helpers import tiny_params

    with pytest.raises(ParamsError, match=r"ingest\.decode_shards"):
        parse_params(tiny_params(tmp_path, tmp_path, ingest={"decode_shards": 0}))
    make_project(tmp_path / "two", raw, decode_shards=2)
    args = ["--params", str(tmp_path / "two" / "params.yaml"), "stage", "study_images", "--shard"]
    assert main([*args, "2"]) == 2  # N from params: shards 0 and 1 only
    assert main([*args, "0/0"]) == 2
    assert main([*args[:-2], "report_texts", "--shard", "0/2"]) == 2  # not a sharded stage


# ---------------------------------------------------------------- 2 processes == 1 process

def test_two_shard_processes_merged_equal_one_process(tmp_path: Path, raw: Path,
                                                      monkeypatch) -> None:
    from cxr_assets.stages import study_images

    params_1, paths_1 = make_project(tmp_path / "single", raw)
    single = study_images.run(params_1, paths_1, progress=False)
    assert single.metadata["n_quarantined"] == 2  # the duplicate and the undecodable image

    root = tmp_path / "sharded"
    params_2, paths_2 = make_project(root, raw, decode_shards=2)
    shards = [_cli_shard(root, "0/2"), _cli_shard(root, "1")]  # "1": N from params
    outputs = [p.communicate(timeout=600) for p in shards]
    for process, (_, err) in zip(shards, outputs):
        assert process.returncode == 0, err[-2000:]
    meta = [json.loads(out)["metadata"] for out, _ in outputs]
    assert [m["shard"] for m in meta] == ["0/2", "1/2"]
    assert all(m["n_images_in_shard"] > 0 and m["n_reused_from_cache"] == 0 for m in meta)
    distinct = len(set(_keys(paths_2)))
    assert sum(m["n_images_in_shard"] for m in meta) == distinct  # disjoint and complete
    assert sum(m["n_decoded"] + m["n_failed"] for m in meta) == distinct
    assert sum(m["n_failed"] for m in meta) == 1

    with no_image_work(monkeypatch):  # the merge decodes and reads no image
        merged = study_images.run(params_2, paths_2, progress=False)
    assert not merged.blocking_failures
    drop = {"cache_dir", "quarantine_reasons"}
    assert ({k: v for k, v in merged.metadata.items() if k not in drop}
            == {k: v for k, v in single.metadata.items() if k not in drop})
    assert_same_output(paths_2, paths_1)
    assert not list((paths_2.image_cache_dir / RECORDS_FOLDER).rglob("*.parquet"))  # consumed

    # Run again, as one process would be: everything found in the cache now.
    again = study_images.run(params_2, paths_2, progress=False)
    assert again.metadata["n_decoded"] == 0
    assert relative_table(paths_2.study_images_table, paths_2.image_cache_dir)["was_cached"].all()


# ---------------------------------------------------------------- a killed shard

SHARD_WORKER = """
import sys
from pathlib import Path
from cxr_assets.ingest.image_shards import decode_shard
table, cache, shard = sys.argv[1:4]
decode_shard(Path(table), Path(cache), size=32, bits=8, shard=int(shard), n_shards=2, workers=1,
             progress=False, chunk_rows=3)
"""


def _wait_for(path: Path, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"shard exited ({process.returncode}) before its failpoint: "
                                 f"{process.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"shard never reached {CHUNK_DECODED_FAILPOINT}")
        time.sleep(0.1)


def _done(paths, keys: set[str]) -> set[str]:
    """Keys finished: cached, or recorded as failed."""
    cached = {k for k in keys if image_cache.cache_path_for(paths.image_cache_dir, k).is_file()}
    folder = records_dir(paths.image_cache_dir, paths.images_table)
    failed = set()
    for file in folder.glob("*.parquet"):
        failed |= set(pl.read_parquet(file).filter(pl.col("error").is_not_null())["cache_key"])
    return cached | (failed & keys)


def test_killed_shard_rerun_decodes_only_its_unfinished_images(tmp_path: Path, raw: Path,
                                                               monkeypatch) -> None:
    from cxr_assets.stages import study_images

    params, paths = make_project(tmp_path / "sharded", raw, decode_shards=2)
    keys = set(_keys(paths))
    dying_shard = 0
    mine = {k for k in keys if shard_of(k, 2) == dying_shard}
    other = keys - mine

    def worker(shard: int, env: dict | None = None) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-c", SHARD_WORKER, str(paths.images_table),
             str(paths.image_cache_dir), str(shard)],
            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)

    marker = tmp_path / "failpoint-reached"
    finishing = worker(1 - dying_shard)
    dying = worker(dying_shard, {FAILPOINT_ENV: CHUNK_DECODED_FAILPOINT, MARKER_ENV: str(marker)})
    try:
        _wait_for(marker, dying, timeout=300)  # it has recorded its first chunk, and waits
    finally:
        dying.send_signal(signal.SIGKILL)
        dying.wait()
    assert finishing.wait(timeout=300) == 0, finishing.stderr.read()[-2000:]

    assert _done(paths, other) == other  # the other shard finished
    kept = _done(paths, mine)
    assert kept and mine - kept, "the shard should die with some, not all, of its images done"
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns)
              for p in paths.image_cache_dir.rglob("*.png")}

    decoded: list[str] = []
    real = image_cache._cache_one

    def counting(image_path, out_path, size, bits):
        decoded.append(Path(out_path).stem)  # the file name is the cache key
        return real(image_path, out_path, size, bits)

    monkeypatch.setattr(image_cache, "_cache_one", counting)
    rerun = study_images.run(params, paths, progress=False, shard=(dying_shard, 2), chunk_rows=3)
    assert sorted(decoded) == sorted(mine - kept)  # only the unfinished, each once
    meta = rerun.metadata
    assert meta["n_images_in_shard"] == len(mine)
    assert meta["n_decoded"] + meta["n_failed"] == len(mine - kept)
    assert meta["n_reused_from_cache"] == len(kept)
    after = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in before}
    assert after == before  # no finished image, of either shard, was written again

    with no_image_work(monkeypatch):  # the merge decodes and reads no image
        merged = study_images.run(params, paths, progress=False)
    assert not merged.blocking_failures

    params_1, paths_1 = make_project(tmp_path / "single", raw)
    study_images.run(params_1, paths_1, progress=False)
    assert_same_output(paths, paths_1)  # was_cached false throughout, as one process writes
