"""Near-duplicate groups on a hand-built photo set, and search collapsing them (API and command line)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from index_fixtures import ToyImageEncoder, ToyTextEncoder, picture, tiny_model
from PIL import Image

from aladin.config import ImageEncoderConfig
from aladin.encoders.image import RegionBatch, grid_boxes, register_image_encoder
from aladin.errors import AladinError
from aladin.index import IndexConfig, SearchIndex, build_index
from aladin.index.config import DuplicateConfig
from aladin.index.duplicates import connected_groups, duplicate_groups, find_duplicates
from aladin.model.aladin import AladinModel
from aladin.search import Searcher

CENTRED_ENCODER = "toy-grid-centred"
#: The toy model's copies of one picture have cosines >= 0.99 and distinct pictures <= 0.84: the test's threshold
#: sits between (the bundled model's default is chosen on COCO by benchmarks/duplicates.py).
THRESHOLD = 0.95
SOURCES, WITH_COPIES = 5, 3


class CentredImageEncoder(ToyImageEncoder):
    """The toy grid encoder on pixels centred at 0 and resized smoothly: a random model then tells distinct
    pictures apart (all-positive pixels make every toy vector nearly parallel) while copies stay close."""

    def encode(self, images: list[Image.Image]) -> RegionBatch:
        small = [np.asarray(img.convert("RGB").resize((8, 8), Image.BILINEAR)) for img in images]
        pixels = np.stack(small) / 255.0 - 0.5
        quads = pixels.reshape(len(images), 2, 4, 2, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(-1, 4, 48)
        regions = torch.from_numpy(quads).float() @ self._projection
        boxes = grid_boxes(2, 2).expand(len(images), -1, -1).clone()
        return RegionBatch(regions, boxes, torch.ones(len(images), 4, dtype=torch.bool))


register_image_encoder(CENTRED_ENCODER, lambda cfg, device: CentredImageEncoder(cfg))


def centred_model(text_feature_dim: int = 24) -> AladinModel:
    base = tiny_model(text_feature_dim=text_feature_dim)
    config = replace(base.config, image_encoder=ImageEncoderConfig(name=CENTRED_ENCODER))
    torch.manual_seed(0)
    return AladinModel(config).eval()


def write_photos(folder: Path) -> dict[str, str]:
    """SOURCES distinct pictures (JPEG, quality 95); the first WITH_COPIES get a re-encoded (quality 40), a
    resized (2/3) and a cropped (~5% off each side) copy. File name → the picture it shows."""
    folder.mkdir(parents=True)
    origin = {}
    for s in range(SOURCES):
        image = picture(s).resize((96, 96), Image.NEAREST)
        image.save(folder / f"p{s}.jpg", quality=95)
        origin[f"p{s}.jpg"] = f"p{s}"
        if s < WITH_COPIES:
            image.save(folder / f"p{s}_reencoded.jpg", quality=40)
            image.resize((64, 64), Image.BICUBIC).save(folder / f"p{s}_resized.jpg", quality=95)
            image.crop((3, 4, 93, 92)).save(folder / f"p{s}_cropped.jpg", quality=95)
            origin.update({f"p{s}_{kind}.jpg": f"p{s}" for kind in ("reencoded", "resized", "cropped")})
    return origin


@pytest.fixture
def photos(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    return tmp_path / "photos", write_photos(tmp_path / "photos")


@pytest.fixture
def index(tmp_path: Path, photos: tuple[Path, dict[str, str]]) -> SearchIndex:
    folder, _ = photos
    return build_index(folder, centred_model(), tmp_path / "index", IndexConfig(batch_size=4), progress=False)


def names(index: SearchIndex, ids: list[int]) -> list[str]:
    records = index.meta.images(ids)
    return [Path(records[i].path).name for i in ids]


def test_the_copies_of_each_picture_form_one_group_and_distinct_pictures_none(
    index: SearchIndex, photos: tuple[Path, dict[str, str]]
) -> None:
    _, origin = photos
    groups = find_duplicates(index, DuplicateConfig(threshold=THRESHOLD))
    found = sorted(sorted(Path(m.path).name for m in g.members) for g in groups)
    expected = sorted(
        sorted(name for name, source in origin.items() if source == f"p{s}") for s in range(WITH_COPIES)
    )
    assert found == expected  # p3 and p4 (no copies) are in no group
    for group in groups:
        best = Path(group.best.path).name
        assert best.count("_") == 0, f"the original (most pixels, largest file) should be kept, got {best}"
        assert group.best.similarity == pytest.approx(1.0, abs=1e-5)
        assert group.min_similarity >= THRESHOLD
    # the exact reference: every pair's cosine, union-find over those above the threshold
    regions = find_duplicates(index, DuplicateConfig(threshold=THRESHOLD, feature="regions"))
    assert sorted(sorted(Path(m.path).name for m in g.members) for g in regions) == expected


def test_a_low_threshold_joins_everything_and_one_above_every_cosine_nothing(index: SearchIndex) -> None:
    assert [len(g.members) for g in find_duplicates(index, DuplicateConfig(threshold=-1.0))] == [len(index)]
    assert find_duplicates(index, DuplicateConfig(threshold=1.0)) == []


def test_union_find_links_chains_into_one_group() -> None:
    pairs = np.array([[0, 1], [5, 6], [1, 2], [6, 3]])
    assert connected_groups(8, pairs) == [[0, 1, 2], [3, 5, 6]]


def test_bad_settings_are_one_line_errors() -> None:
    with pytest.raises(AladinError, match="threshold"):
        DuplicateConfig(threshold=1.5)
    with pytest.raises(AladinError, match="feature"):
        DuplicateConfig(feature="pixels")


def searcher_for(index: SearchIndex) -> Searcher:
    model = centred_model()
    encoder = CentredImageEncoder(model.config.image_encoder)
    return Searcher(index, model, ToyTextEncoder(), encoder, duplicates=DuplicateConfig(threshold=THRESHOLD))


@pytest.mark.parametrize("rerank", [0, None])
def test_collapse_keeps_the_best_ranked_image_of_each_group_and_still_gives_k(
    index: SearchIndex, rerank: int | None
) -> None:
    searcher = searcher_for(index)
    groups = duplicate_groups(index, searcher.duplicates)
    full = searcher.search_text("a red circle", k=len(index), rerank=rerank)
    representatives, seen = set(), set()
    for hit in searcher.search_text(
        "a red circle", k=len(index), rerank=0
    ):  # each group's first in kNN order
        key = groups.group_of.get(hit.id, ("alone", hit.id))
        if key not in seen:
            seen.add(key)
            representatives.add(hit.id)
    expected = [
        hit.id for hit in full if hit.id in representatives
    ]  # re-ranked as the full search ranks them
    k = 4  # fewer than the 5 groups, but the first 4 hits of the full list hold copies
    assert len({groups.group_of.get(h.id, h.id) for h in full[:k]}) < k
    collapsed = searcher.search_text("a red circle", k=k, rerank=rerank, collapse=True)
    assert [h.id for h in collapsed] == expected[:k]
    assert [h.score for h in collapsed] == [h.score for h in full if h.id in expected[:k]]
    for hit in collapsed:
        source = names(index, [hit.id])[0].split("_")[0].removesuffix(".jpg")
        assert hit.similar == (3 if int(source[1:]) < WITH_COPIES else 0)
    everything = searcher.search_text("a red circle", k=10, rerank=rerank, collapse=True)
    assert [h.id for h in everything] == expected  # all 5 groups: fewer than k exist
    assert all(h.similar == 0 for h in searcher.search_text("a red circle", k=10, rerank=rerank))


def test_image_search_collapses_too_and_a_new_version_regroups(
    index: SearchIndex, photos: tuple[Path, dict[str, str]]
) -> None:
    folder, _ = photos
    searcher = searcher_for(index)
    hits = searcher.search_image(folder / "p0.jpg", k=3, collapse=True)
    assert len(hits) == 3 and names(index, [hits[0].id]) == ["p0.jpg"] and hits[0].similar == 3
    assert not any(name.startswith("p0_") for name in names(index, [h.id for h in hits]))  # collapsed into p0
    ids = index.meta.ids("images").tolist()
    copies = [i for i, name in zip(ids, names(index, ids), strict=True) if name.startswith("p0_")]
    index.remove(copies)  # the group of p0 is gone with its copies: the cached groups are of the old version
    hits = searcher.search_image(folder / "p0.jpg", k=3, collapse=True)
    assert names(index, [hits[0].id]) == ["p0.jpg"] and hits[0].similar == 0


def run_cli(argv: list[str]) -> None:
    from aladin.cli.index_commands import register

    parser = argparse.ArgumentParser(prog="aladin")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    args.func(args)


def test_the_duplicates_command_lists_the_groups(
    index: SearchIndex, capsys: pytest.CaptureFixture[str]
) -> None:
    run_cli(["index", "duplicates", "--index", str(index.directory), "--threshold", str(THRESHOLD), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["threshold"] == THRESHOLD
    groups = [sorted(Path(m["path"]).name for m in g["members"]) for g in out["groups"]]
    copies = ("cropped", "reencoded", "resized")
    assert sorted(groups) == [
        sorted([f"p{s}.jpg", *(f"p{s}_{c}.jpg" for c in copies)]) for s in range(WITH_COPIES)
    ]
    assert all(g["best"] == g["members"][0]["id"] and g["size"] == 4 for g in out["groups"])
    run_cli(["index", "duplicates", "--index", str(index.directory), "--threshold", str(THRESHOLD)])
    table = capsys.readouterr().out
    assert "3 groups" in table and table.count("(best)") == 3


def test_search_collapse_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "photos"
    write_photos(folder)
    centred_model(text_feature_dim=384).save_pretrained(tmp_path / "model")
    index = str(tmp_path / "index")
    run_cli(["index", "build", str(folder), "--model", str(tmp_path / "model"), "--out", index])
    capsys.readouterr()
    query = ["search", "a red circle", "--index", index, "--k", "5", "--rerank", "0", "--json"]
    run_cli(query)
    plain = json.loads(capsys.readouterr().out)["hits"]
    assert all(h["similar"] == 0 for h in plain)
    loaded = SearchIndex.load(index)
    groups = duplicate_groups(loaded, DuplicateConfig(threshold=0.85))  # what --duplicate-threshold 0.85 uses
    assert groups.sizes, "the copies should be near-duplicates at that threshold"
    distinct = len(groups.sizes) + len(loaded) - sum(groups.sizes)
    with pytest.raises(AladinError, match="records no near-duplicate threshold"):  # the model has none
        run_cli([*query, "--collapse"])
    query = [*query, "--duplicate-threshold", "0.85"]
    run_cli([*query, "--collapse"])
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert len(hits) == min(5, distinct)
    assert len({groups.group_of.get(h["id"], -1 - h["id"]) for h in hits}) == len(hits)
    assert [h["similar"] for h in hits] == [groups.similar(h["id"]) for h in hits]
    assert sum(h["similar"] for h in hits) > 0
    run_cli([*[a for a in query if a != "--json"], "--collapse"])
    assert "similar" in capsys.readouterr().out  # the table's column


def test_an_index_written_before_duplicates_existed_groups_and_collapses(tmp_path: Path) -> None:
    legacy = Path(__file__).resolve().parents[1] / "fixtures" / "legacy" / "index"
    shutil.copytree(legacy, tmp_path / "legacy")  # nothing the test does may change the fixture
    model = AladinModel.from_pretrained(tmp_path / "legacy" / "model", "cpu")
    loose = DuplicateConfig(threshold=-1.0)  # every image a near-duplicate of every other: one group
    searcher = Searcher.open(
        tmp_path / "legacy" / "index", model, text_encoder=ToyTextEncoder(), duplicates=loose
    )
    total = len(searcher.index)
    assert [len(g.members) for g in find_duplicates(searcher.index, loose)] == [total]
    assert len(searcher.search_text("a red circle", k=4, rerank=0)) == 4
    hits = searcher.search_text("a red circle", k=4, rerank=0, collapse=True)
    assert len(hits) == 1 and hits[0].similar == total - 1


def test_collapsing_re_ranks_no_more_candidates_than_asked(index: SearchIndex) -> None:
    searcher = searcher_for(index)
    pools: list[list[int]] = []
    align = searcher._align

    def counting_align(kind, queries, candidates):  # the real re-rank, its pool sizes recorded
        pools.append([len(c) for c in candidates])
        return align(kind, queries, candidates)

    searcher._align = counting_align
    hits = searcher.search_text("a red circle", k=2, rerank=3, collapse=True)
    assert (
        len(hits) == 2
        and len({duplicate_groups(index, searcher.duplicates).group_of.get(h.id, h.id) for h in hits}) == 2
    )
    assert pools == [[3]]  # three group representatives, however many copies the kNN list had to pass


def test_collapsing_needs_a_threshold_measured_for_the_model(index: SearchIndex) -> None:
    from aladin.model.pretrained import load_default_model
    from aladin.search.searcher import model_duplicates

    model = centred_model()  # records no threshold: 0.85 was measured on the bundled model's vectors
    searcher = Searcher(index, model, ToyTextEncoder(), CentredImageEncoder(model.config.image_encoder))
    assert searcher.duplicates is None and len(searcher.search_text("a red circle", k=3)) == 3
    with pytest.raises(AladinError, match="records no near-duplicate threshold") as err:
        searcher.search_text("a red circle", k=3, collapse=True)
    assert "\n" not in str(err.value)
    assert model_duplicates(load_default_model()) == DuplicateConfig(threshold=0.85)
