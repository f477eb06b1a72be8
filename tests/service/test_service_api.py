"""The JSON API through an HTTP client: results match the Searcher, and every bad input is a clear 4xx."""

from __future__ import annotations

import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from index_fixtures import ToyTextEncoder, picture, write_images
from PIL import Image
from service_limits import LIMITS, LOCAL, assert_same_hits

from aladin.index import IndexConfig, build_index
from aladin.model.aladin import AladinModel
from aladin.search import Searcher
from aladin.service.app import create_app
from aladin.service.config import ServiceConfig


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def upload(client: TestClient, data: bytes, **params: str | int) -> object:
    return client.post("/api/search/image", params=params, files={"file": ("query.png", data, "image/png")})


def test_text_search_matches_the_searcher(client: TestClient, searcher: Searcher) -> None:
    response = client.get("/api/search", params={"q": "red circle on the left", "k": 4, "rerank": 8})
    assert response.status_code == 200
    body = response.json()
    expected = searcher.search_text("red circle on the left", k=4, rerank=8)
    assert [h["id"] for h in body["hits"]] == [h.id for h in expected]
    np.testing.assert_allclose([h["score"] for h in body["hits"]], [h.score for h in expected], rtol=1e-6)
    assert all("path" not in h for h in body["hits"])  # no server file paths leave the service
    assert body["hits"][0]["thumbnail"] == f"/api/items/{expected[0].id}/thumbnail"

    knn = client.get("/api/search", params={"q": "red circle", "k": 3, "rerank": 0}).json()
    assert knn["rerank"] == 0 and all(h["score"] == h["first_stage_score"] for h in knn["hits"])


def test_image_upload_finds_the_same_picture_and_its_captions(client: TestClient) -> None:
    similar = upload(client, png(picture(4)), k=3)
    assert similar.status_code == 200, similar.text
    assert similar.json()["hits"][0]["id"] == 4

    captions = upload(client, png(picture(4)), target="texts", k=5).json()
    assert len(captions["hits"]) == 5 and all(h["caption"] for h in captions["hits"])


def test_item_details_and_thumbnail(client: TestClient) -> None:
    item = client.get("/api/items/3").json()
    assert item["name"] == "img003.png" and len(item["captions"]) == 2
    response = client.get(item["thumbnail"], params={"size": 64})
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    thumb = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"), dtype=float)
    assert thumb.shape == (16, 16, 3)  # never enlarged
    errors = [np.abs(thumb - np.asarray(picture(i), dtype=float)).mean() for i in range(12)]
    assert int(np.argmin(errors)) == 3  # the right picture, up to JPEG loss


def test_explain_gives_words_regions_and_the_alignment_score(client: TestClient, searcher: Searcher) -> None:
    body = client.get("/api/explain", params={"q": "red circle", "id": 2}).json()
    expected = searcher.explain("red circle", 2)
    assert body["words"] == ["red", "circle"] == expected.words
    np.testing.assert_allclose(body["similarity"], expected.similarity, atol=1e-4)
    np.testing.assert_allclose(body["query_similarity"], expected.query_similarity, atol=1e-4)
    assert np.asarray(body["boxes"]).shape == (4, 4)
    assert body["score"] == pytest.approx(expected.score)


def test_page_health_stats_and_docs(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and 'id="results"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/static/app.js").status_code == 200
    health = client.get("/health")
    assert health.json() == {"status": "ok"} and health.headers["x-content-type-options"] == "nosniff"
    stats = client.get("/stats").json()
    assert stats["images"] == 12 and stats["captions"] == 24 and stats["queue"]["size"] == LIMITS.queue_size
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/search", "/api/search/image", "/api/explain", "/api/items/{item_id}/thumbnail"} <= set(
        paths
    )
    assert client.get("/docs").status_code == 200


@pytest.mark.parametrize(
    ("params", "status", "message"),
    [
        ({"q": ""}, 400, "empty query"),
        ({"q": "   "}, 400, "empty query"),
        ({"q": "x" * (LIMITS.max_query_chars + 1)}, 400, "limit"),
        ({}, 422, "q"),
        ({"q": "red", "k": 0}, 422, "k"),
        ({"q": "red", "k": LIMITS.max_k + 1}, 422, "k"),
        ({"q": "red", "rerank": -1}, 422, "rerank"),
    ],
)
def test_bad_text_queries_are_4xx_json(client: TestClient, params: dict, status: int, message: str) -> None:
    response = client.get("/api/search", params=params)
    assert response.status_code == status
    assert message in str(response.json()["detail"])


