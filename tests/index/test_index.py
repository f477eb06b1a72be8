from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from index_fixtures import (
    ToyImageEncoder,
    ToyTextEncoder,
    picture,
    tiny_model,
    write_images,
)

from aladin.data.folder import load_dataset_folder
from aladin.encoders.cache import extract_features
from aladin.errors import AladinError, CheckpointError
from aladin.index import IMAGES, TEXTS, ImageRecord, IndexConfig, SearchIndex, build_index
from aladin.index import builder as builder_module
from aladin.index.encoding import embed_images
from aladin.model.aladin import AladinModel
from aladin.search import Searcher


class Interrupted(Exception):
    """Stands in for Ctrl-C or a killed process in the middle of a build."""


QUERIES = ["red circle on the left", "a small dog", "blue square of the big cat"]


def snapshot(index: SearchIndex, model: AladinModel, text_encoder: ToyTextEncoder) -> list:
    """Everything a user can observe: re-ranked and kNN results, image→text results, counts."""
    searcher = Searcher(
        index, model, text_encoder=text_encoder, image_encoder=ToyImageEncoder(model.config.image_encoder)
    )
    out: list = [{kind: c["live"] for kind, c in index.info()["collections"].items()}]
    for rerank in (0, 50):
        for hits in searcher.search_texts(QUERIES, k=50, rerank=rerank):
            out.append([(h.id, h.score, h.first_stage_score, h.path) for h in hits])
    if index.has_texts:
        hits = searcher.search_image(picture(3), k=50, rerank=50, target=TEXTS)
        out.append([(h.id, h.score, h.caption) for h in hits])
    return out


@pytest.mark.parametrize("factory", ["Flat", "IVF2,Flat", "HNSW8"])
@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_round_trip_gives_the_same_results_as_the_index_in_memory(
    tmp_path: Path, dataset: Path, model: AladinModel, text_encoder: ToyTextEncoder, factory: str, dtype: str
) -> None:
    cfg = IndexConfig(factory=factory, region_dtype=dtype, batch_size=5)
    in_memory = build_index(
        dataset, model, tmp_path / "index", cfg, text_encoder=text_encoder, with_texts=True, progress=False
    )
    loaded = SearchIndex.load(tmp_path / "index", model)
    assert snapshot(loaded, model, text_encoder) == snapshot(in_memory, model, text_encoder)
    assert len(loaded) == 12 and loaded.meta.count(TEXTS) == 24
    assert loaded.config == cfg
    assert not (tmp_path / "index" / builder_module.BUILDING_DIR).exists()


def test_a_detectors_student_round_trips_through_its_checkpoint_and_an_index(
    tmp_path: Path, dataset: Path, text_encoder: ToyTextEncoder
) -> None:
    base = tiny_model().config
    torch.manual_seed(0)
    heads = dataclasses.replace(base.model, matching_form="detectors", global_dim=24)  # ≠ embed_dim
    model = AladinModel(dataclasses.replace(base, model=heads)).eval()
    model.save_pretrained(tmp_path / "model")
    reloaded = AladinModel.from_pretrained(tmp_path / "model")
    assert reloaded.config == model.config and reloaded.fingerprint() == model.fingerprint()
    cfg = IndexConfig(factory="Flat", batch_size=5)
    built = build_index(
        dataset, model, tmp_path / "index", cfg, text_encoder=text_encoder, with_texts=True, progress=False
    )
    loaded = SearchIndex.load(tmp_path / "index", reloaded)
    assert snapshot(loaded, reloaded, text_encoder) == snapshot(built, model, text_encoder)


