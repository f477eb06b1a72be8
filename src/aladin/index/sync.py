"""`aladin index sync`: make an index hold exactly the images of its folder, encoding only what changed.

A file whose size and mtime are those recorded when it was encoded is unchanged; any other is hashed. Against
the index that makes it new (encoded and added), changed (encoded again; its old id is removed), moved (the
same content as an indexed file that is gone: it keeps its id and vectors, only its path and external id
change), or merely touched (its new state is recorded). Indexed files no longer in the folder are removed.
Everything lands as one `IndexUpdate`: a sync stopped at any point leaves the previous version searchable, and
the next sync plans again from that version, so it finishes the job.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aladin.data.folder import Skipped, scan_image_folder
from aladin.encoders.image import ImageEncoder
from aladin.errors import AladinError
from aladin.index.builder import SKIPPED, encode_files
from aladin.index.index import SearchIndex
from aladin.index.metadata import FileState, ImageRecord, external_id_for
from aladin.index.sources import warn_skipped
from aladin.index.update import disk_generation

logger = logging.getLogger("aladin.index")

#: How long `watch_folder` waits for the changes to settle before it syncs (a copy of many photos is one sync).
DEBOUNCE_MS = 1600


@dataclass
class SyncPlan:
    """What a sync of `folder` changes in an index (absolute paths)."""

    folder: Path
    added: list[str] = field(default_factory=list)
    changed: list[tuple[int, str]] = field(default_factory=list)  # (id encoded before, path)
    removed: list[tuple[int, str]] = field(default_factory=list)  # (id, path it had)
    moved: list[tuple[int, str, str]] = field(default_factory=list)  # (id, old path, new path)
    touched: list[tuple[int, str]] = field(default_factory=list)  # same content, state (re)recorded
    states: dict[str, FileState] = field(default_factory=dict)  # of each file added, changed, moved, touched
    skipped: list[Skipped] = field(default_factory=list)  # files of the folder that cannot be indexed

    @property
    def changes(self) -> int:
        """Images added, changed, removed or moved (touched files change no search result)."""
        return len(self.added) + len(self.changed) + len(self.removed) + len(self.moved)

    def summary(self) -> str:
        counts = f"{len(self.added)} added, {len(self.changed)} changed, {len(self.removed)} removed, "
        counts += f"{len(self.moved)} moved"
        return counts + (f" ({len(self.touched)} touched, content unchanged)" if self.touched else "")

    def lines(self) -> list[str]:
        """One line per change, paths relative to the folder: what `--dry-run` prints."""
        name = self._name
        return [
            *(f"added    {name(path)}" for path in self.added),
            *(f"changed  {name(path)} (id {i})" for i, path in self.changed),
            *(f"removed  {name(path)} (id {i})" for i, path in self.removed),
            *(f"moved    {name(old)} -> {name(new)} (id {i})" for i, old, new in self.moved),
        ]

    def _name(self, path: str) -> str:
        return external_id_for(self.folder, path)


@dataclass
class SyncReport:
    """What a sync did: its plan, the ids of the images it encoded, the files it could not read."""

    plan: SyncPlan
    ids: list[int]
    unreadable: list[Skipped]
    generation: int  # of the index after the sync
    images: int  # live images after the sync

    def summary(self) -> str:
        failed = f"; {len(self.unreadable)} could not be read" if self.unreadable else ""
        return f"{self.plan.summary()}{failed}"


def plan_sync(index: SearchIndex, folder: str | Path) -> SyncPlan:
    """Compare `folder` with what `index` holds (writes nothing): the dry run of `sync_folder`."""
    folder = Path(os.path.abspath(folder))
    _check_folder(index, folder)
    files, skipped = scan_image_folder(folder)
    plan = SyncPlan(folder, skipped=skipped)
    indexed = index.meta.live_files()
    present: set[str] = set()
    for path in map(str, files):
        known = indexed.get(path)
        try:
            if known is None or known[1] is None or not known[1].same_stat(os.stat(path)):
                plan.states[path] = FileState.of(path)  # its content tells what it is
        except OSError:  # deleted (or made unreadable) since the folder was listed: as if it were not there
            continue
        present.add(path)
    gone = {path: known for path, known in indexed.items() if path not in present}
    by_hash: dict[str, list[tuple[int, str]]] = {}
    for path, (image_id, state) in sorted(gone.items()):
        if state is not None:
            by_hash.setdefault(state.sha256, []).append((image_id, path))
    for path, state in plan.states.items():
        known = indexed.get(path)
        if known is not None:
            image_id, recorded = known
            if recorded is None or recorded.sha256 == state.sha256:  # unknown: recorded before sync existed
                plan.touched.append((image_id, path))
            else:
                plan.changed.append((image_id, path))
        elif by_hash.get(state.sha256):
            image_id, old = by_hash[state.sha256].pop(0)
            del gone[old]
            plan.moved.append((image_id, old, path))
        else:
            plan.added.append(path)
    plan.removed = sorted((image_id, path) for path, (image_id, _) in gone.items())
    return plan


def apply_sync(
    index: SearchIndex,
    plan: SyncPlan,
    image_encoder: ImageEncoder | None = None,
    strict: bool = False,
    progress: bool = False,
) -> SyncReport:
    """Carry out `plan` (from `plan_sync` on this version of `index`) as one atomic update; no new version
    when it changes nothing."""
    warn_skipped(plan.skipped, strict)
    skipped_before = index.manifest.get(SKIPPED, [])
    if not plan.changes and not plan.touched and [s.to_json() for s in plan.skipped] == skipped_before:
        return SyncReport(plan, [], [], index.generation, len(index))
    try:
        with index.update() as up:
            up.remove_images([i for i, _ in plan.removed] + [i for i, _ in plan.changed])
            for image_id, _, path in plan.moved:
                up.move_image(image_id, ImageRecord(path, external_id_for(index.image_root, path)))
            kept = [(i, p) for i, p in plan.touched] + [(i, p) for i, _, p in plan.moved]
            up.record_files([i for i, _ in kept], [plan.states[p] for _, p in kept])
            paths = sorted(plan.added + [path for _, path in plan.changed])
            label = "sync" if progress else None
            ids, unreadable = encode_files(
                up, paths, [plan.states[p] for p in paths], image_encoder, strict, label
            )
            skipped = [s.to_json() for s in [*plan.skipped, *unreadable]]
            if not (plan.changed or plan.removed or plan.moved or plan.touched or ids):
                if skipped == skipped_before:
                    raise _Unchanged  # only files that still cannot be read were tried again
            up.manifest_entries[SKIPPED] = skipped
    except _Unchanged:
        pass
    return SyncReport(plan, ids, unreadable, index.generation, len(index))


class _Unchanged(Exception):
    """Raised inside an update that turned out to change nothing: it is discarded, no version is written."""


def sync_folder(
    index: SearchIndex,
    folder: str | Path,
    image_encoder: ImageEncoder | None = None,
    dry_run: bool = False,
    strict: bool = False,
    progress: bool = False,
) -> SyncReport:
    """Make `index` (loaded with its model) hold exactly the images under `folder`, encoding only new and
    changed files; with `dry_run` only say what would change."""
    plan = plan_sync(index, folder)
    if dry_run:
        return SyncReport(plan, [], [], index.generation, len(index))
    return apply_sync(index, plan, image_encoder, strict, progress)


def watch_folder(
    index: SearchIndex,
    folder: str | Path,
    on_sync: Callable[[SyncReport], None],
    stop: threading.Event | None = None,
    image_encoder: ImageEncoder | None = None,
    debounce_ms: int = DEBOUNCE_MS,
) -> None:
    """Sync now, then again whenever files under `folder` change (changes within `debounce_ms` of each other
    are one sync), until `stop` is set or Ctrl-C (KeyboardInterrupt, raised between syncs or inside one, whose
    update is then discarded). A sync that fails is logged and tried again at the next change."""
    import watchfiles

    folder = Path(os.path.abspath(folder))
    inside = Path(os.path.abspath(index.directory))

    def relevant(change: watchfiles.Change, path: str) -> bool:
        parts = Path(path).relative_to(folder).parts if Path(path).is_relative_to(folder) else ()
        return not Path(path).is_relative_to(inside) and not any(p.startswith(".") for p in parts)

    def once() -> None:
        nonlocal index
        try:
            if disk_generation(index.directory) != index.generation:  # changed by another command
                index = SearchIndex.load(index.directory, index.model, verify_checksums=False)
            on_sync(sync_folder(index, folder, image_encoder))
        except (AladinError, OSError) as exc:
            logger.error("aladin: sync of %s failed: %s (tried again at the next change)", folder, exc)

    once()
    for _ in watchfiles.watch(folder, watch_filter=relevant, debounce=debounce_ms, stop_event=stop):
        once()


def _check_folder(index: SearchIndex, folder: Path) -> None:
    """Sync mirrors the folder an index was built from (so a typo never empties an index)."""
    if index.has_texts:
        raise AladinError(
            f"{index.directory}: holds captions (built from a dataset); sync keeps indexes of image folders"
        )
    root = index.image_root
    if root is None or Path(os.path.abspath(root)) != folder:
        raise AladinError(
            f"{index.directory}: indexes the images of {root or 'no single folder'}, not {folder}; "
            "sync that folder, or build a new index of this one"
        )
    if not folder.is_dir():
        raise AladinError(f"{folder}: not a folder")
