"""Small file helpers every layer shares: atomic writes, JSON files, nested-dict flattening.

Ground floor: the standard library only, no cxr_assets import, so any module may use it.
(Named `fileio`, not `io`, so it is never mistaken for the standard library's `io`.)

An atomic write goes to a temporary sibling of the target (same folder, so the same file
system), is flushed to disk (fsync) and then renamed over the target with `os.replace`: a
reader sees the old file or the new one, never half of one, and a write that fails on the way
leaves the old file as it was and no temporary behind. The temporary is named
`.<name>.<pid>.<8 hex>.tmp` (hidden, unique per writer; the catalog clears `.<name>.*.tmp` left
by a killed writer). Folders are swapped the same way by `atomic_dir` / `replace_folder`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_dir", "atomic_path", "dumps_json", "flatten", "move_into_place",
           "replace_folder", "temp_sibling", "write_atomic", "write_json_atomic"]


# --------------------------------------------------------------------------- files
def temp_sibling(path: Path) -> Path:
    """A fresh temporary name next to `path`: `.<name>.<pid>.<8 hex>.tmp` (nothing is created)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def move_into_place(tmp: Path, path: Path, *, fsync: bool = True) -> None:
    """Flush a fully written temporary file to disk (unless fsync=False) and rename it over `path`."""
    if fsync:
        _fsync_file(tmp)
    os.replace(tmp, path)


@contextmanager
def atomic_path(path: Path, *, fsync: bool = True) -> Iterator[Path]:
    """A temporary sibling of `path` for a writer that takes a file name (Parquet, PNG, a copy).

        with atomic_path(target) as tmp:
            frame.write_parquet(tmp)

    On a clean exit the temporary is fsynced (unless fsync=False) and renamed onto `path`; on an
    error it is removed and `path` keeps its old content (or stays absent). The parent folder is
    created. Raises whatever the block raises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        yield tmp
        move_into_place(tmp, path, fsync=fsync)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path, data: str | bytes, *, encoding: str = "utf-8", fsync: bool = True) -> Path:
    """Write text (encoded with `encoding`, newlines as given) or bytes to `path` atomically."""
    payload = data.encode(encoding) if isinstance(data, str) else bytes(data)
    with atomic_path(path, fsync=False) as tmp, open(tmp, "wb") as handle:
        handle.write(payload)
        handle.flush()
        if fsync:
            os.fsync(handle.fileno())
    return Path(path)


def dumps_json(payload: Any, *, indent: int | None = 2, sort_keys: bool = True,
               default: Any = str) -> str:
    """The project's JSON file text: indent 2, sorted keys (equal content, equal bytes, stable
    DVC hashes), non-JSON values via str(), and a trailing newline."""
    return json.dumps(payload, indent=indent, sort_keys=sort_keys, default=default) + "\n"


def write_json_atomic(path: Path, payload: Any, *, indent: int | None = 2, sort_keys: bool = True,
                      default: Any = str, fsync: bool = True) -> Path:
    """`dumps_json(payload)` written to `path` atomically. The payload is serialised before any
    file is touched, so a value that cannot be serialised raises and leaves `path` as it was."""
    text = dumps_json(payload, indent=indent, sort_keys=sort_keys, default=default)
    return write_atomic(path, text, fsync=fsync)


# --------------------------------------------------------------------------- folders
def replace_folder(tmp: Path, target: Path, aside: Path | None = None) -> None:
    """Move a fully written folder `tmp` to `target` (same parent), replacing any previous
    version: the old one is renamed aside, the new one renamed in, then the old one deleted.

    `aside` is where the old version waits between the two renames: by default a unique
    `.<name>.old-<8 hex>` (concurrent writers never collide); a fixed name (cleared first) lets a
    reader find the old version after a crash between the renames (clip checkpoints do).
    """
    tmp, target = Path(tmp), Path(target)
    if aside is not None and aside.exists():
        shutil.rmtree(aside)
    old = None
    if target.exists():
        old = aside or target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Write a folder next to `target`, then swap it in: readers never see half a model.

    Yields an empty temporary folder beside `target`; on a clean exit it replaces `target`
    (`replace_folder`), on an error it is deleted and `target` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        replace_folder(tmp, target, aside=target.with_name(f".{target.name}.old"))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --------------------------------------------------------------------------- flattening
def flatten(value: Any, prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """Nested mappings -> one flat dict whose keys are the paths joined by `sep`.

        flatten({"clip": {"lr": 1e-4, "checkpoint": {"every_n_steps": 50}}})
        == {"clip.lr": 1e-4, "clip.checkpoint.every_n_steps": 50}

    `prefix` is put in front of every key (joined by `sep`). A pydantic model counts as the
    mapping of its `model_dump()`. Lists, tuples and every other value are leaves, kept as they
    are (MLflow params and contract placeholders name whole lists); an empty mapping adds no
    key; a value that is not a mapping gives {prefix: value}. Keys keep their insertion order.
    """
    if hasattr(value, "model_dump"):
        value = value.model_dump()
    if not isinstance(value, Mapping):
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, item in value.items():
        flat.update(flatten(item, f"{prefix}{sep}{key}" if prefix else str(key), sep))
    return flat