@pytest.mark.parametrize("factory", ["Flat", "IVF2,Flat", "HNSW8"])
def test_add_and_remove(
    tmp_path: Path, dataset: Path, model: AladinModel, text_encoder: ToyTextEncoder, factory: str
) -> None:
    cfg = IndexConfig(factory=factory, batch_size=5)
    index = build_index(
        dataset, model, tmp_path / "index", cfg, text_encoder=text_encoder, with_texts=True, progress=False
    )
    image_encoder = ToyImageEncoder(model.config.image_encoder)
    searcher = Searcher(index, model, text_encoder, image_encoder)
    captions_of_3 = set(index.meta.texts_of([3]).tolist())

    index.remove([0, 3])
    shown = {h.id for h in searcher.search_text("red circle", k=50, rerank=50)}
    assert shown == set(range(12)) - {0, 3}
    shown_texts = {h.id for h in searcher.search_image(picture(3), k=50, rerank=0, target=TEXTS)}
    assert len(shown_texts) == 20 and not shown_texts & captions_of_3
    with pytest.raises(AladinError, match="no image with id 3"):
        index.remove([3])

    new = write_images(tmp_path / "new", 2, first_seed=100)
    assert index.add(new, image_encoder=image_encoder) == [12, 13]
    assert searcher.search_image(new[1], k=1)[0].id == 13
    assert searcher.search_image(picture(3), k=1)[0].id != 3
    index.remove([13])
    assert index.add(new[1:], image_encoder=image_encoder) == [14]  # ids are never reused

    reloaded = SearchIndex.load(tmp_path / "index", model)
    assert snapshot(reloaded, model, text_encoder) == snapshot(index, model, text_encoder)
    info = reloaded.info()["collections"]
    assert (info[IMAGES]["live"], info[IMAGES]["removed"], info[TEXTS]["live"]) == (12, 3, 20)
    on_disk = {p.name for p in (tmp_path / "index").iterdir()}
    assert on_disk == set(reloaded.manifest["files"]) | {"manifest.json", ".lock"}  # old versions collected


def test_a_crash_at_any_write_step_leaves_the_previous_version(
    tmp_path: Path, built: SearchIndex, model: AladinModel, text_encoder: ToyTextEncoder, monkeypatch
) -> None:
    directory = built.directory
    before = snapshot(SearchIndex.load(directory, model), model, text_encoder)
    encoder = ToyImageEncoder(model.config.image_encoder)
    chunk = embed_images(model, encoder.encode([picture(50), picture(51)]))
    records = [ImageRecord("new-a.png", "a"), ImageRecord("new-b.png", "b")]
    real_replace = os.replace
    crashed_steps = 0
    while True:
        index = SearchIndex.load(directory, model)
        calls = 0

        def replace_then_crash(src, dst, fail_at=crashed_steps + 1):
            nonlocal calls
            calls += 1
            if calls == fail_at:
                raise OSError(f"simulated crash while publishing {Path(dst).name}")
            return real_replace(src, dst)

        monkeypatch.setattr(os, "replace", replace_then_crash)
        try:
            with index.update() as up:
                up.add_images(chunk, records)
                up.remove_images([1])
        except OSError:
            crashed_steps += 1
            monkeypatch.setattr(os, "replace", real_replace)
            assert snapshot(index, model, text_encoder) == before  # in memory: unchanged
            assert snapshot(SearchIndex.load(directory, model), model, text_encoder) == before  # on disk too
            continue
        monkeypatch.setattr(os, "replace", real_replace)
        break
    # regions data, offsets, boxes; images and texts FAISS; metadata; manifest
    assert crashed_steps == 7
    after = SearchIndex.load(directory, model)
    assert snapshot(after, model, text_encoder) == snapshot(index, model, text_encoder) != before
    assert len(after) == 13 and after.meta.missing(IMAGES, [1]) == [1]
    on_disk = {p.name for p in directory.iterdir()}
    assert on_disk == set(after.manifest["files"]) | {"manifest.json", ".lock"}


def test_an_index_changed_by_another_writer_must_be_reloaded(built: SearchIndex, model: AladinModel) -> None:
    stale = SearchIndex.load(built.directory, model)
    built.remove([2])
    with pytest.raises(AladinError, match="changed on disk"):
        stale.remove([4])


