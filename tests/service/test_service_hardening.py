"""What a hostile page or request cannot do to the service: Host check, framing, CSP, ids out of range; and the
small visible parts: the offline /docs, the full-size image, the long-query warning."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from index_fixtures import ToyTextEncoder
from service_limits import LOCAL

from aladin.search import Searcher
from aladin.service.app import create_app
from aladin.service.config import ServiceConfig

TOO_BIG = "99999999999999999999"  # > 2**63 - 1


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("127.0.0.1:8000", 200),
        ("localhost", 200),
        ("LOCALHOST:8000", 200),
        ("[::1]:8000", 200),
        ("evil.example", 400),
        ("evil.example:8000", 400),
        ("127.0.0.1.evil.example", 400),
        ("", 400),
    ],
)
def test_only_loopback_host_names_by_default(client: TestClient, host: str, status: int) -> None:
    for url in ("/api/items/3/image", "/api/search?q=red", "/"):
        response = client.get(url, headers={"host": host})
        assert response.status_code == status, (url, host)
        if status == 400:
            assert "is not served here" in response.json()["detail"] and b"PNG" not in response.content


def test_the_bound_address_and_allowed_hosts_are_accepted(searcher: Searcher) -> None:
    config = ServiceConfig(host="192.168.1.5", allowed_hosts=("photos.lan",))
    with TestClient(create_app(searcher, config), base_url=LOCAL) as client:
        for host, status in [("192.168.1.5:8000", 200), ("photos.lan:8000", 200), ("other.lan", 400)]:
            assert client.get("/health", headers={"host": host}).status_code == status, host
    with TestClient(create_app(searcher, ServiceConfig(allowed_hosts=("*",))), base_url=LOCAL) as client:
        assert client.get("/health", headers={"host": "anything.example"}).status_code == 200


def test_allowed_hosts_must_be_names() -> None:
    from aladin.errors import AladinError

    for bad in ("http://photos.lan", "photos.lan:8000", ""):
        with pytest.raises(AladinError, match="allowed_hosts"):
            ServiceConfig(allowed_hosts=(bad,))


def test_html_cannot_be_framed_and_runs_only_its_own_scripts(client: TestClient) -> None:
    for url in ("/", "/docs"):
        response = client.get(url)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
        assert response.headers["x-frame-options"] == "DENY"
        policy = response.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in policy and "default-src 'self'" in policy
        assert "unsafe-inline" not in policy
        # no inline scripts (the policy would block them): every <script> loads a file
        assert all("src=" in tag for tag in re.findall(r"<script[^>]*>", response.text)), url
    assert client.get("/health").headers["x-frame-options"] == "DENY"


def test_docs_work_offline(client: TestClient) -> None:
    page = client.get("/docs").text
    for path in ("/api/search", "/api/search/image", "/api/explain", "/api/items/{item_id}/image"):
        assert f"{path}</code>" in page
    assert "http://" not in page and "https://" not in page and "cdn" not in page.lower()
    assert client.get("/redoc").status_code == 404  # FastAPI's CDN page is not served either


@pytest.mark.parametrize(
    ("url", "params"),
    [
        (f"/api/items/{TOO_BIG}", {}),
        (f"/api/items/{TOO_BIG}/thumbnail", {}),
        (f"/api/items/{TOO_BIG}/image", {}),
        (f"/api/items/-{TOO_BIG}", {}),
        ("/api/explain", {"q": "red", "id": TOO_BIG}),
        ("/api/explain", {"q": "red", "id": "-" + TOO_BIG}),
    ],
)
def test_ids_beyond_int64_are_4xx(client: TestClient, url: str, params: dict) -> None:
    assert client.get(url, params=params).status_code in (404, 422)


def test_full_size_image_is_the_original_file(client: TestClient, dataset: Path) -> None:
    hit = client.get("/api/search", params={"q": "red circle", "k": 1}).json()["hits"][0]
    assert hit["image"] == f"/api/items/{hit['id']}/image"
    item = client.get(f"/api/items/{hit['id']}").json()
    response = client.get(hit["image"])
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.content == (dataset / "images" / item["name"]).read_bytes()
    assert "sandbox" in response.headers["content-security-policy"]
    assert client.get("/api/items/99/image").status_code == 404


def test_a_query_longer_than_the_encoder_reads_is_warned_about(
    client: TestClient, text_encoder: ToyTextEncoder
) -> None:
    limit = text_encoder.config.max_length
    short = client.get("/api/search", params={"q": "red circle"}).json()
    assert short["warning"] is None
    words = " ".join(["red"] * (limit - 1))  # with [CLS] and [SEP]: one token over the limit
    long = client.get("/api/search", params={"q": words}).json()
    assert f"{limit + 1} tokens" in long["warning"] and f"first {limit}" in long["warning"]


def test_the_warning_counts_with_the_real_tokenizer() -> None:
    from types import SimpleNamespace

    from aladin.config import TextEncoderConfig
    from aladin.encoders.text import build_text_encoder
    from aladin.service.routes.search import query_warning

    encoder = build_text_encoder(TextEncoderConfig(max_length=8))
    searcher = SimpleNamespace(text_encoder=encoder)
    assert query_warning(searcher, "a surfer") is None
    warning = query_warning(searcher, "a man riding a wave on a surfboard at sunset")
    assert warning is not None and "first 8" in warning
