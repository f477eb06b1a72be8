"""The region store defaults to int8 (a quarter of float32); float16 stays an option and float16 indexes, old
ones included, still load, search and grow in float16."""

from __future__ import annotations

import json
from pathlib import Path

from index_fixtures import ToyTextEncoder, model, text_encoder, write_images  # noqa: F401

from aladin.index import IndexConfig, SearchIndex, build_index
from aladin.index.metadata import IMAGES
from aladin.model.aladin import AladinModel
from aladin.search import Searcher

QUERY = "red circle on the left"


def store_dtype(index: SearchIndex) -> str:
    return index.collection(IMAGES).store.codec.name


def results(index: SearchIndex, net: AladinModel, words: ToyTextEncoder) -> list[tuple[int, float]]:
    hits = Searcher(index, net, words).search_text(QUERY, k=4, rerank=6)
    return [(h.id, round(h.score, 5)) for h in hits]


def test_a_default_index_stores_int8_and_round_trips(
    tmp_path: Path,
    model: AladinModel,  # noqa: F811
    text_encoder: ToyTextEncoder,  # noqa: F811
) -> None:
    built = build_index(
        write_images(tmp_path / "photos", 6)[0].parent, model, tmp_path / "index", progress=False
    )
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    assert manifest["index_config"]["region_dtype"] == "int8" == store_dtype(built)
    loaded = SearchIndex.load(tmp_path / "index", model)
    assert store_dtype(loaded) == "int8"
    assert results(loaded, model, text_encoder) == results(built, model, text_encoder)


def test_a_float16_index_loads_searches_and_grows_in_float16_even_without_the_field(
    tmp_path: Path,
    model: AladinModel,  # noqa: F811
    text_encoder: ToyTextEncoder,  # noqa: F811
) -> None:
    photos = write_images(tmp_path / "photos", 4)[0].parent
    built = build_index(
        photos, model, tmp_path / "index", IndexConfig(region_dtype="float16"), progress=False
    )
    expected = results(built, model, text_encoder)
    path = tmp_path / "index" / "manifest.json"  # as written before the store type was recorded
    manifest = json.loads(path.read_text())
    del manifest["index_config"]["region_dtype"]
    path.write_text(json.dumps(manifest))
    old = SearchIndex.load(tmp_path / "index", model)
    assert store_dtype(old) == "float16" and old.config.region_dtype == "float16"
    assert results(old, model, text_encoder) == expected
    old.add(write_images(tmp_path / "later", 2, first_seed=10))  # new segments match the old ones
    grown = SearchIndex.load(tmp_path / "index", model)
    assert len(grown) == 6 and store_dtype(grown) == "float16"
    assert len(results(grown, model, text_encoder)) == 4
