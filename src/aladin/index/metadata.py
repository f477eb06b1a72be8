"""Item metadata in SQLite: what a hit shows (path, external id, captions) and which items were removed.

Each index version has its own database file, written once (a copy of the previous one plus the changes)
and then opened read-only, so a reader never sees a half-applied update.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aladin.errors import AladinError, CheckpointError

IMAGES, TEXTS = "images", "texts"

_SCHEMA = """
CREATE TABLE images (
    id INTEGER PRIMARY KEY, path TEXT NOT NULL, external_id TEXT NOT NULL,
    captions TEXT NOT NULL, deleted INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE texts (
    id INTEGER PRIMARY KEY, image_id INTEGER NOT NULL REFERENCES images(id),
    caption TEXT NOT NULL, deleted INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX texts_by_image ON texts(image_id);
"""


@dataclass(frozen=True)
class ImageRecord:
    """One indexed image as given to the index: where it is, the caller's id for it, its captions if known."""

    path: str
    external_id: str
    captions: tuple[str, ...] = ()


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


class Metadata:
    """A read-only view of one version's database (or an empty one for an index not yet written)."""

    def __init__(self, connection: sqlite3.Connection):
        self.connection = connection

    @classmethod
    def empty(cls) -> Metadata:
        connection = sqlite3.connect(":memory:", check_same_thread=False)
        connection.executescript(_SCHEMA)
        return cls(connection)

    @classmethod
    def open(cls, path: Path) -> Metadata:
        uri = f"{path.resolve().as_uri()}?mode=ro&immutable=1"
        try:
            connection = sqlite3.connect(uri, uri=True, check_same_thread=False)
            connection.execute("SELECT count(*) FROM images").fetchone()
        except sqlite3.DatabaseError as exc:
            raise CheckpointError(f"{path}: cannot read index metadata ({exc})") from exc
        return cls(connection)

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
        return {row[0]: ImageRecord(row[1], row[2], tuple(json.loads(row[3]))) for row in rows}

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
    ) -> None:
        """Write the next version to `path`: this database plus the changes (this one stays as it is)."""
        target = sqlite3.connect(path)
        try:
            self.connection.backup(target)
            with target:
                target.executemany(
                    "INSERT INTO images (id, path, external_id, captions) VALUES (?, ?, ?, ?)",
                    [(i, r.path, r.external_id, json.dumps(list(r.captions))) for i, r in images],
                )
                target.executemany(
                    "INSERT INTO texts (id, image_id, caption) VALUES (?, ?, ?)",
                    [(i, r.image_id, r.caption) for i, r in texts],
                )
                for table, removed in ((IMAGES, removed_images), (TEXTS, removed_texts)):
                    target.executemany(
                        f"UPDATE {table} SET deleted = 1 WHERE id = ?", [(int(i),) for i in removed]
                    )
        finally:
            target.close()


def _table(name: str) -> str:
    if name not in (IMAGES, TEXTS):
        raise AladinError(f"metadata: unknown table {name!r}")
    return name
