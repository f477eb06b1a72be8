"""Atomic file writes: a crash mid-save must never corrupt what was saved before."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` with one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write(path: str | Path, writer: Callable[[Path], None]) -> None:
    """Run `writer(tmp_path)` and move the result into place atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically (sorted keys, indented, so diffs stay readable)."""
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n"))


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """Read JSON with a one-line error naming the file when it is missing or malformed."""
    from aladin.errors import AladinError

    path = Path(path)
    if not path.is_file():
        raise AladinError(f"{path}: {what} not found")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AladinError(f"{path}: not valid JSON ({exc})") from exc


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success it takes the place of `path` (old content kept until then).

    The swap is two renames; if a crash falls between them, `path` is missing and `recover_directory`
    finds the previous version under its backup name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    backup = path.parent / f".{path.name}.previous"
    try:
        yield tmp
        for item in tmp.iterdir():
            fsync_path(item)
        fsync_path(tmp)
        if not path.exists() and backup.is_dir():
            os.replace(backup, path)  # an earlier swap was interrupted: its backup is the good copy
        if backup.exists():
            shutil.rmtree(backup)
        if path.exists():
            os.replace(path, backup)
        os.replace(tmp, path)
        fsync_path(path.parent)
        if backup.exists():
            shutil.rmtree(backup)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def fsync_path(path: Path) -> None:
    """Flush a file or folder to disk, so a rename never publishes data that is still only in memory."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def recover_directory(path: str | Path) -> Path:
    """The folder to read: `path`, or its previous version if a save was interrupted mid-swap."""
    path = Path(path)
    backup = path.parent / f".{path.name}.previous"
    if not path.exists() and backup.is_dir():
        return backup
    return path
