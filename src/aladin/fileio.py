"""Atomic file writes: a crash mid-save must never corrupt what was saved before.

Every write goes through one primitive: a hidden temporary file beside the target (with the permissions the
user's umask gives a new file, not `mkstemp`'s 0600), flushed to disk, renamed over the target, and the folder
flushed so the rename itself survives a crash. Folders are swapped the same way by `atomic_directory`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _umask() -> int:
    """The process umask (reading it means setting it: set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temp_file(final: str | Path) -> Path:
    """A fresh hidden file beside `final` (same file system, so publishing it is one rename), readable as any
    new file of the user's would be."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    finally:
        os.close(fd)
    return Path(tmp)


def commit_file(tmp: Path, final: str | Path) -> None:
    """Flush `tmp`, rename it to `final`, then flush the folder: after this returns, `final` is on disk."""
    fsync_path(tmp)
    os.replace(tmp, final)
    fsync_path(Path(final).parent)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` (`commit_file`); on error it goes."""
    tmp = temp_file(path)
    try:
        yield tmp
        commit_file(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
    """Yield a fresh temporary folder; on success it takes the place of `path` (`swap_directory`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        swap_directory(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def swap_directory(ready: Path, path: Path) -> None:
    """Put the complete folder `ready` in the place of `path` (old content kept until then).

    The swap is two renames; if a crash falls between them, `path` is missing and `recover_directory`
    finds the previous version under its backup name.
    """
    backup = path.parent / f".{path.name}.previous"
    for item in ready.iterdir():
        fsync_path(item)
    fsync_path(ready)
    if not path.exists() and backup.is_dir():
        os.replace(backup, path)  # an earlier swap was interrupted: its backup is the good copy
    if backup.exists():
        shutil.rmtree(backup)
    if path.exists():
        os.replace(path, backup)
    os.replace(ready, path)
    fsync_path(path.parent)
    if backup.exists():
        shutil.rmtree(backup)


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
