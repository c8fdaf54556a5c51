"""cxr_assets.fileio: atomic writes keep the old file on failure, and the one dict flattener."""

from __future__ import annotations

import json
import os

import pytest

from cxr_assets.fileio import (
    atomic_dir,
    atomic_path,
    dumps_json,
    flatten,
    replace_folder,
    temp_sibling,
    write_atomic,
    write_json_atomic,
)


def _siblings(folder):
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------- atomic files
def test_write_atomic_text_and_bytes(tmp_path):
    target = tmp_path / "sub" / "note.txt"  # parent folders are created
    assert write_atomic(target, "héllo\nworld\n") == target
    assert target.read_bytes() == "héllo\nworld\n".encode()
    write_atomic(target, b"\x00\x01raw")
    assert target.read_bytes() == b"\x00\x01raw"
    assert _siblings(target.parent) == ["note.txt"]  # no temporary left behind


def test_write_atomic_keeps_the_file_mode_of_a_plain_write(tmp_path):
    plain, atomic = tmp_path / "plain.txt", tmp_path / "atomic.txt"
    plain.write_text("x")
    write_atomic(atomic, "x")
    assert (atomic.stat().st_mode & 0o777) == (plain.stat().st_mode & 0o777)


def test_write_json_atomic_matches_the_stored_format(tmp_path):
    """indent 2, sorted keys, str() for other values, one trailing newline: the bytes every
    stored metrics/summary file has (stages.base.write_json)."""
    payload = {"b": 1, "a": {"z": [1, 2], "y": tmp_path}}
    target = write_json_atomic(tmp_path / "m.json", payload)
    expected = json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n"
    assert target.read_text() == expected == dumps_json(payload)
    assert list(json.loads(target.read_text())) == ["a", "b"]


def test_stage_write_json_is_the_shared_write(tmp_path):
    from cxr_assets.stages.base import write_json

    payload = {"k": 0.5, "a": None}
    write_json(tmp_path / "s.json", payload)
    assert (tmp_path / "s.json").read_text() == dumps_json(payload)


def test_json_that_cannot_be_serialised_leaves_the_old_file(tmp_path):
    target = tmp_path / "metrics.json"
    write_json_atomic(target, {"ok": 1})
    before = target.read_bytes()

    class Unserialisable:
        pass

    with pytest.raises(TypeError):
        write_json_atomic(target, {"ok": 2, "bad": Unserialisable()}, default=None)
    with pytest.raises(RuntimeError):  # the serialiser itself fails part-way through
        write_json_atomic(target, {"ok": 3, "bad": Unserialisable()},
                          default=lambda value: (_ for _ in ()).throw(RuntimeError("boom")))
    assert target.read_bytes() == before
    assert _siblings(tmp_path) == ["metrics.json"]


def test_a_writer_failing_midway_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "table.parquet"
    target.write_bytes(b"old content")
    with pytest.raises(RuntimeError, match="disk on fire"), atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".table.parquet.")
        tmp.write_bytes(b"half of the new")
        raise RuntimeError("disk on fire")
    assert target.read_bytes() == b"old content"
    assert _siblings(tmp_path) == ["table.parquet"]


def test_a_failed_first_write_creates_nothing(tmp_path):
    target = tmp_path / "new.bin"
    with pytest.raises(ValueError), atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise ValueError("stop")
    assert not target.exists() and _siblings(tmp_path) == []


