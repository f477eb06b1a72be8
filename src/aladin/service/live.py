"""The index a running server answers from: follows new versions on disk and never touches a damaged file.

Region and word stores are memory-mapped, so reading a file truncated under the server would kill the process
with SIGBUS and nothing logged. Before every access the files of the served version are compared with the
sizes the manifest recorded (a few `stat` calls): a mismatch answers 503 and logs one line, and the server
recovers by itself once the file is repaired in place, or replaced (by a new version, or by a copy with a new
inode, which is then re-opened). New versions (`index add`/`remove`, a rebuild) are noticed from the manifest's
inode, mtime and size, checked at most every `reload_check_ms`, and swapped in between requests.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from aladin.errors import AladinError
from aladin.index.duplicates import duplicate_groups
from aladin.index.index import SearchIndex
from aladin.index.manifest import MANIFEST_NAME
from aladin.search.searcher import Searcher
from aladin.service.config import ServiceConfig

log = logging.getLogger("aladin.service")
Stamp = tuple[int, int, int]  # inode, mtime (ns), size


class IndexUnavailable(Exception):
    """The served index cannot be read safely right now (a file is missing or truncated); answered with 503."""


def default_image_root(searcher: Searcher) -> Path:
    """The deepest folder that holds every live indexed image: thumbnails are served from inside it only."""
    # absolute but not resolved: a symlink inside the dataset that leads out of it is then refused
    folders = {os.path.dirname(path) for path in searcher.index.meta.live_paths()}  # one query, paths only
    return Path(os.path.commonpath(list(folders))) if folders else Path.cwd()


def _stamp(path: Path) -> Stamp | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


@dataclass(frozen=True)
class Served:
    """One index version as served: its searcher, the folder its files may be served from, and what its
    manifest and files looked like when it was opened."""

    searcher: Searcher
    image_root: Path
    manifest: Stamp | None
    files: dict[Path, tuple[int, int | None]]  # file → (bytes the manifest records, inode when opened)

    @property
    def generation(self) -> int:
        return self.searcher.index.generation

    def damage(self) -> tuple[str | None, bool]:
        """(what is wrong with the files, whether one was replaced since it was opened and must be re-opened)."""
        for path, (size, inode) in self.files.items():
            stamp = _stamp(path)
            if stamp is None:
                return f"{path} is missing", True
            if stamp[0] != inode:
                return None, True
            if stamp[2] != size:
                return (
                    f"{path} has {stamp[2]} bytes, the manifest says {size} (truncated or overwritten)",
                    False,
                )
        return None, False


def _group_duplicates(searcher: Searcher) -> None:
    """Group a newly served version's near-duplicates ahead of the first search, which the page always collapses
    (on a large index the grouping, one kNN search per photo, would otherwise stall that search)."""
    if searcher.duplicates is None:  # no threshold known for this model: searches do not collapse
        return
    try:
        duplicate_groups(searcher.index, searcher.duplicates)
    except Exception as exc:  # noqa: BLE001 - a search that collapses computes the groups again and reports it
        log.warning("grouping the near-duplicates ahead of the first search failed: %s", exc)


class LiveIndex:
    """Hands out the current `Served` version; thread-safe, checks cheap enough to run on every request."""

    def __init__(self, searcher: Searcher, config: ServiceConfig):
        self.config = config
        self.directory = Path(searcher.index.directory)
        self._interval = config.reload_check_ms / 1000
        self._lock = threading.Lock()
        self._problem: str | None = None  # what makes the service answer 503 now
        self._failed: str | None = None  # why the newest version on disk could not be opened
        self._served = self._open(searcher)
        self._next_check = time.monotonic() + self._interval

    def _open(self, searcher: Searcher) -> Served:
        index = searcher.index
        threading.Thread(target=_group_duplicates, args=(searcher,), daemon=True).start()
        files = {
            index.directory / name: int(record["bytes"]) for name, record in index.manifest["files"].items()
        }
        return Served(
            searcher,
            (self.config.image_root or default_image_root(searcher)).resolve(),
            _stamp(index.directory / MANIFEST_NAME),
            {path: (size, (_stamp(path) or (None,))[0]) for path, size in files.items()},
        )

    def current(self) -> Served:
        """The version to answer from, after switching to a newer one if due; raises IndexUnavailable."""
        with self._lock:
            now = time.monotonic()
            problem, replaced = self._served.damage()
            if replaced or problem or now >= self._next_check:
                self._next_check = now + self._interval
                if replaced or _stamp(self.directory / MANIFEST_NAME) != self._served.manifest:
                    problem = self._switch(problem, replaced)
            self._report(problem)
            if problem:
                raise IndexUnavailable(f"the index is damaged or being replaced ({problem}); retry shortly")
            return self._served

    def _switch(self, problem: str | None, replaced: bool) -> str | None:
        """Open the version on disk (sizes checked, not checksums: this runs between requests). When that fails
        the old version stays served, unless one of its files was replaced (it may be the damaged one).
        Returns what now stops the service, if anything."""
        old = self._served.searcher
        try:
            index = SearchIndex.load(self.directory, old.model, verify_checksums=False)
        except AladinError as exc:
            if replaced or problem:
                return str(exc)
            if str(exc) != self._failed:  # once per failure, not at every check
                log.error(
                    "aladin: cannot open the new version of %s (%s); still serving generation %d",
                    self.directory,
                    exc,
                    self._served.generation,
                )
            self._failed = str(exc)
            return None
        self._failed = None
        searcher = copy.copy(old)  # the same model and the encoders it has built, over the new version
        searcher.index = index
        self._served = self._open(searcher)
        log.info(
            "aladin: now serving generation %d of %s (%d images)",
            index.generation,
            self.directory,
            len(index),
        )
        return self._served.damage()[0]

    def _report(self, problem: str | None) -> None:
        """Log a problem once when it appears, and once when it is gone."""
        if problem and problem != self._problem:
            log.error("aladin: index %s unavailable: %s", self.directory, problem)
        elif not problem and self._problem:
            log.info(
                "aladin: index %s readable again (generation %d)", self.directory, self._served.generation
            )
        self._problem = problem