def test_a_different_model_is_refused(
    built: SearchIndex, model: AladinModel, text_encoder: ToyTextEncoder
) -> None:
    other = tiny_model(seed=1)
    with pytest.raises(CheckpointError, match=f"built by model {model.fingerprint()}.*{other.fingerprint()}"):
        SearchIndex.load(built.directory, other)
    with pytest.raises(CheckpointError, match="built by model"):
        Searcher(built, other, text_encoder)
    assert len(SearchIndex.load(built.directory)) == 12  # without a model: inspect and remove only
    with pytest.raises(AladinError, match="load the index with the model"):
        SearchIndex.load(built.directory).add([built.meta.images([0])[0].path])


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-7])


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("target", "damage", "message"),
    [
        ("manifest.json", lambda p: p.write_text("{not json"), "manifest.json: not valid JSON"),
        ("manifest.json", lambda p: p.write_text('{"files": {}, "format_version": 99}'), "format version 99"),
        ("manifest.json", _truncate, "manifest.json: not valid JSON"),
        ("regions.000001.i8", _truncate, r"regions.000001.i8: \d+ bytes, the manifest says \d+"),
        ("regions.000001.i8", _flip_byte, "regions.000001.i8: checksum does not match"),
        ("vectors.000001.faiss", _flip_byte, "vectors.000001.faiss: checksum does not match"),
        ("meta.000001.sqlite", lambda p: p.unlink(), "meta.000001.sqlite: missing"),
    ],
)
def test_a_damaged_index_gives_a_clear_error_naming_the_file(
    built: SearchIndex, model: AladinModel, target: str, damage, message: str
) -> None:
    damage(built.directory / target)
    with pytest.raises(CheckpointError, match=message):
        SearchIndex.load(built.directory, model)


def test_an_interrupted_build_resumes_where_it_stopped(
    tmp_path: Path, dataset: Path, model: AladinModel, text_encoder: ToyTextEncoder, monkeypatch
) -> None:
    real_embed = builder_module.embed_images
    calls: list[int] = []

    def embed_then_interrupt(model, batch):
        calls.append(len(batch))
        if len(calls) == 3:
            raise Interrupted
        return real_embed(model, batch)

    monkeypatch.setattr(builder_module, "embed_images", embed_then_interrupt)
    cfg = IndexConfig(batch_size=5)
    with pytest.raises(Interrupted):
        build_index(dataset, model, tmp_path / "index", cfg, text_encoder=text_encoder, progress=False)
    progress = json.loads((tmp_path / "index" / ".building" / "progress.json").read_text())
    assert progress[IMAGES] == 2 and not (tmp_path / "index" / "manifest.json").exists()

    calls.clear()
    resumed = build_index(dataset, model, tmp_path / "index", cfg, text_encoder=text_encoder, progress=False)
    assert calls == [2]  # only the last batch of 12 images was encoded again
    monkeypatch.setattr(builder_module, "embed_images", real_embed)
    fresh = build_index(dataset, model, tmp_path / "fresh", cfg, text_encoder=text_encoder, progress=False)
    assert snapshot(resumed, model, text_encoder) == snapshot(fresh, model, text_encoder)


def test_build_from_a_folder_of_images(
    tmp_path: Path, model: AladinModel, text_encoder: ToyTextEncoder
) -> None:
    write_images(tmp_path / "pics" / "sub", 3)
    picture(9).save(tmp_path / "pics" / "top.JPG")
    (tmp_path / "pics" / "notes.txt").write_text("not an image")
    index = build_index(tmp_path / "pics", model, tmp_path / "index", progress=False)
    records = index.meta.images(range(4))
    assert [r.external_id for r in records.values()] == [
        "sub/img000.png",
        "sub/img001.png",
        "sub/img002.png",
        "top.JPG",
    ]
    with pytest.raises(AladinError, match="no captions to index"):
        build_index(tmp_path / "pics", model, tmp_path / "index2", with_texts=True, progress=False)
    with pytest.raises(AladinError, match="already holds an index"):
        build_index(tmp_path / "pics", model, tmp_path / "index", progress=False)
    rebuilt = build_index(
        tmp_path / "pics" / "sub", model, tmp_path / "index", overwrite=True, progress=False
    )
    assert len(rebuilt) == 3 and rebuilt.generation == 2
    assert not list((tmp_path / "index").glob("*.000001.*"))


