"""The Milvus backend on embedded Milvus Lite (no network): same results as FAISS, updates, filters, migration."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from index_fixtures import ToyImageEncoder, ToyTextEncoder, picture, tiny_model, write_images

from aladin.errors import AladinError, CheckpointError
from aladin.index import IMAGES, TEXTS, IndexConfig, SearchIndex, build_index
from aladin.index.migrate import migrate_index
from aladin.model.aladin import AladinModel
from aladin.search import Searcher

try:
    import milvus_lite  # noqa: F401
    import pymilvus  # noqa: F401
except ImportError:
    if os.environ.get("CI", "").lower() == "true":  # CI installs the dev extra: a missing client is a failure
        raise
    pytest.skip("pymilvus / milvus-lite not installed: pip install 'aladin[milvus]'", allow_module_level=True)

QUERIES = ["red circle on the left", "a small dog", "blue square of the big cat", "green star"]


def searcher(index: SearchIndex, model: AladinModel, text_encoder: ToyTextEncoder) -> Searcher:
    return Searcher(index, model, text_encoder, ToyImageEncoder(model.config.image_encoder))


def results(index: SearchIndex, model: AladinModel, text_encoder: ToyTextEncoder, k: int = 8) -> list:
    """Ids and scores of kNN-only and re-ranked text search, and of image→caption search."""
    s = searcher(index, model, text_encoder)
    out: list = []
    for rerank in (0, 8):
        out += [[(h.id, h.score) for h in hits] for hits in s.search_texts(QUERIES, k=k, rerank=rerank)]
    if index.has_texts:
        out.append([(h.id, h.score) for h in s.search_image(picture(3), k=k, rerank=k, target=TEXTS)])
    return out


def assert_same(a: list, b: list) -> None:
    """Same ids in the same order, scores equal up to float32 rounding."""
    assert [[i for i, _ in hits] for hits in a] == [[i for i, _ in hits] for hits in b]
    np.testing.assert_allclose(
        [s for hits in a for _, s in hits], [s for hits in b for _, s in hits], rtol=1e-5, atol=1e-5
    )


def milvus(**changes) -> IndexConfig:
    return IndexConfig(backend="milvus", batch_size=5, **changes)


def test_flat_milvus_gives_the_same_top_k_as_flat_faiss(
    tmp_path: Path, dataset: Path, model: AladinModel, text_encoder: ToyTextEncoder
) -> None:
    kwargs = {"text_encoder": text_encoder, "with_texts": True, "progress": False}
    faiss_index = build_index(dataset, model, tmp_path / "faiss", IndexConfig(batch_size=5), **kwargs)
    milvus_index = build_index(dataset, model, tmp_path / "milvus", milvus(), **kwargs)
    assert (tmp_path / "milvus" / "milvus.db").is_dir()  # the default: Milvus Lite inside the index folder
    assert_same(results(milvus_index, model, text_encoder), results(faiss_index, model, text_encoder))
    reloaded = SearchIndex.load(tmp_path / "milvus", model)
    assert reloaded.config.backend == "milvus"
    assert reloaded.manifest["collections"][IMAGES]["collection"].endswith("_images_000001")
    assert_same(results(reloaded, model, text_encoder), results(faiss_index, model, text_encoder))
    info = reloaded.info()["collections"]
    assert info[IMAGES]["vectors"]["vectors"] == 12 and info[TEXTS]["vectors"]["vectors"] == 24


@pytest.mark.parametrize("factory", ["IVF2,Flat", "HNSW8"])
def test_approximate_milvus_indexes_find_the_exact_neighbours_of_a_small_gallery(
    tmp_path: Path, dataset: Path, model: AladinModel, text_encoder: ToyTextEncoder, factory: str
) -> None:
    exact = build_index(dataset, model, tmp_path / "exact", IndexConfig(), progress=False)
    approx = build_index(
        dataset, model, tmp_path / "approx", milvus(factory=factory, nprobe=2), progress=False
    )
    assert_same(results(approx, model, text_encoder, k=5), results(exact, model, text_encoder, k=5))


@pytest.mark.parametrize("factory", ["Flat", "HNSW8"])
def test_add_and_remove_are_seen_by_search_and_survive_a_reload(
    tmp_path: Path, dataset: Path, model: AladinModel, text_encoder: ToyTextEncoder, factory: str
) -> None:
    index = build_index(
        dataset,
        model,
        tmp_path / "index",
        milvus(factory=factory),
        text_encoder=text_encoder,
        with_texts=True,
    )
    s = searcher(index, model, text_encoder)
    captions_of_3 = set(index.meta.texts_of([3]).tolist())
    index.remove([0, 3])
    assert {h.id for h in s.search_text("red circle", k=50, rerank=50)} == set(range(12)) - {0, 3}
    shown = {h.id for h in s.search_image(picture(3), k=50, rerank=0, target=TEXTS)}
    assert len(shown) == 20 and not shown & captions_of_3

    new = write_images(tmp_path / "new", 2, first_seed=100)
    assert index.add(new, image_encoder=ToyImageEncoder(model.config.image_encoder)) == [12, 13]
    assert s.search_image(new[1], k=1)[0].id == 13
    reloaded = SearchIndex.load(tmp_path / "index", model)
    assert results(reloaded, model, text_encoder) == results(index, model, text_encoder)
    assert reloaded.info()["collections"][IMAGES]["vectors"]["vectors"] == 12


def test_rows_of_an_update_that_failed_stay_invisible_and_are_swept(
    tmp_path: Path, dataset: Path, model: AladinModel, text_encoder: ToyTextEncoder, monkeypatch
) -> None:
    index = build_index(dataset, model, tmp_path / "index", milvus(), progress=False)
    before = results(index, model, text_encoder)
    new = write_images(tmp_path / "new", 2, first_seed=100)
    real = os.replace

    def crash_on_manifest(src, dst):
        if Path(dst) == tmp_path / "index" / "manifest.json":  # Milvus Lite has a manifest.json of its own
            raise OSError("simulated crash before the switch")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_manifest)
    with pytest.raises(OSError, match="simulated crash"):
        index.add(new, image_encoder=ToyImageEncoder(model.config.image_encoder))
    monkeypatch.setattr(os, "replace", real)
    assert results(index, model, text_encoder) == before  # rows 12, 13 are in Milvus but above the bound
    assert results(SearchIndex.load(tmp_path / "index", model), model, text_encoder) == before
    assert index.add(new[:1], image_encoder=ToyImageEncoder(model.config.image_encoder)) == [12]
    hits = searcher(index, model, text_encoder).search_text("red circle", k=50, rerank=0)
    assert {h.id for h in hits} == set(range(13))  # the leftover 13 was swept, not revealed


def test_filtered_search_on_folder_and_ids(tmp_path: Path, model: AladinModel, text_encoder) -> None:
    write_images(tmp_path / "pics" / "beach", 4)
    write_images(tmp_path / "pics" / "city", 4, first_seed=10)
    index = build_index(tmp_path / "pics", model, tmp_path / "index", milvus(), progress=False)
    s = searcher(index, model, text_encoder)
    beach = s.search_text("a red circle", k=10, rerank=10, milvus_filter='folder == "beach"')
    assert {h.id for h in beach} == {0, 1, 2, 3} and all(h.external_id.startswith("beach/") for h in beach)
    some = s.search_text("a red circle", k=10, rerank=0, milvus_filter='folder == "city" and image_id >= 6')
    assert {h.id for h in some} == {6, 7}
    assert s.search_text("a red circle", k=10, milvus_filter='external_id like "beach/img001%"')[0].id == 1
    with pytest.raises(AladinError, match="filter 'colour == 1'"):
        s.search_text("a red circle", milvus_filter="colour == 1")
    faiss_index = build_index(tmp_path / "pics", model, tmp_path / "faiss", progress=False)
    with pytest.raises(AladinError, match="needs an index on the milvus backend"):
        searcher(faiss_index, model, text_encoder).search_text(
            "a red circle", milvus_filter='folder == "beach"'
        )


def test_migration_round_trip_keeps_results_ids_and_removals(
    tmp_path: Path, dataset: Path, model: AladinModel, text_encoder: ToyTextEncoder
) -> None:
    cfg = IndexConfig(factory="HNSW8", region_dtype="int8", batch_size=5)
    original = build_index(dataset, model, tmp_path / "a", cfg, text_encoder=text_encoder, with_texts=True)
    original.remove([2])
    expected = results(original, model, text_encoder)
    there = migrate_index(tmp_path / "a", tmp_path / "b", "milvus", factory="Flat")
    assert there.config.backend == "milvus" and there.config.region_dtype == "int8"
    assert_same(results(SearchIndex.load(tmp_path / "b", model), model, text_encoder), expected)
    back = migrate_index(tmp_path / "b", tmp_path / "c", "faiss", factory="HNSW8")
    assert_same(results(SearchIndex.load(tmp_path / "c", model), model, text_encoder), expected)
    assert back.manifest["next_ids"] == original.manifest["next_ids"] and back.meta.missing(IMAGES, [2]) == [
        2
    ]
    assert SearchIndex.load(tmp_path / "a", model).config == original.config  # the source is unchanged
    with pytest.raises(AladinError, match="already holds an index"):
        migrate_index(tmp_path / "a", tmp_path / "c", "milvus")


def test_an_unreachable_server_fails_fast_with_one_line(tmp_path: Path, dataset: Path, model) -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.perf_counter()
    with pytest.raises(AladinError, match=rf"milvus http://127.0.0.1:{port}: cannot connect") as error:
        build_index(
            dataset, model, tmp_path / "index", milvus(uri=f"http://127.0.0.1:{port}"), progress=False
        )
    assert time.perf_counter() - started < 5 and "\n" not in str(error.value)
    with pytest.raises(AladinError, match="ALADIN_MILVUS_TOKEN"):
        milvus(uri="http://root:secret@127.0.0.1:19530")


def test_a_collection_built_by_another_model_is_refused(
    tmp_path: Path, dataset: Path, model: AladinModel, text_encoder: ToyTextEncoder
) -> None:
    lite = str(tmp_path / "shared.db")
    first = build_index(dataset, model, tmp_path / "a", milvus(uri=lite), progress=False)
    other = tiny_model(seed=1)
    build_index(dataset, other, tmp_path / "b", milvus(uri=lite), progress=False)
    with pytest.raises(CheckpointError, match=f"index was built by model {other.fingerprint()}"):
        SearchIndex.load(tmp_path / "b", model)  # the manifest's own check, as for FAISS
    manifest_path = tmp_path / "b" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["collections"][IMAGES]["collection"] = first.manifest["collections"][IMAGES]["collection"]
    manifest_path.write_text(json.dumps(manifest))  # b's manifest now names a's collection
    with pytest.raises(
        CheckpointError, match=rf"was built by model {model.fingerprint()}.*{other.fingerprint()}"
    ):
        SearchIndex.load(tmp_path / "b", other, verify_checksums=False)
    with pytest.raises(AladinError, match="belongs to another index"):
        build_index(
            dataset, model, tmp_path / "c", milvus(uri=lite, collection=_prefix_of(first)), progress=False
        )


def _prefix_of(index: SearchIndex) -> str:
    return index.manifest["collections"][IMAGES]["collection"].removesuffix("_images_000001")


def test_cli_build_search_filter_remove_and_migrate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    from aladin.cli.index_commands import register

    def run(*argv: str) -> str:
        parser = argparse.ArgumentParser(prog="aladin")
        register(parser.add_subparsers(dest="command", required=True))
        args = parser.parse_args(list(argv))
        capsys.readouterr()
        args.func(args)
        return capsys.readouterr().out

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tiny_model(text_feature_dim=384).save_pretrained(tmp_path / "model")
    write_images(tmp_path / "pics" / "beach", 3)
    write_images(tmp_path / "pics" / "city", 3, first_seed=10)
    model, index = str(tmp_path / "model"), str(tmp_path / "index")
    monkeypatch.chdir(tmp_path)
    run("index", "build", "pics", "--model", model, "--out", index, "--backend", "milvus", "--uri", "lite.db")
    assert (tmp_path / "lite.db").is_dir()  # a relative --uri is the working directory's
    search = ("search", "a red circle", "--index", index, "--model", model, "--json")
    hits = json.loads(run(*search, "--filter", 'folder == "city"'))["hits"]
    assert {h["id"] for h in hits} == {3, 4, 5}
    run("index", "remove", index, "4")
    assert {h["id"] for h in json.loads(run(*search))["hits"]} == {0, 1, 2, 3, 5}
    assert "vectors in milvus" in run("index", "info", index)
    run("index", "migrate", index, str(tmp_path / "back"), "--backend", "faiss")
    back = ("search", "a red circle", "--index", str(tmp_path / "back"), "--model", model, "--json")
    ranked = [[(h["id"], round(h["score"], 5)) for h in json.loads(run(*q))["hits"]] for q in (back, search)]
    assert ranked[0] == ranked[1] and len(ranked[0]) == 5


@pytest.mark.parametrize("factory", ["Flat", "HNSW8"])
def test_where_on_milvus_fills_k_with_matching_items_when_matches_are_rare(
    tmp_path: Path, model: AladinModel, text_encoder, factory: str
) -> None:
    write_images(tmp_path / "pics" / "common", 190)
    write_images(tmp_path / "pics" / "rare", 10, first_seed=190)  # 5% of the photos match
    index = build_index(tmp_path / "pics", model, tmp_path / "index", milvus(factory=factory), progress=False)
    rare = {i for i, r in index.meta.images(index.meta.ids(IMAGES)).items() if "/rare/" in r.path}
    s = searcher(index, model, text_encoder)
    for query in QUERIES:
        assert len(rare & {h.id for h in s.search_text(query, k=5, rerank=0)}) < 5  # a post-filter: too few
        hits = s.search_text(query, k=5, rerank=0, where="folder=rare")
        assert len(hits) == 5 and {h.id for h in hits} <= rare
        both = s.search_text(
            query, k=5, where={"folder": "rare"}, milvus_filter=f"image_id >= {min(rare) + 7}"
        )
        assert {h.id for h in both} == {i for i in rare if i >= min(rare) + 7}  # the expression still applies
    assert s.search_text(QUERIES[0], k=5, where="folder=nowhere") == []
