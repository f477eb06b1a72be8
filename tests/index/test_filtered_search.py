"""Filtered search on FAISS (Milvus: test_milvus.py): only matching items, and still k of them when at least k
match, on exact and approximate indexes, when matches are too rare for filtering the plain top k afterwards."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from index_fixtures import ToyImageEncoder, ToyTextEncoder, picture, write_images
from test_filters import write_photo

from aladin.index import IMAGES, TEXTS, IndexConfig, SearchIndex, build_index
from aladin.model.aladin import AladinModel
from aladin.search.searcher import Searcher

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy" / "index"
QUERIES = [
    "red circle on the left",
    "a small dog",
    "blue square of the big cat",
    "green star",
    "big red star",
]
RARE, COMMON = 20, 380  # 5% of the photos match


def searcher(index: SearchIndex, model: AladinModel) -> Searcher:
    return Searcher(index, model, ToyTextEncoder(), ToyImageEncoder(model.config.image_encoder))


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """400 photos, 20 of them in the folder "rare"."""
    root = tmp_path_factory.mktemp("library")
    write_images(root / "common", COMMON)
    write_images(root / "rare", RARE, first_seed=COMMON)
    return root


@pytest.mark.parametrize(
    "cfg",
    [
        IndexConfig(factory="Flat"),
        IndexConfig(factory="IVF16,Flat", nprobe=1),
        IndexConfig(factory="HNSW8", ef_search=16),
    ],
    ids=["flat", "ivf", "hnsw"],
)
def test_a_rare_match_still_fills_k_with_matching_items_only(
    tmp_path: Path, library: Path, model: AladinModel, cfg: IndexConfig
) -> None:
    index = build_index(library, model, tmp_path / "index", cfg, progress=False)
    rare = {i for i, r in index.meta.images(index.meta.ids(IMAGES)).items() if "/rare/" in r.path}
    assert len(rare) == RARE
    s = searcher(index, model)
    exact = Searcher(
        build_index(library, model, tmp_path / "exact", progress=False),
        model,
        ToyTextEncoder(),
        s.image_encoder,
    )
    for query in QUERIES:
        plain = s.search_text(query, k=10, rerank=0)
        assert (
            len(rare & {h.id for h in plain}) < 10
        )  # filtering the plain top 10 afterwards would come up short
        for rerank in (0, 30):
            hits = s.search_text(query, k=10, rerank=rerank, where="folder=rare")
            assert len(hits) == 10 and {h.id for h in hits} <= rare, (query, rerank)
        if cfg.factory == "Flat":  # exact: the best 10 of the matching ones, in order
            best = [h.id for h in exact.search_text(query, k=400, rerank=0) if h.id in rare][:10]
            assert [h.id for h in s.search_text(query, k=10, rerank=0, where="folder=rare")] == best
    fewer = s.search_text(QUERIES[0], k=10, rerank=0, where="folder=rare and id<383")
    assert sorted(h.id for h in fewer) == sorted(i for i in rare if i < 383)  # all 3 when fewer than k match
    assert s.search_text(QUERIES[0], k=10, where="folder=nowhere") == []


def test_removed_items_stay_out_of_a_filtered_search_on_hnsw(
    tmp_path: Path, library: Path, model: AladinModel
) -> None:
    index = build_index(library, model, tmp_path / "index", IndexConfig(factory="HNSW8"), progress=False)
    rare = sorted(i for i, r in index.meta.images(index.meta.ids(IMAGES)).items() if "/rare/" in r.path)
    index.remove(rare[:15])  # HNSW cannot delete them: tombstones, which the filter's ids must not bring back
    hits = searcher(index, model).search_text(QUERIES[0], k=10, rerank=0, where="folder=rare")
    assert sorted(h.id for h in hits) == rare[15:]
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)  # best first


def test_captions_are_filtered_through_their_image(built: SearchIndex, model: AladinModel) -> None:
    s = searcher(built, model)
    hits = s.search_image(picture(7), k=5, rerank=5, target=TEXTS, where="id<4")
    owners = {t.image_id for t in built.meta.texts(built.meta.ids(TEXTS)).values() if t.image_id < 4}
    assert len(hits) == 5 and {h.image_id for h in hits} <= owners
    assert len(s.search_image(picture(7), k=50, rerank=0, target=TEXTS, where="id<4")) == 8  # 2 captions each
    similar = s.search_image(picture(7), k=3, where={"id": {">=": 9}})
    assert [h.id for h in similar] and {h.id for h in similar} <= {9, 10, 11}


def test_an_index_from_before_photo_facts_loads_filters_and_gains_them(tmp_path: Path) -> None:
    shutil.copytree(LEGACY, tmp_path / "legacy")
    model = AladinModel.from_pretrained(tmp_path / "legacy" / "model", "cpu")
    index = SearchIndex.load(tmp_path / "legacy" / "index", model)
    s, old = searcher(index, model), len(index)
    assert [h.id for h in s.search_text("red circle", k=3, rerank=0, where="type=png")] == [
        h.id for h in s.search_text("red circle", k=3, rerank=0)
    ]
    assert s.search_text("red circle", k=3, where="taken>=1900") == []  # no facts recorded: unknown
    assert [h.id for h in s.search_text("red circle", k=3, where="not taken>=1900 and id=1")] == [1]
    photo = write_photo(
        tmp_path / "new" / "p.jpg", (32, 24), "2022:05:06 07:08:09", "Google", "Pixel 8", True
    )
    [new] = index.add([photo], image_encoder=s.image_encoder)
    reloaded = searcher(SearchIndex.load(tmp_path / "legacy" / "index", model), model)
    assert [h.id for h in reloaded.search_text("red circle", k=3, where="camera~pixel and gps")] == [new]
    assert len(reloaded.search_text("red circle", k=9, where="not camera~pixel")) == old