def test_bad_uploads_are_4xx_json(client: TestClient) -> None:
    cases = [
        (b"", 400, "empty"),
        (b"definitely not an image", 400, "not an image"),
        (png(picture(1))[:60], 400, "not an image"),  # truncated
        (np.random.default_rng(0).bytes(LIMITS.max_upload_bytes + 1), 413, "over the limit"),
        (png(Image.new("RGB", (300, 300))), 413, "pixels"),  # small file, too many pixels
    ]
    for data, status, message in cases:
        response = upload(client, data)
        assert response.status_code == status, (message, response.text)
        assert message in response.json()["detail"]
    # far too large: refused from its Content-Length, before the body is read
    huge = client.post("/api/search/image", content=b"0" * 200_000, headers={"content-type": "image/png"})
    assert huge.status_code == 413
    chunked = client.post("/api/search/image", content=iter([b"abc"]))  # no Content-Length
    assert chunked.status_code == 411
    assert upload(client, png(picture(1)), target="faces").status_code == 422


def test_unknown_ids_are_404(client: TestClient) -> None:
    for url, params in [
        ("/api/items/99", {}),
        ("/api/items/99/thumbnail", {}),
        ("/api/explain", {"q": "red", "id": 99}),
    ]:
        response = client.get(url, params=params)
        assert response.status_code == 404 and "no image with id 99" in response.json()["detail"]
    assert client.get("/api/items/abc").status_code == 422


def test_no_path_traversal(client: TestClient, dataset: Path) -> None:
    secret = dataset / "captions.jsonl"  # beside the images, not an image
    attempts = [
        "/api/items/..%2F..%2Fcaptions.jsonl/thumbnail",
        "/api/items/%2e%2e/thumbnail",
        f"/api/items/{secret}/thumbnail",
        "/static/..%2F..%2F..%2Fpyproject.toml",
        "/static/%2e%2e/app.py",
    ]
    for url in attempts:
        response = client.get(url)
        assert response.status_code in (404, 422), url
        assert b"captions" not in response.content and b"create_app" not in response.content


def test_files_outside_the_image_root_are_refused(
    tmp_path: Path, model: AladinModel, text_encoder: ToyTextEncoder, searcher: Searcher
) -> None:
    outside = write_images(tmp_path / "outside", 1, first_seed=50)[0]
    folder = tmp_path / "linked"
    write_images(folder, 3)
    index = build_index(
        folder, model, tmp_path / "linked-index", IndexConfig(), text_encoder=text_encoder, progress=False
    )
    # the build leaves out links leading out of the folder; one made after it must still not be served
    (folder / "img002.png").unlink()
    (folder / "img002.png").symlink_to(outside)
    linked = next(i for i, r in index.meta.images(range(3)).items() if r.path.endswith("img002.png"))
    with TestClient(
        create_app(Searcher(index, model, text_encoder), ServiceConfig()), base_url=LOCAL
    ) as client:
        assert client.get(f"/api/items/{linked}/thumbnail").status_code == 403
        assert client.get(f"/api/items/{(linked + 1) % 3}/thumbnail").status_code == 200

    elsewhere = ServiceConfig(image_root=tmp_path / "outside")
    with TestClient(create_app(searcher, elsewhere), base_url=LOCAL) as client:
        response = client.get("/api/items/0/thumbnail")
        assert response.status_code == 403 and "outside the served image folder" in response.json()["detail"]


def test_image_to_text_needs_captions(
    tmp_path: Path, model: AladinModel, text_encoder: ToyTextEncoder
) -> None:
    index = build_index(
        write_images(tmp_path / "images", 2)[0].parent,
        model,
        tmp_path / "index",
        text_encoder=text_encoder,
        progress=False,
    )
    with TestClient(create_app(Searcher(index, model, text_encoder)), base_url=LOCAL) as client:
        response = upload(client, png(picture(0)), target="texts")
        assert response.status_code == 400 and "no captions" in response.json()["detail"]


def test_full_queue_answers_503_at_once_and_recovers(client: TestClient) -> None:
    gate = threading.Event()
    worker = client.app.state.worker
    blockers = [worker.submit(gate.wait, 10) for _ in range(LIMITS.queue_size)]  # the model thread is busy
    try:
        started = time.perf_counter()
        response = client.get("/api/search", params={"q": "red circle"})
        assert time.perf_counter() - started < 1.0
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert "busy" in response.json()["detail"]
        assert client.get("/health").status_code == 200  # answers without the model
        assert client.get("/stats").json()["queue"]["rejected"] == 1
    finally:
        gate.set()
    for blocker in blockers:
        blocker.result(timeout=5)
    assert client.get("/api/search", params={"q": "red circle"}).status_code == 200


