"""Near-duplicate photos (re-encodes, resizes, small crops, burst shots) found from an index's image vectors.

Each live image is linked to those of its `DuplicateConfig.neighbours` nearest images (the index's own kNN search
over the global vectors, batched: exact on Flat, as fast as search on IVF/HNSW) whose cosine is at least
`DuplicateConfig.threshold`; a group is a connected component of those links (union-find), so a copy of a copy
joins its original's group and a burst larger than `neighbours` is still one group through its members' links.

Groups are computed on first use and cached per index version (`duplicate_groups`), not stored: removing a
photo can split a group, and recomputing from the vectors is the one rule that is always right. Search reads
the cache to collapse a group to its best-ranked member (`aladin.search.Searcher`, `collapse=True`).
"""

from __future__ import annotations

import os
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from aladin.index.config import DuplicateConfig
from aladin.index.metadata import IMAGES

if TYPE_CHECKING:
    from aladin.index.index import SearchIndex


@dataclass(frozen=True)
class DuplicateMember:
    id: int
    path: str
    external_id: str
    similarity: float  # cosine with the group's best member (1.0 for that member)


@dataclass(frozen=True)
class DuplicateGroup:
    """One group: `members[0]` is the best copy to keep (most pixels, then the largest file, then the first
    indexed); `min_similarity` is the weakest link that holds the group together."""

    members: tuple[DuplicateMember, ...]
    min_similarity: float

    @property
    def best(self) -> DuplicateMember:
        return self.members[0]

    def to_json(self) -> dict[str, Any]:
        return {
            "best": self.best.id,
            "size": len(self.members),
            "min_similarity": self.min_similarity,
            "members": [vars(m) for m in self.members],
        }


@dataclass(frozen=True)
class GroupIndex:
    """Image id → its group: `group_of[i]` is a group number (an image in no group has none), `sizes[g]` its size."""

    group_of: dict[int, int]
    sizes: list[int]

    def similar(self, image_id: int) -> int:
        """How many other images share the group of `image_id` (0 when it has none)."""
        group = self.group_of.get(int(image_id))
        return 0 if group is None else self.sizes[group] - 1

    def first_of_each(self, ids: np.ndarray) -> np.ndarray:
        """Positions in the ranked `ids` of the first (best-ranked) image of each group, in rank order."""
        seen: set[tuple[str, int]] = set()
        keep = []
        for position, image_id in enumerate(ids.tolist()):
            group = self.group_of.get(image_id)
            key = ("image", image_id) if group is None else ("group", group)
            if key not in seen:
                seen.add(key)
                keep.append(position)
        return np.asarray(keep, dtype=np.int64)


@dataclass(frozen=True)
class LinkedPairs:
    """Live image `ids` [n], their normalised `vectors` [n, d], the linked `pairs` [p, 2] (positions in `ids`,
    a < b) and each pair's cosine [p]."""

    ids: np.ndarray
    vectors: np.ndarray
    pairs: np.ndarray
    cosines: np.ndarray


