from __future__ import annotations

import numpy as np
import pytest

from aladin.index import IndexConfig
from aladin.index.vectors import VectorIndex


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    """Unit vectors of low intrinsic dimension, so approximate search is a real test (not uniform noise)."""
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(0).normal(size=(8, dim))
    x = rng.normal(size=(n, 8)) @ basis + 0.3 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize(("factory", "minimum"), [("IVF32,Flat", 0.9), ("HNSW16", 0.95)])
def test_approximate_search_recalls_the_exact_neighbours(factory: str, minimum: float) -> None:
    base, queries = clustered(4000, 32, 1), clustered(100, 32, 2)
    ids = np.arange(4000) + 1000
    exact = VectorIndex.empty(IndexConfig(), 32).with_changes(base, ids, np.zeros(0))
    approx = VectorIndex.empty(IndexConfig(factory=factory, nprobe=8, ef_search=64), 32)
    approx = approx.with_changes(base, ids, np.zeros(0))
    _, truth = exact.search(queries, 10)
    _, found = approx.search(queries, 10)
    recall = np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth, found, strict=True)])
    assert recall >= minimum


@pytest.mark.parametrize("factory", ["Flat", "IVF8,Flat", "HNSW8"])
def test_removed_ids_are_never_returned_and_versions_are_independent(factory: str) -> None:
    base = clustered(300, 16, 3)
    first = VectorIndex.empty(IndexConfig(factory=factory), 16).with_changes(
        base, np.arange(300), np.zeros(0)
    )
    second = first.with_changes(np.zeros((0, 16), np.float32), np.zeros(0), np.arange(0, 300, 2))
    _, ids = second.search(base[:20], 300)
    assert set(ids[ids >= 0].tolist()) <= set(range(1, 300, 2))
    assert len(second.tombstones) == (150 if factory.startswith("HNSW") else 0)  # HNSW cannot delete
    _, before = first.search(base[:1], 1)
    assert before[0, 0] == 0  # the earlier version still holds id 0