def test_atomic_path_replaces_on_success(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
        assert target.read_bytes() == b"old"  # readers see the old file until the block ends
    assert target.read_bytes() == b"new" and _siblings(tmp_path) == ["out.bin"]
    with atomic_path(target, fsync=False) as tmp:
        tmp.write_bytes(b"newer")
    assert target.read_bytes() == b"newer"


def test_temp_sibling_is_hidden_unique_and_matches_the_catalog_cleanup(tmp_path):
    first, second = temp_sibling(tmp_path / "images.parquet"), temp_sibling(tmp_path / "images.parquet")
    assert first != second and first.parent == tmp_path
    assert first.name.startswith(f".images.parquet.{os.getpid()}.") and first.name.endswith(".tmp")
    first.touch()
    assert list(tmp_path.glob(".images.parquet.*.tmp")) == [first]  # write_catalog's stale glob


def test_parquet_writes_go_through_the_shared_helper(tmp_path):
    import polars as pl

    from cxr_assets.parquet_io import write_parquet_atomic, write_parquet_chunks

    frame = pl.DataFrame({"a": [1, 2]})
    write_parquet_atomic(frame, tmp_path / "t.parquet")
    assert pl.read_parquet(tmp_path / "t.parquet").equals(frame)
    with pytest.raises(ValueError):
        write_parquet_chunks(iter([frame, pl.DataFrame({"a": ["not an int"]})]), tmp_path / "t.parquet")
    assert pl.read_parquet(tmp_path / "t.parquet").equals(frame)  # the old table survives
    assert _siblings(tmp_path) == ["t.parquet"]


# --------------------------------------------------------------------------- folders
def test_atomic_dir_swaps_in_a_whole_folder_or_nothing(tmp_path):
    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text("v1")
    assert (target / "weights").read_text() == "v1"
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "weights").write_text("v2 (half)")
        raise RuntimeError("killed")
    assert (target / "weights").read_text() == "v1"
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text("v2")
    assert (target / "weights").read_text() == "v2"
    assert _siblings(tmp_path) == ["model"]  # neither the tmp nor the old folder is left


def test_replace_folder(tmp_path):
    new, target = tmp_path / ".new", tmp_path / "out"
    new.mkdir()
    (new / "f").write_text("new")
    replace_folder(new, target)  # no previous version
    assert (target / "f").read_text() == "new"
    new.mkdir()
    (new / "g").write_text("newer")
    replace_folder(new, target)
    assert sorted(p.name for p in target.iterdir()) == ["g"]
    assert _siblings(tmp_path) == ["out"]


def test_replace_folder_with_a_fixed_aside_clears_a_crash_leftover(tmp_path):
    target, aside, new = tmp_path / "last", tmp_path / ".last.old", tmp_path / ".last.tmp"
    aside.mkdir()  # what a crash between the two renames leaves (clip checkpoints read it)
    (aside / "stale").write_text("old")
    new.mkdir()
    (new / "meta.json").write_text("{}")
    replace_folder(new, target, aside=aside)
    assert _siblings(tmp_path) == ["last"] and _siblings(target) == ["meta.json"]


# --------------------------------------------------------------------------- flattening
def test_flatten_nested_dicts():
    nested = {"lr": 1e-4, "checkpoint": {"every_n_steps": 50, "keep": {"best": True}}, "empty": {}}
    assert flatten(nested) == {"lr": 1e-4, "checkpoint.every_n_steps": 50, "checkpoint.keep.best": True}
    assert list(flatten(nested)) == ["lr", "checkpoint.every_n_steps", "checkpoint.keep.best"]
    assert flatten(nested, "clip") == {"clip.lr": 1e-4, "clip.checkpoint.every_n_steps": 50,
                                       "clip.checkpoint.keep.best": True}
    assert flatten({"a": {"b": 1}}, sep="/") == {"a/b": 1}
    assert flatten({1: {2: "x"}}) == {"1.2": "x"}  # keys become strings


def test_flatten_keeps_lists_and_tuples_as_leaves():
    nested = {"range": [0.1, 0.9], "towers": ("a", "b", "c"), "rows": [{"x": 1}], "none": None}
    assert flatten(nested, "q") == {"q.range": [0.1, 0.9], "q.towers": ("a", "b", "c"),
                                    "q.rows": [{"x": 1}], "q.none": None}
    assert flatten(5, "just") == {"just": 5}


def test_flatten_reads_pydantic_models():
    from pydantic import BaseModel

    class Inner(BaseModel):
        n: int = 3

    class Outer(BaseModel):
        inner: Inner = Inner()
        name: str = "x"

    assert flatten(Outer()) == {"inner.n": 3, "name": "x"}
    assert flatten({"outer": Outer()}) == {"outer.inner.n": 3, "outer.name": "x"}


def test_the_callers_flatten_as_before():
    from cxr_assets.quality.contracts import flatten_overrides

    assert flatten_overrides({"quality": {"share": [0.1, 0.5], "min": 2}}, "p.") == {
        "p.quality.share": [0.1, 0.5], "p.quality.share_low": 0.1, "p.quality.share_high": 0.5,
        "p.quality.min": 2}
    assert flatten_overrides(None) == {}
