"""The synthetic default dataset: deterministic, twins that only binding can tell apart, captions that are true."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aladin.data import (
    SyntheticConfig,
    generate_synthetic_dataset,
    load_dataset_folder,
    read_scenes,
    synthetic,
)
from aladin.data.synthetic import BACKGROUNDS, COLOURS, SHAPES, Scene
from aladin.errors import AladinError, DataError

#: The exhaustive mode: every caption names every object, all shapes and colours distinct in a scene.
CFG = SyntheticConfig(
    seed=3,
    n_train=24,
    n_val=6,
    n_test=9,
    min_objects=2,
    max_objects=3,
    max_mentioned=0,
    distinct_attributes=True,
)
#: The default mode: partial captions of cluttered scenes.
PARTIAL = SyntheticConfig(seed=4, n_train=40, n_val=0, n_test=20)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Scene]]:
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic_dataset(root, CFG)
    return root, read_scenes(root)


def folder_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_splits_ids_and_image_files(generated: tuple[Path, list[Scene]]) -> None:
    root, scenes = generated
    dataset = load_dataset_folder(root)
    assert {s: len(dataset.split(s)) for s in dataset.split_names()} == {"train": 24, "val": 6, "test": 10}
    assert [it.image_id for it in dataset.items] == [s.image_id for s in scenes]
    for item, scene in zip(dataset.items, scenes, strict=True):
        assert item.image_id.startswith(f"{item.split}_") and scene.split == item.split
        assert item.captions == scene.captions and len(item.captions) == CFG.captions_per_image
        with Image.open(item.path) as img:
            assert img.size == (224, 224) and img.mode == "RGB"


def test_without_twins_counts_are_exact_and_single_objects_work(tmp_path: Path) -> None:
    cfg = SyntheticConfig(
        n_train=3, n_val=1, n_test=1, twins=False, min_objects=1, max_objects=1, textures=False
    )
    dataset = generate_synthetic_dataset(tmp_path, cfg)
    assert [len(dataset.split(s)) for s in ("train", "val", "test")] == [3, 1, 1]
    assert all(s.twin is None and len(s.objects) == 1 for s in read_scenes(tmp_path))


def test_same_seed_is_byte_identical_other_seed_differs(
    generated: tuple[Path, list[Scene]], tmp_path: Path
) -> None:
    root, _ = generated
    generate_synthetic_dataset(tmp_path / "again", CFG)
    assert folder_bytes(tmp_path / "again") == folder_bytes(root)
    generate_synthetic_dataset(tmp_path / "other", SyntheticConfig(seed=4, n_train=24, n_val=6, n_test=9))
    other = folder_bytes(tmp_path / "other")
    assert other["captions.jsonl"] != folder_bytes(root)["captions.jsonl"]
    assert other["images/train_00000.png"] != folder_bytes(root)["images/train_00000.png"]


def test_twins_differ_only_in_colour_binding(generated: tuple[Path, list[Scene]]) -> None:
    root, scenes = generated
    for first, second in zip(scenes[::2], scenes[1::2], strict=True):
        assert first.twin == second.image_id and second.twin == first.image_id and first.split == second.split
        assert first.background == second.background
        assert second.swapped is not None
        i, j = second.swapped
        for k, (a, b) in enumerate(zip(first.objects, second.objects, strict=True)):
            assert (a.shape, a.size, a.texture, a.box) == (b.shape, b.size, b.texture, b.box)
            assert (a.colour == b.colour) == (k not in (i, j))
        assert second.objects[i].colour == first.objects[j].colour
        assert second.objects[j].colour == first.objects[i].colour
        # Equal bags of colours and of shapes; swapped objects even have the same pixel size.
        assert Counter(o.colour for o in first.objects) == Counter(o.colour for o in second.objects)
        assert (
            first.objects[i].box[2] - first.objects[i].box[0]
            == first.objects[j].box[2] - first.objects[j].box[0]
        )
        assert set(first.captions).isdisjoint(second.captions)
        # The pixels differ, and only inside the two swapped objects' boxes.
        a = np.asarray(Image.open(root / "images" / f"{first.image_id}.png"), dtype=np.int16)
        b = np.asarray(Image.open(root / "images" / f"{second.image_id}.png"), dtype=np.int16)
        changed = np.abs(a - b).sum(axis=2) > 0
        inside = np.zeros_like(changed)
        for k in (i, j):
            x0, y0, x1, y1 = first.objects[k].box
            inside[y0:y1, x0:x1] = True
        assert changed.any() and not (changed & ~inside).any()


def test_rendered_pixels_match_metadata(generated: tuple[Path, list[Scene]]) -> None:
    root, scenes = generated
    checked = 0
    for scene in scenes:
        img = Image.open(root / "images" / f"{scene.image_id}.png")
        for obj in scene.objects:
            if obj.texture == "plain":
                cx, cy = obj.centre
                assert img.getpixel((int(cx), int(cy))) == COLOURS[obj.colour]
                checked += 1
    assert checked > 20


def test_objects_are_large_inside_and_apart(generated: tuple[Path, list[Scene]]) -> None:
    _, scenes = generated
    sides = {"small": [], "large": []}
    for scene in scenes:
        assert (
            len({o.shape for o in scene.objects})
            == len({o.colour for o in scene.objects})
            == len(scene.objects)
        )
        assert CFG.min_objects <= len(scene.objects) <= CFG.max_objects
        for k, obj in enumerate(scene.objects):
            x0, y0, x1, y1 = obj.box
            assert x1 - x0 == y1 - y0 >= 32 and 0 <= x0 and 0 <= y0 and x1 <= 224 and y1 <= 224
            sides[obj.size].append(x1 - x0)
            for other in scene.objects[k + 1 :]:
                u0, v0, u1, v1 = other.box
                assert x1 + 8 <= u0 or u1 + 8 <= x0 or y1 + 8 <= v0 or v1 + 8 <= y0
    assert max(sides["small"]) * 1.5 < min(sides["large"])


def test_backgrounds_contrast_with_every_object_colour() -> None:
    for bg in BACKGROUNDS.values():
        for colour in COLOURS.values():
            assert np.linalg.norm(np.subtract(bg, colour)) > 90


def phrase_pattern(colour: str, shape: str) -> str:
    return rf"\b{colour} {shape}\b"


def test_every_caption_binds_every_colour_to_its_shape(generated: tuple[Path, list[Scene]]) -> None:
    _, scenes = generated
    for scene in scenes:
        assert len(set(scene.captions)) == len(scene.captions)
        for caption in scene.captions:
            for obj in scene.objects:
                assert re.search(phrase_pattern(obj.colour, obj.shape), caption, re.IGNORECASE), caption


VOCAB = "|".join([*COLOURS, *SHAPES, "small", "little", "large", "big", "striped", "dotted"])
REL = r"to the left of|left of|to the right of|right of|above|over|below|under|beneath"
REL_MEANING = {"to the left of": "left", "left of": "left", "to the right of": "right", "right of": "right"}
REL_MEANING |= {"above": "above", "over": "above", "below": "below", "under": "below", "beneath": "below"}
PRONOUN = {"to its left": "left", "to its right": "right", "above it": "above", "below it": "below"}
SHAPE = "|".join(SHAPES)


def stated_relations(caption: str) -> list[tuple[str, str, str]]:
    """(shape A, relation, shape B) read from the caption text alone, independent of the metadata."""
    text = caption.lower().rstrip(".")
    found = []
    fronted = re.match(rf"({REL}) the [\w ]*?\b({SHAPE}) there is [\w ]*?\b({SHAPE})\b", text)
    if fronted:
        found.append((fronted[3], REL_MEANING[fronted[1]], fronted[2]))
    for m in re.finditer(rf"\b({SHAPE}) with [\w ]*?\b({SHAPE}) ({'|'.join(PRONOUN)})", text):
        found.append((m[2], PRONOUN[m[3]], m[1]))
    for m in re.finditer(rf"\b({SHAPE}) (?:is )?({REL}) (?:a|an|the) [\w ]*?\b({SHAPE})\b", text):
        found.append((m[1], REL_MEANING[m[2]], m[3]))
    return found


def test_stated_relations_are_geometrically_true(generated: tuple[Path, list[Scene]]) -> None:
    _, scenes = generated
    n_relations = 0
    for scene in scenes:
        by_shape = {o.shape: o for o in scene.objects}
        for caption, relation in zip(scene.captions, scene.relations, strict=True):
            stated = stated_relations(caption)
            if relation is None:
                assert stated == [], caption
                continue
            n_relations += 1
            a, rel, b = relation
            assert stated == [(scene.objects[a].shape, rel, scene.objects[b].shape)], caption
            (ax, ay), (bx, by) = by_shape[stated[0][0]].centre, by_shape[stated[0][2]].centre
            gap = {"left": bx - ax, "right": ax - bx, "above": by - ay, "below": ay - by}[rel]
            assert gap >= 40, (caption, scene.objects)
    assert n_relations >= 0.3 * sum(len(s.captions) for s in scenes)


def skeleton(caption: str) -> str:
    text = re.sub(rf"\b(?:a|an|the) (?:(?:{VOCAB}) )+", "O ", caption.lower())
    text = re.sub(r"(?:speckled )?\w+(?:-to-\w+ gradient)? background", "BG", text)
    text = re.sub(rf"\b(?:{REL}|{'|'.join(PRONOUN)})\b", "REL", text)
    text = re.sub(r"\b(?:two|three|four)\b", "N", text)
    return re.sub(r"O(?:, O)* and O", "LIST", text)


def test_at_least_eight_sentence_structures(generated: tuple[Path, list[Scene]]) -> None:
    _, scenes = generated
    assert len({skeleton(c) for s in scenes for c in s.captions}) >= 8


def test_complete_folder_is_reused_and_stale_one_regenerated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = SyntheticConfig(n_train=4, n_val=2, n_test=2)
    generate_synthetic_dataset(tmp_path, small)
    before = folder_bytes(tmp_path)

    def must_not_render(*_: object) -> None:
        raise AssertionError("a complete folder was rendered again")

    with monkeypatch.context() as patch:
        patch.setattr(synthetic, "render_scene", must_not_render)
        assert len(generate_synthetic_dataset(tmp_path, small)) == 8
    assert folder_bytes(tmp_path) == before

    smaller = SyntheticConfig(n_train=2, n_val=2, n_test=2)
    assert len(generate_synthetic_dataset(tmp_path, smaller)) == 6
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [
        "test_00000.png", "test_00001.png", "train_00000.png", "train_00001.png", "val_00000.png", "val_00001.png"
    ]  # fmt: skip


def test_interrupted_generation_is_redone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = SyntheticConfig(n_train=2, n_val=0, n_test=2)

    def crash(*_: object) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(synthetic, "write_dataset_folder", crash)
        with pytest.raises(KeyboardInterrupt):
            generate_synthetic_dataset(tmp_path, cfg)
    assert len(generate_synthetic_dataset(tmp_path, cfg)) == 4


def test_refuses_to_overwrite_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "captions.jsonl").write_text("mine\n")
    with pytest.raises(DataError, match="refusing to overwrite"):
        generate_synthetic_dataset(tmp_path, SyntheticConfig(n_train=2, n_val=0, n_test=0))
    assert (tmp_path / "captions.jsonl").read_text() == "mine\n"


def test_bad_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AladinError, match="min_objects"):
        generate_synthetic_dataset(tmp_path, SyntheticConfig(min_objects=1, twins=True))
    with pytest.raises(AladinError, match="max_objects"):
        generate_synthetic_dataset(tmp_path, SyntheticConfig(max_objects=7))
    with pytest.raises(AladinError, match="not all 0"):
        generate_synthetic_dataset(tmp_path, SyntheticConfig(n_train=0, n_val=0, n_test=0))


@pytest.fixture(scope="module")
def partial(tmp_path_factory: pytest.TempPathFactory) -> list[Scene]:
    root = tmp_path_factory.mktemp("partial")
    generate_synthetic_dataset(root, PARTIAL)
    return read_scenes(root)


def mentioned_objects(caption: str, scene: Scene) -> set[int]:
    return {
        k
        for k, obj in enumerate(scene.objects)
        if re.search(phrase_pattern(obj.colour, obj.shape), caption, re.IGNORECASE)
    }


def test_partial_captions_name_one_or_two_objects_with_their_true_colours(partial: list[Scene]) -> None:
    counts = Counter()
    for scene in partial:
        assert PARTIAL.min_objects <= len(scene.objects) <= PARTIAL.max_objects
        pairs = [(o.shape, o.colour) for o in scene.objects]
        assert len(set(pairs)) == len(pairs)
        for caption in scene.captions:
            named = re.findall(rf"\b({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})\b", caption.lower())
            assert 1 <= len(named) <= PARTIAL.max_mentioned, caption
            assert all((shape, colour) in pairs for colour, shape in named), (
                caption,
                pairs,
            )  # real objects only
            counts[len(named)] += 1
    assert counts[1] and counts[2]  # both lengths occur


def test_partial_twins_never_share_a_caption(partial: list[Scene]) -> None:
    for first, second in zip(partial[::2], partial[1::2], strict=True):
        i, j = second.swapped
        assert set(first.captions).isdisjoint(second.captions)
        assert first.objects[i].shape != first.objects[j].shape
        for caption in second.captions:
            assert mentioned_objects(caption, second) & {i, j}, caption


def test_partial_relations_are_geometrically_true(partial: list[Scene]) -> None:
    stated_count = 0
    for scene in partial:
        for relation in scene.relations:
            if relation is not None:
                a, rel, b = relation
                assert synthetic.relation_holds(scene.objects[a], rel, scene.objects[b])
                stated_count += 1
    assert stated_count > 0