def test_concurrent_requests_give_the_sequential_answers(client: TestClient) -> None:
    queries = ["red circle", "blue square on the right", "a big dog", "small green star", "cat"] * 2
    sequential = [client.get("/api/search", params={"q": q, "k": 5}).json()["hits"] for q in queries]
    with ThreadPoolExecutor(LIMITS.queue_size) as pool:
        responses = list(pool.map(lambda q: client.get("/api/search", params={"q": q, "k": 5}), queries))
    assert all(r.status_code == 200 for r in responses)
    assert_same_hits([r.json()["hits"] for r in responses], sequential)


def test_the_server_shows_only_what_a_build_would_index(
    tmp_path: Path, model: AladinModel, text_encoder: ToyTextEncoder
) -> None:
    folder = tmp_path / "photos"
    write_images(folder, 3)
    index = build_index(
        folder, model, tmp_path / "index", IndexConfig(), text_encoder=text_encoder, progress=False
    )
    changed = next(i for i, r in index.meta.images(range(3)).items() if r.path.endswith("img001.png"))
    (folder / "img001.png").write_bytes(b"no longer a picture")  # replaced after the build
    with TestClient(
        create_app(Searcher(index, model, text_encoder), ServiceConfig()), base_url=LOCAL
    ) as client:
        for url in (f"/api/items/{changed}/image", f"/api/items/{changed}/thumbnail"):
            response = client.get(url)
            assert response.status_code == 415 and "not an image" in response.json()["detail"], url
        assert client.get(f"/api/items/{(changed + 1) % 3}/image").status_code == 200


def test_where_filters_text_and_image_search_in_either_form(client: TestClient, searcher: Searcher) -> None:
    text = client.get("/api/search", params={"q": "red circle", "k": 5, "where": "id<3 or path~img011"})
    assert text.status_code == 200 and sorted(h["id"] for h in text.json()["hits"]) == [0, 1, 2, 11]
    assert [h["id"] for h in text.json()["hits"]] == [
        h.id for h in searcher.search_text("red circle", 5, where="id<3 or path~img011")
    ]
    as_json = client.get("/api/search", params={"q": "red circle", "where": '{"id": {">=": 10}}'})
    assert sorted(h["id"] for h in as_json.json()["hits"]) == [10, 11]
    captions = upload(client, png(picture(4)), target="texts", k=3, where="id=4")
    assert [h["image_id"] for h in captions.json()["hits"]] == [4, 4]  # its two captions, no more
    for where, message in [
        ("id<", "filter 'id<': column 4: expected a whole number after <, found the end"),
        ('{"id": {"<": "x"}}', "where.id['<']: expected a whole number for id, got 'x'"),
        ('{"id": ', "where: not valid JSON"),
    ]:
        bad = client.get("/api/search", params={"q": "red circle", "where": where})
        assert bad.status_code == 400 and bad.json()["detail"].startswith(message), bad.json()


def test_min_score_cuts_the_hits_and_needs_a_calibration(client: TestClient, searcher: Searcher) -> None:
    from calibration_fixtures import calibrate

    params = {"q": "red circle", "k": 5}
    answer = client.get("/api/search", params={**params, "min_score": 0.5})
    assert answer.status_code == 400 and "no calibration" in answer.json()["detail"]
    assert all(h["confidence"] is None for h in client.get("/api/search", params=params).json()["hits"])
    calibrate(searcher.model)
    hits = client.get("/api/search", params=params).json()["hits"]
    confidences = [h["confidence"] for h in hits]
    assert None not in confidences
    cut = sorted(confidences)[2]
    kept = client.get("/api/search", params={**params, "min_score": cut}).json()["hits"]
    assert [h["id"] for h in kept] == [h["id"] for h in hits if h["confidence"] >= cut] and len(kept) == 3
    assert client.get("/api/search", params={**params, "min_score": 1.5}).status_code == 422
    image = upload(client, png(picture(4)), k=3, min_score=0.5)  # image → image has no confidence to cut on
    assert image.status_code == 400 and "image → image" in image.json()["detail"]
    captions = upload(client, png(picture(4)), k=3, target="texts", min_score=0)
    assert captions.status_code == 200 and all(h["confidence"] is not None for h in captions.json()["hits"])
