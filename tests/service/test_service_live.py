"""A running service follows its index folder: a new version is served without restart, thumbnails follow the
file rather than the id, and a file truncated under it answers 503 (not SIGBUS) until repaired or replaced."""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from index_fixtures import ToyImageEncoder, ToyTextEncoder, picture, write_images
from PIL import Image
from service_limits import LOCAL

from aladin.index import IndexConfig, SearchIndex, build_index
from aladin.model.aladin import AladinModel
from aladin.search import Searcher
from aladin.service.app import create_app
from aladin.service.config import ServiceConfig

EVERY_REQUEST = ServiceConfig(reload_check_ms=0)


@pytest.fixture
def live(searcher: Searcher) -> Iterator[TestClient]:
    with TestClient(create_app(searcher, EVERY_REQUEST), base_url=LOCAL) as client:
        yield client


def test_a_new_generation_is_served_without_restart(
    live: TestClient, built: SearchIndex, model: AladinModel, tmp_path: Path
) -> None:
    before = live.get("/stats").json()
    assert live.get("/api/items/0").status_code == 200
    writer = SearchIndex.load(built.directory, model)  # another process, as `aladin index remove` would be
    writer.remove([0])
    writer.add(write_images(tmp_path / "more", 2, first_seed=30), ToyImageEncoder(model.config.image_encoder))
    after = live.get("/stats").json()
    assert after["generation"] > before["generation"] and after["images"] == before["images"] + 1
    assert live.get("/api/items/0").status_code == 404
    hits = live.get("/api/search", params={"q": "red circle", "k": 20}).json()["hits"]
    assert 0 not in {h["id"] for h in hits} and {12, 13} <= {h["id"] for h in hits}


def thumbnail_of(client: TestClient, item_id: int) -> tuple[np.ndarray, str]:
    response = client.get(f"/api/items/{item_id}/thumbnail", params={"size": 64})
    assert response.status_code == 200
    pixels = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"), dtype=float)
    return pixels, response.headers["etag"]


def closest(pixels: np.ndarray, seeds: range) -> int:
    return min(seeds, key=lambda s: np.abs(pixels - np.asarray(picture(s), dtype=float)).mean())


def test_thumbnails_follow_the_file_not_the_id_after_a_rebuild(
    tmp_path: Path, model: AladinModel, text_encoder: ToyTextEncoder
) -> None:
    out, cfg = tmp_path / "index", IndexConfig()
    first = build_index(write_images(tmp_path / "a", 3)[0].parent, model, out, cfg, progress=False)
    with TestClient(
        create_app(Searcher(first, model, text_encoder), EVERY_REQUEST), base_url=LOCAL
    ) as client:
        pixels, etag = thumbnail_of(client, 0)
        assert closest(pixels, range(40)) == 0
        again = client.get("/api/items/0/thumbnail", params={"size": 64}, headers={"if-none-match": etag})
        assert again.status_code == 304 and "no-cache" in again.headers["cache-control"]

        # rebuilt over other photos: id 0 is now another picture
        build_index(
            write_images(tmp_path / "b", 3, first_seed=20)[0].parent,
            model,
            out,
            cfg,
            overwrite=True,
            progress=False,
        )
        pixels, new_etag = thumbnail_of(client, 0)
        assert closest(pixels, range(40)) == 20 and new_etag != etag
        stale = client.get("/api/items/0/thumbnail", params={"size": 64}, headers={"if-none-match": etag})
        assert stale.status_code == 200


def store_file(index: SearchIndex) -> Path:
    """The memory-mapped region rows of the index's first segment."""
    return index.directory / index.manifest["collections"]["images"]["segments"][0]["data"]


def test_a_truncated_store_answers_503_and_recovers_when_repaired(
    live: TestClient, built: SearchIndex, caplog: pytest.LogCaptureFixture
) -> None:
    path = store_file(built)
    good = path.read_bytes()
    assert live.get("/api/search", params={"q": "red circle"}).status_code == 200
    with caplog.at_level(logging.INFO, logger="aladin.service"):
        os.truncate(path, 0)  # reading the mapped pages now would be SIGBUS
        for url, params in [("/api/search", {"q": "red circle"}), ("/api/explain", {"q": "red", "id": 2})]:
            response = live.get(url, params=params)
            assert response.status_code == 503, url
            assert "truncated" in response.json()["detail"] and response.headers["retry-after"]
        assert live.get("/health").status_code == 200
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and str(path) in errors[0]  # one line, once

        with open(path, "r+b") as handle:  # repaired in place
            handle.write(good)
        assert live.get("/api/search", params={"q": "red circle"}).status_code == 200
        assert any("readable again" in r.getMessage() for r in caplog.records)


def test_a_truncated_store_replaced_by_a_good_copy_is_reopened(live: TestClient, built: SearchIndex) -> None:
    path = store_file(built)
    good = path.read_bytes()
    os.truncate(path, 0)
    assert live.get("/api/explain", params={"q": "red", "id": 2}).status_code == 503
    copy = path.with_name("copy.tmp")
    copy.write_bytes(good)
    os.replace(
        copy, path
    )  # a new inode: the old mapping still sees the truncated file, so it must be reopened
    response = live.get("/api/explain", params={"q": "red", "id": 2})
    assert response.status_code == 200 and len(response.json()["similarity"]) == 1


def test_a_generation_written_by_sync_is_served_without_restart(
    tmp_path: Path, model: AladinModel, text_encoder: ToyTextEncoder
) -> None:
    from aladin.index.sync import sync_folder

    photos = write_images(tmp_path / "photos", 4)[0].parent
    first = build_index(photos, model, tmp_path / "index", IndexConfig(), progress=False)
    with TestClient(
        create_app(Searcher(first, model, text_encoder), EVERY_REQUEST), base_url=LOCAL
    ) as client:
        before = client.get("/stats").json()
        (photos / "img001.png").rename(photos / "beach.png")
        (photos / "img002.png").unlink()
        write_images(photos, 1, first_seed=30)
        writer = SearchIndex.load(first.directory, model)  # another process, as `aladin index sync` would be
        sync_folder(writer, photos, image_encoder=ToyImageEncoder(model.config.image_encoder))

        after = client.get("/stats").json()
        assert after["generation"] == before["generation"] + 1 and after["images"] == before["images"]
        assert client.get("/api/items/1").json()["external_id"] == "beach.png"  # moved: same id
        assert closest(thumbnail_of(client, 1)[0], range(40)) == 1
        assert client.get("/api/items/2").status_code == 404
        assert client.get("/api/items/4").json()["external_id"] == "img030.png"
