"""Collapsed search over HTTP: one hit per group of near-duplicates, with the count of the others."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from fastapi.testclient import TestClient

from aladin.search import Searcher


def add_copies(searcher: Searcher, dataset: Path, count: int = 2) -> Path:
    """Byte-identical copies of the first picture, added to the served index; returns the original."""
    original = dataset / "images" / "img000.png"
    copies = [dataset / "images" / f"img000-copy{n}.png" for n in range(count)]
    for copy in copies:
        shutil.copyfile(original, copy)
    searcher.index.add(copies, searcher.image_encoder)
    return original


def test_text_search_collapses_copies_and_still_returns_k(
    client: TestClient, searcher: Searcher, dataset: Path
) -> None:
    add_copies(searcher, dataset)  # 14 images, 12 distinct
    params = {"q": "red circle on the left", "k": 12, "rerank": 0}
    plain = client.get("/api/search", params=params).json()["hits"]
    assert all(h["similar"] == 0 for h in plain)
    copies = {h["id"] for h in plain if h["external_id"].startswith("img000")}
    assert len(copies) >= 2, "the first 12 kNN hits hold copies: collapsing must fetch more"
    hits = client.get("/api/search", params={**params, "collapse": "true"}).json()["hits"]
    assert len(hits) == 12
    assert len({h["external_id"].split("-")[0].removesuffix(".png") for h in hits}) == 12
    kept = [h for h in hits if h["external_id"].startswith("img000")]
    assert len(kept) == 1 and kept[0]["similar"] == 2
    assert kept[0]["id"] == next(h["id"] for h in plain if h["id"] in copies)  # the best-ranked copy
    assert all(h["similar"] == 0 for h in hits if h is not kept[0])


def test_image_upload_collapses_copies(client: TestClient, searcher: Searcher, dataset: Path) -> None:
    original = add_copies(searcher, dataset)
    upload = {"file": ("q.png", original.read_bytes(), "image/png")}
    hits = client.post("/api/search/image", params={"k": 3, "collapse": "true"}, files=upload).json()["hits"]
    assert len(hits) == 3 and hits[0]["external_id"].startswith("img000") and hits[0]["similar"] == 2
    assert not any(h["external_id"].startswith("img000") for h in hits[1:])


def test_the_served_version_is_grouped_before_its_first_search(searcher: Searcher) -> None:
    from aladin.index.duplicates import _CACHE
    from aladin.service.config import ServiceConfig
    from aladin.service.live import LiveIndex

    _CACHE.pop(searcher.index, None)
    LiveIndex(searcher, ServiceConfig())  # no search made
    deadline = time.monotonic() + 60
    while (searcher.index.generation, searcher.duplicates) not in _CACHE.get(searcher.index, {}):
        assert time.monotonic() < deadline, "the near-duplicate groups were not computed in the background"
        time.sleep(0.05)


def test_a_model_without_a_threshold_does_not_collapse(client: TestClient, searcher: Searcher) -> None:
    kept = searcher.duplicates
    searcher.duplicates = None
    try:
        assert client.get("/stats").json()["collapse"] is False  # the page then sends no collapse
        refused = client.get("/api/search", params={"q": "red circle", "collapse": "true"})
        assert refused.status_code == 400 and "near-duplicate threshold" in refused.json()["detail"]
    finally:
        searcher.duplicates = kept
    assert client.get("/stats").json()["collapse"] is True