def image_features(
    index: SearchIndex, feature: str = "global", batch: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """The live image ids and their L2-normalised vectors [n, d] of kind `feature` (see `FEATURES`)."""
    ids = index.meta.ids(IMAGES)
    if feature == "global":
        vectors = index.collection(IMAGES).vectors.fetch(ids).astype(np.float32, copy=False)
    else:
        parts = []
        for start in range(0, len(ids), batch):
            rows, mask = index.lookup(IMAGES, ids[start : start + batch])
            mask = mask.unsqueeze(-1).float()
            parts.append(((rows.float() * mask).sum(1) / mask.sum(1).clamp(min=1)).numpy())
        vectors = np.concatenate(parts) if parts else np.zeros((0, index.collection(IMAGES).entry["row_dim"]))
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return ids, (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def similar_pairs(vectors: np.ndarray, threshold: float, batch: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Every pair (i < j) of rows of the normalised `vectors` with cosine ≥ `threshold`: positions [p, 2] and
    cosines [p], from a matrix product `batch` rows at a time (memory stays at batch × n)."""
    x = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    pairs, cosines = [], []
    with torch.inference_mode():
        for start in range(0, len(x), batch):
            block = x[start : start + batch] @ x.T
            rows, cols = torch.nonzero(block >= threshold, as_tuple=True)
            upper = cols > rows + start
            rows, cols = rows[upper], cols[upper]
            pairs.append(torch.stack([rows + start, cols], dim=1).numpy())
            cosines.append(block[rows, cols].numpy())
    if not pairs:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
    return np.concatenate(pairs).astype(np.int64), np.concatenate(cosines).astype(np.float32)


def connected_groups(n: int, pairs: np.ndarray) -> list[list[int]]:
    """Connected components of `n` nodes linked by `pairs` (union-find), those of two or more nodes only, each
    sorted, ordered by their first node."""
    parent = list(range(n))

    def root(node: int) -> int:
        while parent[node] != node:
            parent[node] = parent[parent[node]]  # path halving keeps the trees shallow
            node = parent[node]
        return node

    for a, b in pairs.tolist():
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    components: dict[int, list[int]] = {}
    for node in range(n):
        components.setdefault(root(node), []).append(node)
    return sorted((c for c in components.values() if len(c) > 1), key=lambda c: c[0])


def _quality(path: str) -> tuple[int, int]:
    """(pixels, bytes) of an image file, read from its header; (0, 0) when it cannot be read."""
    try:
        with Image.open(path) as image:
            return image.width * image.height, os.path.getsize(path)
    except (OSError, ValueError, Image.DecompressionBombError):
        return 0, 0


def linked_pairs(index: SearchIndex, cfg: DuplicateConfig, batch: int = 1024) -> LinkedPairs:
    """The live images and every pair of them linked as near-duplicates under `cfg`."""
    if cfg.feature == "regions":
        ids, vectors = image_features(index, cfg.feature, batch)
        return LinkedPairs(ids, vectors, *similar_pairs(vectors, cfg.threshold, batch))
    ids, vectors = image_features(index, cfg.feature)
    k = min(cfg.neighbours + 1, len(ids))  # + 1: an image finds itself
    pairs, cosines = [np.zeros((0, 2), np.int64)], [np.zeros(0, np.float32)]
    for start in range(0, len(ids), batch):
        scores, found = index.search(IMAGES, vectors[start : start + batch], k)
        rows = np.repeat(np.arange(start, start + len(found)), found.shape[1])
        linked = (found.ravel() >= 0) & (scores.ravel() >= cfg.threshold)
        rows, cols, cos = rows[linked], np.searchsorted(ids, found.ravel()[linked]), scores.ravel()[linked]
        other = rows != cols
        pairs.append(np.sort(np.stack([rows[other], cols[other]], axis=1), axis=1))
        cosines.append(cos[other].astype(np.float32))
    pairs_all, order = np.unique(np.concatenate(pairs), axis=0, return_index=True)  # a-b found from both ends
    return LinkedPairs(ids, vectors, pairs_all, np.concatenate(cosines)[order])


def find_duplicates(
    index: SearchIndex | str | Path, cfg: DuplicateConfig | None = None
) -> list[DuplicateGroup]:
    """The near-duplicate groups of an index (a loaded `SearchIndex` or its folder), largest first."""
    from aladin.index.index import SearchIndex

    if not isinstance(index, SearchIndex):
        index = SearchIndex.load(index, verify_checksums=False)
    linked = linked_pairs(index, cfg or DuplicateConfig())
    ids, vectors = linked.ids, linked.vectors
    components = connected_groups(len(ids), linked.pairs)
    owner = {node: g for g, component in enumerate(components) for node in component}
    weakest: dict[int, float] = {}
    for (a, _), cosine in zip(linked.pairs.tolist(), linked.cosines.tolist(), strict=True):
        weakest[owner[a]] = min(weakest.get(owner[a], 1.0), cosine)
    records = index.meta.images(ids[sorted(owner)].tolist())
    groups = []
    for g, component in enumerate(components):
        records_of = {node: records[int(ids[node])] for node in component}
        quality = {node: _quality(records_of[node].path) for node in component}
        ordered = sorted(component, key=lambda node: (-quality[node][0], -quality[node][1], node))
        best = vectors[ordered[0]]
        members = tuple(
            DuplicateMember(
                id=int(ids[node]),
                path=records_of[node].path,
                external_id=records_of[node].external_id,
                similarity=round(float(vectors[node] @ best), 6),
            )
            for node in ordered
        )
        groups.append(DuplicateGroup(members, round(weakest[g], 6)))
    return sorted(groups, key=lambda group: -len(group.members))


_CACHE: weakref.WeakKeyDictionary[Any, dict[tuple[int, DuplicateConfig], GroupIndex]] = (
    weakref.WeakKeyDictionary()
)
#: One grouping at a time: the service's background warm-up and a first collapsed search would otherwise both
#: compute the same version's groups.
_GROUPING = threading.Lock()


def duplicate_groups(index: SearchIndex, cfg: DuplicateConfig | None = None) -> GroupIndex:
    """The group of every image of the index's current version, computed once per version and setting."""
    cfg = cfg or DuplicateConfig()
    key = (index.generation, cfg)
    with _GROUPING:
        cached = _CACHE.setdefault(index, {})
        found = cached.get(key)
        if found is None:
            linked = linked_pairs(index, cfg)
            components = connected_groups(len(linked.ids), linked.pairs)
            group_of = {int(linked.ids[n]): g for g, component in enumerate(components) for n in component}
            found = GroupIndex(group_of, [len(c) for c in components])
            cached.clear()  # an older version's groups are of no more use
            cached[key] = found
    return found
