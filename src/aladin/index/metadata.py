"""Item metadata in SQLite: what a hit shows (path, external id, captions) and which items were removed.

Each index version has its own database file, written once (a copy of the previous one plus the changes)
and then opened read-only, so a reader never sees a half-applied update.

Image paths are stored relative to the index's image root (the folder `index build` was given), recorded
absolute and relative to the index folder: paths resolve the same from any working directory, and an index
moved together with its photos finds them again. Indexes written before roots were recorded keep their paths
as they were stored (absolute, or relative to the working directory).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import astuple, dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from aladin.errors import AladinError, CheckpointError
from aladin.index.exif import camera_name, read_facts
from aladin.index.filters import Filter, to_sql

IMAGES, TEXTS = "images", "texts"

_SCHEMA = """
CREATE TABLE images (
    id INTEGER PRIMARY KEY, path TEXT NOT NULL, external_id TEXT NOT NULL,
    captions TEXT NOT NULL, deleted INTEGER NOT NULL DEFAULT 0,
    taken TEXT, make TEXT, model TEXT, gps INTEGER, orientation INTEGER, width INTEGER, height INTEGER
);
CREATE TABLE texts (
    id INTEGER PRIMARY KEY, image_id INTEGER NOT NULL REFERENCES images(id),
    caption TEXT NOT NULL, deleted INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX texts_by_image ON texts(image_id);
"""
_SETTINGS = "CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
# What each image file looked like when it was encoded (see `FileState`), for `aladin index sync`. Databases
# written before it existed have no such table: the next version written from one adds it (the migration),
# and until then their images read as of unknown state.
_FILES = """CREATE TABLE IF NOT EXISTS files (
    image_id INTEGER PRIMARY KEY REFERENCES images(id),
    size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL
);"""
_ROOT, _ROOT_FROM_INDEX = "image_root", "image_root_from_index"
#: The photo facts (`aladin.index.exif.PhotoFacts`) kept per image; indexes written before them have none
#: (NULL: unknown), and their next version gains the columns.
_FACTS = {
    "taken": "TEXT",
    "make": "TEXT",
    "model": "TEXT",
    "gps": "INTEGER",
    "orientation": "INTEGER",
    "width": "INTEGER",
    "height": "INTEGER",
}


@dataclass(frozen=True)
class ImageRecord:
    """One indexed image as given to the index: where it is, the caller's id for it, its captions if known."""

    path: str
    external_id: str
    captions: tuple[str, ...] = ()


@dataclass(frozen=True)
class FileState:
    """An image file as it was when encoded: size and mtime tell cheaply that it may have changed, the content
    hash confirms it (and recognises the file again after a move or rename)."""

    size: int
    mtime_ns: int
    sha256: str

    @classmethod
    def of(cls, path: str | Path) -> FileState:
        """The state of the file at `path` now: stat first, so that a change during hashing shows next time."""
        st = os.stat(path)
        with open(path, "rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
        return cls(st.st_size, st.st_mtime_ns, digest)

    def same_stat(self, st: os.stat_result) -> bool:
        """Whether `st` (an `os.stat` of the file) shows the size and mtime recorded: then it is unchanged."""
        return (self.size, self.mtime_ns) == (st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class TextRecord:
    """One indexed caption and the image id it describes."""

    image_id: int
    caption: str


def id_array(ids: Iterable[int], where: str | Path) -> np.ndarray:
    """Item ids as int64, refusing in one line one that no index can hold (negative or beyond int64)."""
    ids = list(ids)
    bad = [i for i in ids if not 0 <= int(i) < 2**63]
    if bad:
        raise AladinError(f"{where}: no item with id {bad[0]} (ids are whole numbers from 0)")
    return np.asarray(ids, dtype=np.int64)


def external_id_for(root: str | Path | None, path: str | Path) -> str:
    """The id a user filters on for an image file: its path relative to the index's image `root`, with posix
    separators, whichever command indexed it (`index build` or `index add`); its absolute path when it lies
    outside `root` or the index has none."""
    path = Path(path).absolute()
    if root is not None:
        try:
            return path.relative_to(Path(root).absolute()).as_posix()
        except ValueError:
            pass
    return path.as_posix()


@dataclass(frozen=True)
class MissingFiles:
    """Indexed images whose file is not on disk (any more): said at `search`/`serve` start-up."""

    missing: list[str]
    total: int
    root: str

    def __str__(self) -> str:
        return f"{len(self.missing)} of {self.total} indexed files are missing under {self.root}"


class Metadata:
    """A read-only view of one version's database (or an empty one for an index not yet written).

    `image_root`: the absolute folder relative image paths are stored under (None for an index that records
    none); set it on an empty one before the first write to store paths relative to it.
    """

    def __init__(self, connection: sqlite3.Connection, image_root: Path | None = None):
        self.connection = connection
        self.image_root = image_root
        self._facts_view()

    def _facts_view(self) -> None:
        """The temporary view `image_facts` filters run on (`aladin.index.filters`): per image its facts (NULL in
        a database written before they were kept), folder name, file type and full path (posix)."""
        c = self.connection
        c.create_function("aladin_path", 1, lambda p: Path(self.resolve(p)).as_posix())
        c.create_function("aladin_folder", 1, lambda p: _posix(p).parent.name, deterministic=True)
        c.create_function("aladin_type", 1, lambda p: _posix(p).suffix[1:].lower(), deterministic=True)
        c.create_function("aladin_camera", 2, camera_name, deterministic=True)
        held = {row[1] for row in c.execute("PRAGMA main.table_info(images)")}
        facts = ", ".join(f"{n if n in held else 'NULL'} AS {n}" for n in _FACTS)
        camera = "aladin_camera(make, model)" if {"make", "model"} <= held else "NULL"
        c.execute(
            "CREATE TEMP VIEW image_facts AS SELECT id, deleted, aladin_path(path) AS path, "
            f"aladin_folder(path) AS folder, aladin_type(path) AS type, {facts}, {camera} AS camera "
            "FROM main.images"
        )

    @classmethod
    def empty(cls) -> Metadata:
        connection = sqlite3.connect(":memory:", check_same_thread=False)
        connection.executescript(_SCHEMA + _SETTINGS + _FILES)
        return cls(connection)

    @classmethod
    def open(cls, path: Path) -> Metadata:
        uri = f"{path.resolve().as_uri()}?mode=ro&immutable=1"
        try:
            connection = sqlite3.connect(uri, uri=True, check_same_thread=False)
            connection.execute("SELECT count(*) FROM images").fetchone()
            root = _find_root(connection, Path(os.path.abspath(path.parent)))
        except sqlite3.DatabaseError as exc:
            raise CheckpointError(f"{path}: cannot read index metadata ({exc})") from exc
        return cls(connection, root)

    def resolve(self, stored: str) -> str:
        """Where the file of a stored image path is: under the image root when the path is relative to it."""
        if self.image_root is None or os.path.isabs(stored):
            return stored
        return str(self.image_root / stored)

    def _stored(self, path: str) -> str:
        """The form of `path` kept in the database: relative (posix) when it is inside the image root."""
        if self.image_root is not None and os.path.isabs(path) and Path(path).is_relative_to(self.image_root):
            return Path(path).relative_to(self.image_root).as_posix()
        return path

    def live_paths(self) -> set[str]:
        """The absolute file path of every live image (to tell whether a file is already indexed)."""
        rows = self.connection.execute("SELECT path FROM images WHERE deleted = 0").fetchall()
        return {os.path.abspath(self.resolve(row[0])) for row in rows}

    def missing_files(self) -> MissingFiles:
        """Live images whose file is missing; the `search` and `serve` commands say how many at start-up."""
        paths = sorted(self.live_paths())
        missing = [path for path in paths if not os.path.isfile(path)]
        root = self.image_root or (os.path.commonpath([os.path.dirname(p) for p in paths]) if paths else "")
        return MissingFiles(missing, len(paths), str(root))

    def live_files(self) -> dict[str, tuple[int, FileState | None]]:
        """Absolute file path → (id, recorded `FileState`, None if unknown) of every live image."""
        query = (
            "SELECT i.id, i.path, f.size, f.mtime_ns, f.sha256 FROM images i "
            "LEFT JOIN files f ON f.image_id = i.id WHERE i.deleted = 0"
        )
        try:
            rows = self.connection.execute(query).fetchall()
        except sqlite3.OperationalError:  # written before file states were recorded
            rows = [
                (*row, None, None, None)
                for row in self.connection.execute("SELECT id, path FROM images WHERE deleted = 0")
            ]
        return {
            os.path.abspath(self.resolve(path)): (
                i,
                None if digest is None else FileState(size, mtime, digest),
            )
            for i, path, size, mtime, digest in rows
        }

    def close(self) -> None:
        self.connection.close()

    def _rows(self, query: str, ids: Iterable[int]) -> list[tuple]:
        ids = [int(i) for i in ids]
        out: list[tuple] = []
        for start in range(0, len(ids), 500):  # stay under SQLite's limit on bound parameters
            part = ids[start : start + 500]
            marks = ",".join("?" * len(part))
            out.extend(self.connection.execute(query.format(marks=marks), part).fetchall())
        return out

    def images(self, ids: Iterable[int]) -> dict[int, ImageRecord]:
        rows = self._rows("SELECT id, path, external_id, captions FROM images WHERE id IN ({marks})", ids)
        return {row[0]: ImageRecord(self.resolve(row[1]), row[2], tuple(json.loads(row[3]))) for row in rows}

    def texts(self, ids: Iterable[int]) -> dict[int, TextRecord]:
        rows = self._rows("SELECT id, image_id, caption FROM texts WHERE id IN ({marks})", ids)
        return {row[0]: TextRecord(row[1], row[2]) for row in rows}

    def ids(self, table: str, deleted: bool = False) -> np.ndarray:
        """Live (or, with `deleted`, removed) ids of `table`, ascending."""
        rows = self.connection.execute(
            f"SELECT id FROM {_table(table)} WHERE deleted = ? ORDER BY id", (int(deleted),)
        ).fetchall()
        return np.array([row[0] for row in rows], dtype=np.int64)

    def missing(self, table: str, ids: Sequence[int]) -> list[int]:
        """Those of `ids` that are not live items of `table` (never added, or removed)."""
        rows = self._rows(f"SELECT id FROM {_table(table)} WHERE deleted = 0 AND id IN ({{marks}})", ids)
        live = {row[0] for row in rows}
        return sorted({int(i) for i in ids} - live)

    def texts_of(self, image_ids: Sequence[int]) -> np.ndarray:
        """Live caption ids describing `image_ids`: removed with them."""
        rows = self._rows("SELECT id FROM texts WHERE deleted = 0 AND image_id IN ({marks})", image_ids)
        return np.array(sorted(row[0] for row in rows), dtype=np.int64)

    def matching(self, table: str, where: Filter) -> np.ndarray:
        """Live ids of `table` whose image matches the filter `where` (a caption through the image it describes),
        ascending: the set a filtered search runs in."""
        sql, params = to_sql(where)
        query = (
            f"SELECT id FROM image_facts WHERE deleted = 0 AND ({sql}) ORDER BY id"
            if _table(table) == IMAGES
            else "SELECT id FROM texts WHERE deleted = 0 AND image_id IN "
            f"(SELECT id FROM image_facts WHERE deleted = 0 AND ({sql})) ORDER BY id"
        )
        try:
            rows = self.connection.execute(query, params).fetchall()
        except sqlite3.OperationalError as exc:  # e.g. a filter nested beyond what SQLite parses
            raise AladinError(f"filter {where}: the index's database cannot run it ({exc})") from exc
        return np.array([row[0] for row in rows], dtype=np.int64)

    def count(self, table: str, deleted: bool = False) -> int:
        query = f"SELECT count(*) FROM {_table(table)} WHERE deleted = ?"
        return int(self.connection.execute(query, (int(deleted),)).fetchone()[0])

    def write_version(
        self,
        path: Path,
        images: Sequence[tuple[int, ImageRecord]],
        texts: Sequence[tuple[int, TextRecord]],
        removed_images: np.ndarray,
        removed_texts: np.ndarray,
        moved: Sequence[tuple[int, ImageRecord]] = (),
        files: Sequence[tuple[int, FileState]] = (),
    ) -> None:
        """Write the next version to `path`: this database plus the changes (this one stays as it is). `moved`:
        images whose file moved (new path and external id, same id); `files`: the file state of images."""
        target = sqlite3.connect(path)
        try:
            self.connection.backup(target)
            with target:
                target.execute(_SETTINGS)
                target.execute(_FILES)
                held = {row[1] for row in target.execute("PRAGMA table_info(images)")}
                for name, kind in _FACTS.items():  # a database from before the facts gains their columns
                    if name not in held:
                        target.execute(f"ALTER TABLE images ADD COLUMN {name} {kind}")
                if self.image_root is not None:  # the root as found now: re-recorded after a move
                    from_index = os.path.relpath(self.image_root, os.path.abspath(path.parent))
                    target.executemany(
                        "INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)",
                        [(_ROOT, str(self.image_root)), (_ROOT_FROM_INDEX, from_index)],
                    )
                target.executemany(
                    f"INSERT INTO images (id, path, external_id, captions, {', '.join(_FACTS)}) "
                    f"VALUES (?, ?, ?, ?, {', '.join('?' * len(_FACTS))})",
                    [
                        (i, self._stored(r.path), r.external_id, json.dumps(list(r.captions)))
                        + astuple(read_facts(r.path))
                        for i, r in images
                    ],
                )
                target.executemany(
                    "INSERT INTO texts (id, image_id, caption) VALUES (?, ?, ?)",
                    [(i, r.image_id, r.caption) for i, r in texts],
                )
                target.executemany(
                    "UPDATE images SET path = ?, external_id = ? WHERE id = ?",
                    [(self._stored(r.path), r.external_id, i) for i, r in moved],
                )
                target.executemany(
                    "INSERT OR REPLACE INTO files (image_id, size, mtime_ns, sha256) VALUES (?, ?, ?, ?)",
                    [(i, f.size, f.mtime_ns, f.sha256) for i, f in files],
                )
                for table, removed in ((IMAGES, removed_images), (TEXTS, removed_texts)):
                    target.executemany(
                        f"UPDATE {table} SET deleted = 1 WHERE id = ?", [(int(i),) for i in removed]
                    )
                target.executemany(
                    "DELETE FROM files WHERE image_id = ?", [(int(i),) for i in removed_images]
                )
        finally:
            target.close()


def _find_root(connection: sqlite3.Connection, index_dir: Path) -> Path | None:
    """The recorded image root; when that folder is gone, the one at its recorded place relative to the index
    folder (the index was moved with its photos); None for an index that records none."""
    try:
        settings = dict(connection.execute("SELECT key, value FROM settings").fetchall())
    except sqlite3.OperationalError:  # written before image roots were recorded
        return None
    if _ROOT not in settings:
        return None
    recorded = Path(settings[_ROOT])
    if not recorded.is_dir() and _ROOT_FROM_INDEX in settings:
        moved = Path(os.path.normpath(index_dir / settings[_ROOT_FROM_INDEX]))
        if moved.is_dir():
            return moved
    return recorded


def _posix(path: str) -> PurePosixPath:
    return PurePosixPath(path.replace("\\", "/"))


def _table(name: str) -> str:
    if name not in (IMAGES, TEXTS):
        raise AladinError(f"metadata: unknown table {name!r}")
    return name