def test_build_from_a_feature_cache_matches_building_from_the_images(
    tmp_path: Path, dataset: Path, model: AladinModel, text_encoder: ToyTextEncoder
) -> None:
    image_encoder = ToyImageEncoder(model.config.image_encoder)
    extract_features(
        load_dataset_folder(dataset), image_encoder, text_encoder, tmp_path / "cache", progress=False
    )
    cached = build_index(tmp_path / "cache", model, tmp_path / "from-cache", with_texts=True, progress=False)
    direct = build_index(
        dataset,
        model,
        tmp_path / "direct",
        split="test",
        text_encoder=text_encoder,
        with_texts=True,
        progress=False,
    )
    assert len(cached) == len(direct) == 6 and cached.meta.count(TEXTS) == 12
    assert cached.meta.images(range(6)) == direct.meta.images(range(6))
    searcher = {
        "cached": Searcher(cached, model, text_encoder),
        "direct": Searcher(direct, model, text_encoder),
    }
    by_id = {
        name: {h.id: (h.score, h.first_stage_score) for h in s.search_text("red circle", k=6, rerank=6)}
        for name, s in searcher.items()
    }
    for item, scores in by_id["direct"].items():
        np.testing.assert_allclose(by_id["cached"][item], scores, atol=2e-3)  # cache is float16

    flipped = dataclasses.replace(
        model.config.image_encoder, multiscale=not model.config.image_encoder.multiscale
    )
    other = AladinModel(dataclasses.replace(model.config, image_encoder=flipped))
    with pytest.raises(CheckpointError, match="image_encoder.multiscale"):
        build_index(tmp_path / "cache", other, tmp_path / "other", progress=False)


def test_index_settings_are_validated(tmp_path: Path, dataset: Path, model: AladinModel) -> None:
    with pytest.raises(AladinError, match="index factory"):
        IndexConfig(factory="IVF,PQ8")
    with pytest.raises(AladinError, match="region_dtype"):
        IndexConfig(region_dtype="float64")
    with pytest.raises(AladinError, match="nprobe"):
        IndexConfig(nprobe=0)
    with pytest.raises(AladinError, match="training needs at least 64 vectors, got 12"):
        build_index(dataset, model, tmp_path / "index", IndexConfig(factory="IVF64,Flat"), progress=False)
    assert not (tmp_path / "index" / "manifest.json").exists()


@pytest.mark.parametrize(
    "cfg",
    [
        IndexConfig(region_dtype="pq", pq_nbits=4, batch_size=5),  # 16 centroids: the toy data is small
        IndexConfig(region_dtype="residual2", batch_size=5),  # automatic centroid count
        IndexConfig(region_dtype="residual1", residual_centroids=8, batch_size=5),
    ],
    ids=["pq", "residual2", "residual1"],
)
def test_trained_store_index_round_trip_and_add_reuses_the_codebook(
    tmp_path: Path, dataset: Path, model: AladinModel, text_encoder: ToyTextEncoder, cfg: IndexConfig
) -> None:
    in_memory = build_index(
        dataset, model, tmp_path / "index", cfg, text_encoder=text_encoder, with_texts=True, progress=False
    )
    loaded = SearchIndex.load(tmp_path / "index", model)
    assert loaded.config == cfg
    assert snapshot(loaded, model, text_encoder) == snapshot(in_memory, model, text_encoder)
    [segment] = loaded.manifest["collections"][IMAGES]["segments"]
    quantizer = segment["quantizer"]
    assert quantizer in loaded.manifest["files"] and segment["reconstruction"]["mean_cosine"] > 0.5
    info = loaded.info()["collections"][IMAGES]
    assert info["quantizer_bytes"] == loaded.manifest["files"][quantizer]["bytes"]
    assert info["reconstruction"] == [segment["reconstruction"]]
    before = loaded.lookup(IMAGES, range(12))

    new = write_images(tmp_path / "new", 2, first_seed=100)
    assert loaded.add(new, image_encoder=ToyImageEncoder(model.config.image_encoder)) == [12, 13]
    reloaded = SearchIndex.load(tmp_path / "index", model)
    segments = reloaded.manifest["collections"][IMAGES]["segments"]
    assert [s["quantizer"] for s in segments] == [quantizer, quantizer]
    assert reloaded.manifest["files"][quantizer] == in_memory.manifest["files"][quantizer]  # not retrained
    after = reloaded.lookup(IMAGES, range(12))
    assert all(a.equal(b) for a, b in zip(before, after, strict=True))
    assert snapshot(reloaded, model, text_encoder) == snapshot(loaded, model, text_encoder)
