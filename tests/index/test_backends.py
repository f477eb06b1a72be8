"""The backend choice in the manifest: indexes written before it existed are FAISS indexes."""

from __future__ import annotations

import json

import pytest

from aladin.errors import AladinError
from aladin.index import IndexConfig, SearchIndex
from aladin.model.aladin import AladinModel


def test_a_manifest_without_a_backend_loads_as_faiss(built: SearchIndex, model: AladinModel) -> None:
    path = built.directory / "manifest.json"
    manifest = json.loads(path.read_text())
    for key in ("backend", "uri", "collection"):
        del manifest["index_config"][key]
    path.write_text(json.dumps(manifest))
    loaded = SearchIndex.load(built.directory, model, verify_checksums=False)
    assert (
        loaded.config.backend == "faiss"
        and loaded.info()["collections"]["images"]["vectors"]["vectors"] == 12
    )
    query = built.collection("images").vectors.fetch([5])
    assert loaded.search("images", query, 1)[1][0, 0] == 5


def test_backend_settings_are_validated() -> None:
    with pytest.raises(AladinError, match="backend: expected one of faiss, milvus"):
        IndexConfig(backend="qdrant")
    with pytest.raises(AladinError, match="only for the milvus backend"):
        IndexConfig(uri="x.db")
    with pytest.raises(AladinError, match="ending in .db"):
        IndexConfig(backend="milvus", uri="/tmp/milvus")
    with pytest.raises(AladinError, match="collection: letters"):
        IndexConfig(backend="milvus", collection="my-index")
