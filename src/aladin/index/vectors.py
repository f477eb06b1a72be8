"""FAISS over the global vectors: built from the factory string, inner product, ids stable across updates."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np

from aladin.errors import AladinError, CheckpointError
from aladin.index.config import IndexConfig

#: Share of an HNSW index at or under which a filtered search scores the matching vectors directly: cheaper
#: than a graph walk through mostly refused nodes, which then comes back short anyway.
EXACT_SHARE = 0.02


def new_faiss_index(cfg: IndexConfig, dim: int) -> faiss.Index:
    """An empty index for `cfg.factory`. IVF keeps the caller's ids itself (and can remove them); Flat and HNSW
    are wrapped in IndexIDMap, which maps FAISS's positions to ids."""
    factory = cfg.factory if cfg.nlist else f"IDMap,{cfg.factory}"
    return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)


def _on_gpus(index: faiss.Index, cfg: IndexConfig) -> faiss.Index:
    """A GPU copy for searching when FAISS sees GPUs (HNSW has no GPU version); the CPU index stays the master."""
    if "HNSW" in cfg.factory or faiss.get_num_gpus() == 0:
        return index
    try:
        return faiss.index_cpu_to_all_gpus(index)
    except (AttributeError, RuntimeError):
        return index


class VectorIndex:
    """One version's FAISS index, its search copy and its tombstones (removed ids the index cannot drop)."""

    def __init__(self, index: faiss.Index, cfg: IndexConfig, tombstones: np.ndarray | None = None):
        self.cpu = index
        self.cfg = cfg
        self.tombstones = np.zeros(0, np.int64) if tombstones is None else np.asarray(tombstones, np.int64)
        self._selector: tuple[faiss.IDSelector, ...] = ()
        if len(self.tombstones):
            batch = faiss.IDSelectorBatch(self.tombstones)
            self._selector = (batch, faiss.IDSelectorNot(batch))  # the batch must outlive the Not wrapping it
        self.set_search_params(cfg.nprobe, cfg.ef_search)

    @classmethod
    def empty(cls, cfg: IndexConfig, dim: int) -> VectorIndex:
        return cls(new_faiss_index(cfg, dim), cfg)

    @classmethod
    def read(cls, path: Path, cfg: IndexConfig, tombstones: np.ndarray) -> VectorIndex:
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: cannot read FAISS index ({str(exc).splitlines()[0]})") from exc
        return cls(index, cfg, tombstones)

    @property
    def ntotal(self) -> int:
        return int(self.cpu.ntotal)

    @property
    def dim(self) -> int:
        return int(self.cpu.d)

    def set_search_params(self, nprobe: int, ef_search: int) -> None:
        """Runtime knobs: lists probed by IVF, candidate-list size of HNSW (more = better recall, slower)."""
        space = faiss.ParameterSpace()
        if self.cfg.nlist:
            space.set_index_parameter(self.cpu, "nprobe", nprobe)
        if "HNSW" in self.cfg.factory:
            space.set_index_parameter(self.cpu, "efSearch", ef_search)
        self.cfg = replace(self.cfg, nprobe=nprobe, ef_search=ef_search)
        self._search = _on_gpus(self.cpu, self.cfg)

    def with_changes(self, vectors: np.ndarray, ids: np.ndarray, removed: np.ndarray) -> VectorIndex:
        """A new version with `vectors` added under `ids` and `removed` ids gone; this one is left unchanged."""
        index = faiss.clone_index(self.cpu)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if len(vectors) and not index.is_trained:
            if len(vectors) < self.cfg.nlist:
                raise AladinError(
                    f"index factory {self.cfg.factory}: training needs at least {self.cfg.nlist} vectors, "
                    f"got {len(vectors)}; use fewer lists or 'Flat'"
                )
            index.train(vectors)
        if len(vectors):
            index.add_with_ids(vectors, np.asarray(ids, dtype=np.int64))
        tombstones = self.tombstones
        if len(removed):
            try:
                index.remove_ids(faiss.IDSelectorBatch(np.asarray(removed, dtype=np.int64)))
            except RuntimeError:  # HNSW cannot delete: search skips these ids instead
                tombstones = np.union1d(tombstones, removed)
        return VectorIndex(index, self.cfg, tombstones)

    def write(self, path: Path) -> None:
        faiss.write_index(self.cpu, str(path))

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k inner products per query: scores [nq, k] and ids [nq, k], id -1 where there are fewer. With
        `allowed` (live ids: removed ones are not passed), only among those, and k of them whenever that many are
        (see `_search_within`)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if allowed is not None:
            return self._search_within(queries, k, np.asarray(allowed, np.int64))
        k = max(1, min(k, self.ntotal))
        if not self.ntotal:
            return np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64)
        params = None
        if self._selector:
            params = faiss.SearchParametersHNSW(sel=self._selector[1], efSearch=self.cfg.ef_search)
        return self._search.search(queries, k, params=params)

    def _search_within(
        self, queries: np.ndarray, k: int, allowed: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """kNN among the `allowed` ids through a FAISS id selector (on the CPU index: GPU indexes take none). An
        approximate index can come back short when few items match (HNSW walks its graph through items the
        selector refuses; IVF finds too few in the lists it probes): those queries are searched again exactly."""
        k = max(1, min(k, len(allowed)))
        if not len(allowed) or not self.ntotal:
            return np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64)
        selector = faiss.IDSelectorBatch(allowed)
        if "HNSW" in self.cfg.factory and len(allowed) <= EXACT_SHARE * self.ntotal:
            return self._exact_within(queries, k, allowed, selector)  # the graph walk would mostly be wasted
        if self.cfg.nlist:
            params = faiss.SearchParametersIVF(sel=selector, nprobe=self.cfg.nprobe)
        elif "HNSW" in self.cfg.factory:
            params = faiss.SearchParametersHNSW(sel=selector, efSearch=max(self.cfg.ef_search, k))
        else:
            params = faiss.SearchParameters(sel=selector)
        scores, ids = self.cpu.search(queries, k, params=params)
        short = (ids >= 0).sum(axis=1) < k
        if short.any():
            scores[short], ids[short] = self._exact_within(queries[short], k, allowed, selector)
        return scores, ids

    def _exact_within(
        self, queries: np.ndarray, k: int, allowed: np.ndarray, selector: faiss.IDSelector
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k among `allowed`: IVF probing every list, otherwise the stored vectors of those ids scored
        directly (Flat and HNSW keep theirs in full, in the index wrapped by the id map)."""
        if self.cfg.nlist:
            params = faiss.SearchParametersIVF(sel=selector, nprobe=self.cfg.nlist)
            return self.cpu.search(queries, k, params=params)
        wrapper = faiss.downcast_index(self.cpu)
        id_map = faiss.vector_to_array(wrapper.id_map)
        positions = np.flatnonzero(np.isin(id_map, allowed))
        vectors = faiss.downcast_index(wrapper.index).reconstruct_batch(positions)
        scores = np.full((len(queries), k), -np.inf, np.float32)
        ids = np.full((len(queries), k), -1, np.int64)
        every = queries @ vectors.T
        top = np.argsort(-every, axis=1, kind="stable")[:, :k]
        scores[:, : top.shape[1]] = np.take_along_axis(every, top, axis=1)
        ids[:, : top.shape[1]] = id_map[positions][top]
        return scores, ids
