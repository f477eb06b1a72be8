"""Where an index keeps its global vectors: one interface, two backends chosen by `IndexConfig.backend`.

- "faiss" (default): the FAISS index in this process, one immutable file per version in the index folder.
- "milvus" (`aladin.index.milvus`): a Milvus collection, embedded (Milvus Lite) or on a server/cluster.

The region store, SQLite metadata and manifest stay in the index folder with either backend. An update hands
each backend its changes (`add`, `remove`), `save`s them before the manifest switch and `commit`s them after it
(`discard` when the update fails), so search sees a version only once its manifest is current.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

import faiss
import numpy as np

from aladin.errors import AladinError
from aladin.index.config import IndexConfig
from aladin.index.manifest import generation_name, publish_with
from aladin.index.metadata import IMAGES, ImageRecord
from aladin.index.vectors import VectorIndex

#: File stem of each side's FAISS index (vectors.000003.faiss, texts.000003.faiss).
FAISS_STEMS = {IMAGES: "vectors", "texts": "texts"}


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

    @abstractmethod
    def add(self, ids: np.ndarray, vectors: np.ndarray, fields: list[dict[str, Any]]) -> None:
        """Stage vectors [n, dim] under `ids`, with each row's `row_fields`, for the next `save`."""

    @abstractmethod
    def remove(self, ids: np.ndarray) -> None:
        """Stage removing `ids` for the next `save`."""

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
    def search(self, queries: np.ndarray, k: int, where: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k inner products per query, among rows matching `where` (a filter on `row_fields`) if given:
        scores [nq, k'] and ids [nq, k'], id -1 where there are fewer."""

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


class FaissBackend(VectorBackend):
    """In-process FAISS (`aladin.index.vectors.VectorIndex`): each version is a new copy written to its own file."""

    name = "faiss"

    def __init__(self, index: VectorIndex, kind: str, file: str | None = None):
        self.index, self.kind, self.file = index, kind, file
        self._added: list[tuple[np.ndarray, np.ndarray]] = []
        self._removed = np.zeros(0, np.int64)
        self._staged: tuple[VectorIndex, str] | None = None

    @classmethod
    def open(
        cls,
        directory: Path,
        entry: dict[str, Any],
        cfg: IndexConfig,
        kind: str,
        tombstones: np.ndarray | None,
    ) -> FaissBackend:
        return cls(VectorIndex.read(directory / entry["vectors"], cfg, tombstones), kind, entry["vectors"])

    @property
    def cpu(self) -> faiss.Index:
        """The current FAISS index itself."""
        return self.index.cpu

    @property
    def ntotal(self) -> int:
        return self.index.ntotal

    @property
    def dim(self) -> int:
        return self.index.dim

    def add(self, ids: np.ndarray, vectors: np.ndarray, fields: list[dict[str, Any]]) -> None:
        self._added.append((np.asarray(ids, np.int64), np.asarray(vectors, np.float32)))

    def remove(self, ids: np.ndarray) -> None:
        self._removed = np.union1d(self._removed, np.asarray(ids, np.int64))

    def save(self, directory: Path, generation: int) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        if self.file is not None and not self._added and not len(self._removed):
            return self._entry(self.index, self.file), {}
        ids = [i for i, _ in self._added]
        vectors = [v for _, v in self._added]
        staged = self.index.with_changes(
            np.concatenate(vectors) if vectors else np.zeros((0, self.dim), np.float32),
            np.concatenate(ids) if ids else np.zeros(0, np.int64),
            self._removed,
        )
        name = generation_name(FAISS_STEMS[self.kind], generation, "faiss")
        record = publish_with(directory / name, staged.write)
        self._staged = (staged, name)
        return self._entry(staged, name), {name: record}

    @staticmethod
    def _entry(index: VectorIndex, file: str) -> dict[str, Any]:
        return {"vectors": file, "vectors_hold_deleted": bool(len(index.tombstones))}

    def commit(self) -> None:
        if self._staged is not None:
            self.index, self.file = self._staged
        self.discard()

    def discard(self) -> None:
        self._added, self._removed, self._staged = [], np.zeros(0, np.int64), None

    def search(self, queries: np.ndarray, k: int, where: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        if where:
            raise AladinError(
                "filtered search needs an index on the milvus backend (FAISS holds no metadata fields); "
                "move it there with `aladin index migrate`"
            )
        return self.index.search(queries, k)

    def fetch(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, np.int64)
        index = faiss.clone_index(self.index.cpu)  # the direct map below changes it
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:  # IVF keeps the ids itself: give it a map from id to stored vector
            ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
            return index.reconstruct_batch(ids) if len(ids) else np.zeros((0, self.dim), np.float32)
        id_map = faiss.vector_to_array(faiss.downcast_index(index).id_map)  # Flat and HNSW sit in an IDMap
        order = np.argsort(id_map)
        where = np.searchsorted(id_map, ids, sorter=order)
        if len(ids) and (where.max() >= len(id_map) or (id_map[order[where]] != ids).any()):
            raise AladinError(f"{self.kind}: some ids are not in the FAISS index")
        inner = faiss.downcast_index(faiss.downcast_index(index).index)
        return (
            np.stack([inner.reconstruct(int(p)) for p in order[where]])
            if len(ids)
            else np.zeros((0, self.dim), np.float32)
        )

    def set_search_params(self, nprobe: int, ef_search: int) -> None:
        self.index.set_search_params(nprobe, ef_search)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "file": self.file, "vectors": self.ntotal}


def new_backend(cfg: IndexConfig, kind: str, dim: int, directory: Path, model: str) -> VectorBackend:
    """An empty backend for a new index in `directory` built by the model with fingerprint `model`."""
    if cfg.backend == "milvus":
        from aladin.index.milvus import MilvusBackend

        return MilvusBackend.create(cfg, kind, dim, directory, model)
    return FaissBackend(VectorIndex.empty(cfg, dim), kind)


def open_backend(
    cfg: IndexConfig,
    kind: str,
    entry: dict[str, Any],
    directory: Path,
    manifest: dict[str, Any],
    tombstones: np.ndarray | None,
) -> VectorBackend:
    """The backend of one side of a published index, refusing one that does not match its manifest."""
    if cfg.backend == "milvus":
        from aladin.index.milvus import MilvusBackend

        return MilvusBackend.open(cfg, kind, entry, directory, manifest)
    return FaissBackend.open(directory, entry, cfg, kind, tombstones)


def release_replaced(directory: Path, old: dict[str, Any] | None, new: dict[str, Any]) -> None:
    """After a rebuild's switch, drop the Milvus collections only the replaced version used (FAISS files go with
    `collect_garbage`). A failure leaves the new index intact, so it is a warning, not an error."""
    if old is None or old.get("index_config", {}).get("backend") != "milvus":
        return
    from aladin.index.milvus import drop_collections

    kept = {(new["index_config"].get("uri"), e.get("collection")) for e in new["collections"].values()}
    stale = [
        e["collection"]
        for e in old["collections"].values()
        if (old["index_config"].get("uri"), e.get("collection")) not in kept
    ]
    try:
        drop_collections(old["index_config"].get("uri", ""), directory, stale)
    except AladinError as exc:
        warnings.warn(f"{directory}: the replaced index's collections were not dropped: {exc}", stacklevel=2)
