"""The FAISS backend: one side's global vectors in an in-process FAISS index, one immutable file per version in
the index folder (see `aladin.index.backend` for the interface)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faiss
import numpy as np

from aladin.errors import AladinError
from aladin.index.backend import VectorBackend
from aladin.index.config import IndexConfig
from aladin.index.manifest import generation_name, publish_with
from aladin.index.metadata import IMAGES
from aladin.index.vectors import VectorIndex

#: File stem of each side's FAISS index (vectors.000003.faiss, texts.000003.faiss).
FAISS_STEMS = {IMAGES: "vectors", "texts": "texts"}


class FaissBackend(VectorBackend):
    """In-process FAISS (`aladin.index.vectors.VectorIndex`): each version is a new copy written to its own file."""

    name = "faiss"

    def __init__(self, index: VectorIndex, kind: str, file: str | None = None):
        self.index, self.kind, self.file = index, kind, file
        self._added: list[tuple[np.ndarray, np.ndarray]] = []
        self._removed = np.zeros(0, np.int64)
        self._staged: tuple[VectorIndex, str] | None = None

    @classmethod
    def create(cls, cfg: IndexConfig, kind: str, dim: int, directory: Path, model: str) -> FaissBackend:
        return cls(VectorIndex.empty(cfg, dim), kind)

    @classmethod
    def open(
        cls,
        cfg: IndexConfig,
        kind: str,
        entry: dict[str, Any],
        directory: Path,
        manifest: dict[str, Any],
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

    def search(
        self, queries: np.ndarray, k: int, where: str | None = None, ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        if where:
            raise AladinError(
                "a Milvus filter expression needs an index on the milvus backend (FAISS holds no metadata "
                "fields): use --where, which works on both, or move the index with `aladin index migrate`"
            )
        return self.index.search(queries, k, ids)

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
