"""Where an index keeps its global vectors: the interface every vector backend implements, and the registry
that names them (`IndexConfig.backend`).

- "faiss" (default, `aladin.index.faiss_backend`): the FAISS index in this process, one immutable file per
  version in the index folder.
- "milvus" (`aladin.index.milvus`): a Milvus collection, embedded (Milvus Lite) or on a server/cluster.

A new backend is one module with a `VectorBackend` subclass plus one line in `BACKEND_MODULES`; modules are
imported only when an index uses them (pymilvus is not imported for a FAISS index).

The region store, SQLite metadata and manifest stay in the index folder with any backend. An update hands
each backend its changes (`add`, `remove`), `save`s them before the manifest switch and `commit`s them after it
(`discard` when the update fails), so search sees a version only once its manifest is current.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, ClassVar

from aladin.errors import AladinError

if TYPE_CHECKING:
    import numpy as np

    from aladin.index.config import IndexConfig
    from aladin.index.metadata import ImageRecord

#: Backend name → "module:class" of its `VectorBackend`, imported on first use.
BACKEND_MODULES = {
    "faiss": "aladin.index.faiss_backend:FaissBackend",
    "milvus": "aladin.index.milvus:MilvusBackend",
}


def row_fields(image_id: int, record: ImageRecord) -> dict[str, Any]:
    """Metadata a filtered search can test on each row (an image, or a caption via the image it describes):
    `image_id`, `external_id`, `path` and `folder`, the name of the folder holding the image."""
    return {
        "image_id": int(image_id),
        "external_id": record.external_id,
        "path": record.path,
        "folder": PurePosixPath(record.path.replace("\\", "/")).parent.name,
    }


class VectorBackend(ABC):
    """The vectors of one side (images or captions): kNN by inner product, ids chosen by the index."""

    name: ClassVar[str]

    # ---- the backend as a whole (class methods: no index is open yet) ----------------------------------
    @classmethod
    @abstractmethod
    def create(cls, cfg: IndexConfig, kind: str, dim: int, directory: Path, model: str) -> VectorBackend:
        """An empty backend for a new index in `directory` built by the model with fingerprint `model`."""

    @classmethod
    @abstractmethod
    def open(
        cls,
        cfg: IndexConfig,
        kind: str,
        entry: dict[str, Any],
        directory: Path,
        manifest: dict[str, Any],
        tombstones: np.ndarray | None,
    ) -> VectorBackend:
        """One side of a published index, refusing one that does not match its manifest."""

    @classmethod
    def preflight(cls, cfg: IndexConfig, directory: Path, processes: int = 1) -> None:
        """Fail now, before hours of encoding, if an index with `cfg` cannot be written to `directory` by
        `processes` processes (e.g. an unreachable server). In-process backends have nothing to check."""
        return None

    @classmethod
    def user_uri(cls, uri: str) -> str:
        """`uri` as a user typed it on a command line (relative to the working directory) → as `IndexConfig`
        reads it."""
        return uri

    @classmethod
    def release_replaced(cls, directory: Path, old: dict[str, Any], new: dict[str, Any]) -> None:
        """After a rebuild's switch from manifest `old` (of this backend) to `new`: free what only `old` used
        outside the index folder (files inside go with `collect_garbage`). File-only backends have nothing."""
        return None

    # ---- one side of an open index ------------------------------------------------------------------
    @abstractmethod
    def add(self, ids: np.ndarray, vectors: np.ndarray, fields: list[dict[str, Any]]) -> None:
        """Stage vectors [n, dim] under `ids`, with each row's `row_fields`, for the next `save`."""

    @abstractmethod
    def remove(self, ids: np.ndarray) -> None:
        """Stage removing `ids` for the next `save`."""

    def relabel(self, ids: np.ndarray, fields: list[dict[str, Any]]) -> None:
        """Stage new `row_fields` for live `ids` (their file moved; the vectors stay) for the next `save`.
        Backends that hold no fields have nothing to do."""
        return None

    @abstractmethod
    def save(self, directory: Path, generation: int) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """Make the staged changes durable before the manifest switch; returns this side's manifest keys and the
        records of the files it wrote. Search keeps seeing the current version until `commit`."""

    @abstractmethod
    def commit(self) -> None:
        """The manifest switched: search now sees what the last `save` wrote."""

    @abstractmethod
    def discard(self) -> None:
        """The update failed: forget the staged changes."""

    @abstractmethod
    def search(
        self, queries: np.ndarray, k: int, where: str | None = None, ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k inner products per query, among rows matching `where` (a backend expression on `row_fields`; the
        milvus backend only) and among `ids` (the rows an `aladin.index.filters` filter chose), if given: scores
        [nq, k'] and ids [nq, k'], id -1 where there are fewer. With `ids`, k' = k whenever k of them are live."""

    @abstractmethod
    def fetch(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors [n, dim] of live `ids` (to move an index to another backend)."""

    @abstractmethod
    def set_search_params(self, nprobe: int, ef_search: int) -> None:
        """Runtime recall/speed knobs: IVF lists probed, HNSW candidate-list size."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """What `aladin index info` shows about the vectors."""

    @property
    @abstractmethod
    def ntotal(self) -> int:
        """Vectors held (for FAISS HNSW, removed ones included: it cannot delete)."""

    @property
    @abstractmethod
    def dim(self) -> int:
        """Dimension of the vectors."""


def backend_class(name: str) -> type[VectorBackend]:
    """The `VectorBackend` registered as `name` (its module imported now)."""
    if name not in BACKEND_MODULES:
        raise AladinError(f"backend: expected one of {', '.join(BACKEND_MODULES)}, got {name!r}")
    module, _, attribute = BACKEND_MODULES[name].partition(":")
    return getattr(importlib.import_module(module), attribute)


def release_replaced(directory: Path, old: dict[str, Any] | None, new: dict[str, Any]) -> None:
    """After a rebuild's switch, let the replaced version's backend free what only it used."""
    if old is not None:
        backend_class(old["index_config"].get("backend", "faiss")).release_replaced(directory, old, new)
