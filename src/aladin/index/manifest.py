"""The manifest names every file of one index version with its size and checksum; switching it is one rename.

Files are immutable once published: an update writes new files beside the old ones, then replaces
`manifest.json` atomically, then deletes the files no manifest refers to any more. A crash before the switch
leaves the previous manifest and all its files untouched.
"""

from __future__ import annotations

import fcntl
import hashlib
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aladin.errors import AladinError, CheckpointError
from aladin.fileio import commit_file, read_json, temp_file, write_json
from aladin.index.config import INDEX_FORMAT_VERSION

MANIFEST_NAME = "manifest.json"
LOCK_NAME = ".lock"
#: Names this package writes (published files and their temporaries); garbage collection touches nothing else.
_OWNED = re.compile(r"^\.?(vectors|texts|regions|words|meta)\.\d{6}\.|^\.manifest\.json\..*\.tmp$")


def generation_name(stem: str, generation: int, suffix: str) -> str:
    """File name of one version's file, e.g. regions.000003.f16: versions never overwrite each other."""
    return f"{stem}.{generation:06d}.{suffix}"


def sha256_file(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def publish(tmp: Path, final: Path, sha256: str | None = None) -> dict[str, Any]:
    """Move the finished temporary file `tmp` (from `aladin.fileio.temp_file`) to `final` durably; returns
    the manifest record (size and checksum)."""
    record = {"bytes": tmp.stat().st_size, "sha256": sha256 or sha256_file(tmp)}
    commit_file(tmp, final)
    return record


def publish_with(final: Path, write: Callable[[Path], None]) -> dict[str, Any]:
    """`write` a temporary file, then publish it as `final`; returns its manifest record."""
    tmp = temp_file(final)
    try:
        write(tmp)
        return publish(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of the index in `directory`, refusing (in one line naming the file) other format versions,
    a corrupt or truncated file, names outside the folder and malformed counts or ids."""
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise CheckpointError(f"{path}: not found ({directory} is not an aladin index)")
    try:
        manifest = read_json(path, "index manifest")
    except AladinError as exc:
        raise CheckpointError(f"{path}: corrupt or truncated index manifest ({exc})") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise CheckpointError(f"{path}: not an aladin index manifest")
    version = manifest.get("format_version")
    if version != INDEX_FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: index format version {version!r}, this aladin reads version {INDEX_FORMAT_VERSION}; "
            "rebuild the index with `aladin index build`"
        )
    problem = _manifest_problem(manifest)
    if problem:
        raise CheckpointError(f"{path}: malformed index manifest: {problem}")
    return manifest


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_own_file(name: Any) -> bool:
    """A plain file name in the index folder: no folder part, no `..`, not absolute."""
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name


def _manifest_problem(manifest: dict[str, Any]) -> str | None:
    """What is wrong with a manifest's file names, counts or ids (None when nothing is)."""
    outside = [name for name in manifest["files"] if not _is_own_file(name)]
    if outside:
        return f"file {outside[0]!r} is outside the index folder"
    named = [manifest.get("meta")]
    collections = manifest.get("collections")
    if not isinstance(collections, dict) or not collections:
        return "'collections' must name the images (and captions)"
    for kind, entry in collections.items():
        segments = entry.get("segments") if isinstance(entry, dict) else None
        if not isinstance(segments, list) or not all(isinstance(s, dict) for s in segments):
            return f"collections.{kind}.segments must be a list of segments"
        named += [entry.get("vectors")] + [s.get(k) for s in segments for k in ("data", "offsets", "boxes")]
        named += [s.get("quantizer") for s in segments]
        if not all(_is_count(s.get(k)) for s in segments for k in ("first_id", "count", "rows")):
            return f"collections.{kind}.segments: first_id, count and rows must be whole numbers >= 0"
    unlisted = [name for name in named if name is not None and name not in manifest["files"]]
    if unlisted:
        return f"{unlisted[0]!r} is not one of the index's listed files"
    return _counts_problem(manifest, set(collections))


def _counts_problem(manifest: dict[str, Any], kinds: set[str]) -> str | None:
    if not _is_count(manifest.get("generation")):
        return f"generation must be a whole number >= 0, got {manifest.get('generation')!r}"
    next_ids, counts = manifest.get("next_ids"), manifest.get("counts")
    if not isinstance(next_ids, dict) or not all(_is_count(next_ids.get(kind)) for kind in kinds):
        return f"next_ids must give a whole number >= 0 for {', '.join(sorted(kinds))}, got {next_ids!r}"
    for kind in kinds:
        count = counts.get(kind) if isinstance(counts, dict) else None
        if not isinstance(count, dict) or not (
            _is_count(count.get("live")) and _is_count(count.get("removed"))
        ):
            return f"counts.{kind} must give whole numbers live and removed >= 0, got {count!r}"
    return None


def verify_files(directory: Path, manifest: dict[str, Any], checksums: bool = True) -> None:
    """Refuse a missing, truncated or (with `checksums`) corrupt file, naming it."""
    for name, record in sorted(manifest["files"].items()):
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing (listed in {directory / MANIFEST_NAME})")
        size = path.stat().st_size
        if size != record["bytes"]:
            raise CheckpointError(
                f"{path}: {size} bytes, the manifest says {record['bytes']} (truncated or overwritten)"
            )
        if checksums and sha256_file(path) != record["sha256"]:
            raise CheckpointError(f"{path}: checksum does not match the manifest (the file is corrupt)")


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    """The switch: every listed file is already durable (`publish`), so one atomic rename makes the new
    version current."""
    write_json(directory / MANIFEST_NAME, manifest)


def collect_garbage(directory: Path, manifest: dict[str, Any]) -> list[str]:
    """Delete the files of earlier versions (and leftovers of interrupted updates); returns their names."""
    removed = []
    for path in directory.iterdir():
        if path.is_file() and _OWNED.match(path.name) and path.name not in manifest["files"]:
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return sorted(removed)


def remove_generation(directory: Path, generation: int) -> None:
    """Delete the files of a version whose switch never happened (an update that failed part-way)."""
    marker = f".{generation:06d}."
    for path in directory.iterdir():
        if path.is_file() and _OWNED.match(path.name) and marker in path.name:
            path.unlink(missing_ok=True)


@contextmanager
def writer_lock(directory: Path) -> Iterator[None]:
    """One writer at a time per index folder: a second concurrent update fails instead of mixing versions."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LOCK_NAME, "a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise AladinError(f"{directory}: another process is updating this index") from exc
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
