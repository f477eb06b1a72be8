"""The batching model worker: concurrent searches run as one batch and each gets what it would have got alone;
a bad request fails alone; a full queue still answers 503 at once; a client gone away costs the others nothing."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest
from fastapi.testclient import TestClient
from index_fixtures import picture
from service_limits import LIMITS, LOCAL, assert_same_hits

from aladin.errors import AladinError
from aladin.search import Searcher
from aladin.service.app import create_app
from aladin.service.config import ServiceConfig
from aladin.service.worker import ModelWorker

QUERIES = ["red circle", "blue square on the right", "a big dog", "small green star", "cat", "two red birds"]
#: Batching on, with a wait long enough that a burst of requests from threads reliably lands in shared batches.
BATCHING = replace(LIMITS, queue_size=16, max_batch=8, max_wait_ms=400)
UNBATCHED = replace(LIMITS, queue_size=16, max_batch=1)


@pytest.fixture
def batching(searcher: Searcher) -> Iterator[TestClient]:
    with TestClient(create_app(searcher, BATCHING), base_url=LOCAL) as client:
        yield client


@pytest.fixture
def unbatched(searcher: Searcher) -> Iterator[TestClient]:
    with TestClient(create_app(searcher, UNBATCHED), base_url=LOCAL) as client:
        yield client


def png(seed: int) -> bytes:
    out = io.BytesIO()
    picture(seed).save(out, format="PNG")
    return out.getvalue()


def burst(requests: Sequence, send) -> list:  # noqa: ANN001
    """All `requests` sent at once from their own threads."""
    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(send, requests))


def test_batched_text_searches_equal_sequential_ones(batching: TestClient, unbatched: TestClient) -> None:
    params = [{"q": q, "k": 5, "rerank": rerank} for q in QUERIES for rerank in (0, 8)]
    sequential = [unbatched.get("/api/search", params=p).json() for p in params]
    assert unbatched.get("/stats").json()["queue"]["largest_batch"] == 1  # max_batch 1: batching off
    responses = burst(params, lambda p: batching.get("/api/search", params=p))
    assert [r.status_code for r in responses] == [200] * len(params)
    queue = batching.get("/stats").json()["queue"]
    assert queue["largest_batch"] > 1 and queue["batched_requests"] > 1, queue
    assert queue["batches"] < len(params)
    bodies = [r.json() for r in responses]
    assert [b["rerank"] for b in bodies] == [s["rerank"] for s in sequential]
    assert_same_hits([b["hits"] for b in bodies], [s["hits"] for s in sequential])


def test_batched_image_searches_equal_sequential_ones_and_a_bad_upload_fails_alone(
    batching: TestClient, unbatched: TestClient
) -> None:
    uploads = [png(seed) for seed in range(5)]
    uploads.insert(2, b"this is not an image")

    def send(client: TestClient):  # noqa: ANN202
        return lambda data: client.post(
            "/api/search/image", params={"k": 4}, files={"file": ("q.png", data, "image/png")}
        )

    sequential = [send(unbatched)(data) for data in uploads]
    responses = burst(uploads, send(batching))
    assert (
        [r.status_code for r in responses]
        == [r.status_code for r in sequential]
        == [200, 200, 400, 200, 200, 200]
    )
    assert "not an image" in responses[2].json()["detail"]
    assert batching.get("/stats").json()["queue"]["largest_batch"] > 1
    good = [n for n, r in enumerate(responses) if r.status_code == 200]
    assert_same_hits(
        [responses[n].json()["hits"] for n in good], [sequential[n].json()["hits"] for n in good]
    )


def test_a_full_queue_answers_503_at_once_with_batching_on(batching: TestClient) -> None:
    gate = threading.Event()
    worker = batching.app.state.worker
    blockers = [worker.submit(gate.wait, 10) for _ in range(BATCHING.queue_size)]
    try:
        started = time.perf_counter()
        response = batching.get("/api/search", params={"q": "red circle"})
        elapsed = time.perf_counter() - started
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert elapsed < BATCHING.max_wait_ms / 1000  # refused, not queued behind the batch wait
    finally:
        gate.set()
    for blocker in blockers:
        blocker.result(timeout=5)
    assert batching.get("/api/search", params={"q": "red circle"}).status_code == 200


def test_a_full_queue_refuses_model_calls_before_parsing_them(batching: TestClient) -> None:
    """Under overload the refusals are most requests: they are answered by the request guard, before routing or
    validation (a request that would be a 422 is a 503), uploads unread, and counted; other endpoints still
    answer."""
    gate = threading.Event()
    worker = batching.app.state.worker
    assert batching.get("/api/search", params={"q": "red circle", "k": 0}).status_code == 422
    blockers = [worker.submit(gate.wait, 10) for _ in range(BATCHING.queue_size)]
    try:
        before = worker.stats()["rejected"]
        invalid = batching.get("/api/search", params={"q": "red circle", "k": 0})
        upload = batching.post("/api/search/image", files={"file": ("q.png", png(0), "image/png")})
        explain = batching.get("/api/explain", params={"q": "red circle", "id": 0})
        for response in (invalid, upload, explain):
            assert response.status_code == 503 and response.headers["retry-after"] == "1"
            assert response.json()["detail"].startswith("busy:")
            assert response.headers["x-content-type-options"] == "nosniff"
        assert worker.stats()["rejected"] == before + 3
        assert batching.get("/health").status_code == 200
    finally:
        gate.set()
    for blocker in blockers:
        blocker.result(timeout=5)
    assert batching.get("/api/search", params={"q": "red circle", "k": 0}).status_code == 422


def test_a_full_queue_turns_away_only_the_model_endpoints(batching: TestClient) -> None:
    """A path that merely starts like a model endpoint is not one: it gets its 404, uncounted as a refusal."""
    gate = threading.Event()
    worker = batching.app.state.worker
    blockers = [worker.submit(gate.wait, 10) for _ in range(BATCHING.queue_size)]
    try:
        before = worker.stats()["rejected"]
        for path in ("/api/searches", "/api/search-old", "/api/explained"):
            assert batching.get(path, params={"q": "red circle"}).status_code == 404
        assert worker.stats()["rejected"] == before
        assert batching.get("/api/search", params={"q": "red circle"}).status_code == 503
    finally:
        gate.set()
    for blocker in blockers:
        blocker.result(timeout=5)


def doubled(items: Sequence[int]) -> list[int]:
    """A batch function that fails as a whole when any item is negative, as encoding a bad query does."""
    if any(item < 0 for item in items):
        raise ValueError(f"bad item in {list(items)}")
    return [2 * item for item in items]


def test_a_request_failing_a_whole_batch_fails_alone_and_a_cancelled_one_is_skipped() -> None:
    worker = ModelWorker(size=8, max_batch=8, max_wait_ms=0)
    seen: list[list[int]] = []

    def run(items: Sequence[int]) -> list[int]:
        seen.append(list(items))
        return doubled(items)

    gate = threading.Event()
    try:
        blocker = worker.submit(gate.wait, 10)  # the model thread is busy while the batch queues up
        futures = [worker.submit_batched("double", run, item) for item in (1, -1, 3, 4)]
        assert futures[3].cancel()  # its client went away while it waited
        assert worker.stats()["pending"] == 4  # the blocker and three requests; the cancelled one left
        gate.set()
        blocker.result(timeout=5)
        assert futures[0].result(timeout=5) == 2 and futures[2].result(timeout=5) == 6
        with pytest.raises(ValueError, match="bad item"):
            futures[1].result(timeout=5)
        assert 4 not in [item for batch in seen for item in batch]  # the cancelled request never ran
        assert seen[0][:3] == [1, -1, 3] and [1] in seen and [3] in seen  # one batch, then each alone
    finally:
        gate.set()
        worker.close()


@pytest.mark.parametrize(("field", "value"), [("max_batch", 0), ("max_wait_ms", -1)])
def test_batching_settings_out_of_range_are_one_line(field: str, value: int) -> None:
    with pytest.raises(AladinError, match=f"service setting {field} must be >= "):
        ServiceConfig(**{field: value})


def test_serve_takes_the_batching_flags() -> None:
    from aladin.cli.main import build_parser

    args = build_parser().parse_args(["serve", "--index", "x", "--max-batch", "1", "--max-wait-ms", "5"])
    assert (args.max_batch, args.max_wait_ms) == (1, 5.0)
    defaults = build_parser().parse_args(["serve", "--index", "x"])
    assert (defaults.max_batch, defaults.max_wait_ms) == (
        ServiceConfig().max_batch,
        ServiceConfig().max_wait_ms,
    )


def test_searches_with_different_filters_never_share_a_batch(
    batching: TestClient, unbatched: TestClient
) -> None:
    filters = ["id<3", "id>=9", "id=4 or id=7", ""] * 2
    texts = [("/api/search", {"q": "red circle", "k": 3, "where": w}, None) for w in filters]
    images = [
        ("/api/search/image", {"k": 3, "where": w}, {"file": ("q.png", png(1), "image/png")}) for w in filters
    ]

    def send(client: TestClient):  # noqa: ANN202
        return lambda r: (
            client.get(r[0], params=r[1]) if r[2] is None else client.post(r[0], params=r[1], files=r[2])
        )

    requests = texts + images
    sequential = [send(unbatched)(r).json()["hits"] for r in requests]
    assert {h["id"] for h in sequential[0]} == {0, 1, 2} and {h["id"] for h in sequential[2]} == {4, 7}
    responses = burst(requests, send(batching))
    assert batching.get("/stats").json()["queue"]["largest_batch"] > 1
    assert_same_hits([r.json()["hits"] for r in responses], sequential)
