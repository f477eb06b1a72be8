"""Classifier tags (issue #28): what the bundled CNN's ImageNet head names in a picture joins its regions as
word pieces, and features with tags never mix with features without."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from aladin import pipeline
from aladin.config import (
    AladinConfig,
    ImageEncoderConfig,
    ModelConfig,
    RecipeConfig,
    TextEncoderConfig,
    TrainConfig,
)
from aladin.data.dataset import Dataset, ImageItem
from aladin.encoders.cache import extract_features, load_split
from aladin.encoders.classifier_tags import Tag, imagenet_names, select_tags
from aladin.encoders.image import EfficientNetGridEncoder, RegionBatch, TagWords, build_image_encoder
from aladin.errors import AladinError, CheckpointError
from aladin.index.sources import CachedSplitSource

TAGGED = ImageEncoderConfig(multiscale=False, classifier_tags=True)


def picture(seed: int) -> Image.Image:
    """A seeded drawing of coloured shapes: the classifier names something in it, the same every time."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (224, 224), tuple(int(c) for c in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 30))):
        (x1, x2), (y1, y2) = (
            sorted(rng.integers(0, 224, 2).tolist()),
            sorted(rng.integers(0, 224, 2).tolist()),
        )
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = (draw.ellipse, draw.rectangle)[seed % 2]
        shape((x1, y1, x2, y2), fill=colour)
    return image


@pytest.fixture(scope="module")
def tagged_encoder() -> EfficientNetGridEncoder:
    encoder = build_image_encoder(TAGGED)
    assert isinstance(encoder, EfficientNetGridEncoder)
    return encoder


def _logits(probabilities: list[float]) -> torch.Tensor:
    """Logits whose softmax is `probabilities` (which sum to 1)."""
    return torch.tensor([math.log(p) for p in probabilities])


def test_the_names_follow_the_classifiers_class_order():
    names = imagenet_names()
    assert len(names) == 1000
    # ImageNet-1k's sorted synset order: n01440764 tench first, n02132136 brown bear at 294, n15075141 last
    assert (names[0], names[294], names[999]) == ("tench", "brown bear", "toilet tissue")


def test_tags_from_hand_built_logits_keep_thresholds_order_dedup_and_cap():
    names = ("cat", "dog", "crane", "crane", "bear", "car")
    cfg = replace(TAGGED, tag_global_top=3, tag_global_min_p=0.1, tag_cell_min_p=0.3, max_tags=10)
    global_logits = _logits([0.05, 0.5, 0.1, 0.3, 0.04, 0.01])  # top 3: dog, crane (2nd class), crane (1st)
    cells = torch.stack(
        [
            _logits([0.02, 0.02, 0.02, 0.02, 0.9, 0.02]),  # bear
            _logits([0.1, 0.1, 0.1, 0.1, 0.1, 0.5]),  # car
            _logits([0.12, 0.12, 0.12, 0.12, 0.4, 0.12]),  # bear again
            _logits([0.16, 0.16, 0.16, 0.16, 0.16, 0.2]),  # car, below 0.3
            _logits([0.05, 0.8, 0.05, 0.05, 0.03, 0.02]),  # dog: already a whole-image tag
            _logits([0.7, 0.06, 0.06, 0.06, 0.06, 0.06]),  # cat: the global 0.05 was below its minimum
        ]
    )
    tags = select_tags(global_logits, cells, names, cfg)
    assert tags == [
        Tag("dog"),
        Tag("crane"),  # the two classes named "crane" are one tag
        Tag("bear", (0, 2)),
        Tag("cat", (5,)),
        Tag("car", (1,)),
    ]
    assert [t.name for t in select_tags(global_logits, cells, names, replace(cfg, max_tags=3))] == [
        "dog",
        "crane",
        "bear",
    ]
    only_top = select_tags(global_logits, cells, names, replace(cfg, tag_global_top=1, tag_cell_min_p=0.95))
    assert only_top == [Tag("dog")]
    # a probability equal to the minimum is kept
    assert Tag("car", (1,)) in select_tags(global_logits, cells, names, replace(cfg, tag_cell_min_p=0.5))


def test_the_config_refuses_classifier_tags_where_there_is_no_classifier():
    assert TAGGED.max_tag_tokens == 24 and TAGGED.tags_text_encoder == TextEncoderConfig().name
    assert ImageEncoderConfig().max_tag_tokens == 16  # untagged configs are unchanged
    for bad, field in (
        ({"name": "precomputed", "features_path": "x"}, "classifier_tags"),
        ({"name": "hf:/nowhere", "revision": "recorded"}, "classifier_tags"),
        ({"finetune_layers": 1}, "classifier_tags"),
        ({"tag_boxes": "pixel"}, "tag_boxes"),
        ({"tag_cell_min_p": 1.5}, "tag_cell_min_p"),
        ({"max_tags": 0}, "max_tags"),
    ):
        with pytest.raises(AladinError, match=field):
            ImageEncoderConfig(classifier_tags=True, **bad)


def test_tag_word_pieces_follow_the_regions_with_their_own_tags_boxes(minilm):
    tags = TagWords(replace(TAGGED, max_tag_tokens=6), region_dim=3)
    regions = RegionBatch(torch.ones(2, 4, 3), torch.rand(2, 4, 5), torch.ones(2, 4, dtype=torch.bool))
    box_a, box_b = torch.tensor([0.0, 0.0, 0.5, 0.5, 0.25]), torch.tensor([0.5, 0.5, 1.0, 1.0, 0.25])
    names = [["brown bear", "car"], []]
    out = tags.append(regions, names, [[box_a, box_b], []])
    assert out.regions.shape == (2, 4 + 8, 3 + 384) and out.boxes.shape == (2, 12, 5)
    assert torch.equal(out.regions[:, :4, :3], regions.regions) and not out.regions[:, :4, 3:].any()
    assert not out.regions[:, 4:, :3].any()  # tag rows: zeros where the region features go
    pieces = out.region_mask[0, 4:].nonzero().flatten().tolist()
    assert len(pieces) == len(minilm.word_pieces("brown bear car")) == 3
    expected_boxes = torch.stack([box_a, box_a, box_b])
    torch.testing.assert_close(out.boxes[0, 4:][pieces], expected_boxes)
    assert not out.region_mask[1, 4:].any()  # no tags: every tag slot masked
    words = minilm.encode(["brown bear car"])
    torch.testing.assert_close(out.regions[0, 4:][pieces, 3:], words.tokens[0][words.token_mask[0]])
    whole = tags.append(regions, names)  # without boxes: the whole picture, as detector tags
    assert torch.equal(whole.boxes[0, 4:][pieces], torch.tensor([[0.0, 0.0, 1.0, 1.0, 1.0]] * 3))


def test_the_encoder_appends_what_its_classifier_names(tagged_encoder, grid_encoder):
    pictures = [picture(s) for s in range(3)]
    batch = tagged_encoder.encode(pictures)
    plain = grid_encoder.encode(pictures)
    assert tagged_encoder.num_regions == 49 + 26 and tagged_encoder.feature_dim == 1280 + 384
    assert batch.regions.shape == (3, 75, 1664)
    torch.testing.assert_close(batch.regions[:, :49, :1280], plain.regions)  # the grid is untouched
    names = [[tag.name for tag in tags] for tags in tagged_encoder.tags(pictures)]
    assert any(names)
    for row, image_tags in enumerate(names):
        words = tagged_encoder._tags.encoder.word_pieces(" ".join(image_tags)) if image_tags else []
        assert int(batch.region_mask[row, 49:].sum()) == len(words)


def test_cell_boxes_put_a_cell_tag_where_the_cells_are():
    encoder = build_image_encoder(replace(TAGGED, tag_boxes="cell", tag_global_top=0, tag_cell_min_p=0.0))
    assert isinstance(encoder, EfficientNetGridEncoder)
    image = picture(3)
    tags = encoder.tags([image])[0]
    batch = encoder.encode([image])
    first = tags[0]  # with no whole-image tags, the most confident cell's class comes first
    assert first.cells
    box = encoder._tag_box(first)
    torch.testing.assert_close(batch.boxes[0, 49:][batch.region_mask[0, 49:]][0], box)
    cell_boxes = batch.boxes[0, list(first.cells)]
    assert box[0] == cell_boxes[:, 0].min() and box[3] == cell_boxes[:, 3].max()


def _tiny_dataset(root: Path) -> Dataset:
    items = []
    for i in range(4):
        path = root / f"img{i}.png"
        picture(i).save(path)
        items.append(ImageItem(f"id{i}", path, (f"picture {i}",), "test"))
    return Dataset(root, items, name="tiny")


def test_caches_and_indexes_refuse_to_mix_tagged_and_untagged_features(tmp_path, tagged_encoder, minilm):
    cache = extract_features(
        _tiny_dataset(tmp_path), tagged_encoder, minilm, tmp_path / "cache", progress=False
    )
    stored = load_split(cache.cache_dir, "test", TAGGED, minilm.config)
    assert stored.arrays["regions"].shape[1:] == (75, 1664)
    untagged = replace(TAGGED, classifier_tags=False, max_tag_tokens=16, tags_text_encoder="")
    assert untagged == ImageEncoderConfig(multiscale=False)
    with pytest.raises(CheckpointError, match="image_encoder.classifier_tags was True when saved, False now"):
        load_split(cache.cache_dir, "test", untagged, minilm.config)
    other_thresholds = replace(TAGGED, tag_cell_min_p=0.5)
    with pytest.raises(CheckpointError, match="image_encoder.tag_cell_min_p was 0.3 when saved, 0.5 now"):
        load_split(cache.cache_dir, "test", other_thresholds, minilm.config)
    # an index built from cached features takes them only from the encoders its model was trained on
    with pytest.raises(CheckpointError, match="classifier_tags"):
        CachedSplitSource(
            cache.cache_dir, "test", AladinConfig(image_encoder=untagged, text_encoder=minilm.config)
        )
    assert len(CachedSplitSource(cache.cache_dir, "test", AladinConfig(image_encoder=TAGGED)).items) == 4


def _named_dataset(root: Path, encoder: EfficientNetGridEncoder, count: int = 120) -> Path:
    """Drawings whose captions name what the classifier sees in them (its tags), nothing else."""
    (root / "images").mkdir(parents=True)
    drawings = [picture(seed) for seed in range(count + count // 2)]
    named = [
        (image, [tag.name for tag in tags])
        for image, tags in zip(drawings, encoder.tags(drawings), strict=True)
        if len(tags) >= 2
    ][:count]
    assert len(named) == count
    lines = []
    for i, (image, names) in enumerate(named):
        image.save(root / "images" / f"img{i}.png")
        captions = [f"a {names[0]} and a {names[1]}", " and ".join(names[:4])]
        split = "train" if i < 80 else "test"
        lines.append(json.dumps({"image": f"img{i}.png", "captions": captions, "split": split}))
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_classifier_tags_let_words_align_to_what_the_classifier_named(tmp_path, tagged_encoder):
    """The twin of the detector-tags test: drawings whose captions only name the classifier's classes. The grid
    cells carry them too, but would have to learn the ImageNet head from 80 drawings; the tags hand the names
    over in the text encoder's own words (measured: t2i R@5 51 without tags, 68 with)."""
    data = _named_dataset(tmp_path / "data", tagged_encoder)
    fast = dict(batch_size=16, warmup_steps=1, patience=20)
    recipe = RecipeConfig(
        model=ModelConfig(embed_dim=32, global_dim=16, ff_dim=64, num_heads=2),
        alignment=TrainConfig(stage="alignment", epochs=15, lr=2e-3, **fast),
        matching=TrainConfig(stage="matching", loss="distill", epochs=1, **fast),
        baseline=TrainConfig(stage="baseline", epochs=1, **fast),
        train_infonce_student=False,
        rerank_k=4,
    )
    recall = {}
    for tagged in (False, True):
        cfg = replace(TAGGED, classifier_tags=tagged, max_tag_tokens=None, tags_text_encoder="")
        cache, run = tmp_path / f"cache-{tagged}", tmp_path / f"run-{tagged}"
        pipeline.extract(data, cache, image_encoder=cfg)
        pipeline.train(cache, run, recipe)
        recall[tagged] = pipeline.evaluate(cache, run, quiet=True)[0].metrics["t2i_r5"]
    # 40 test images: chance R@5 is 12.5%
    assert recall[True] >= 55 and recall[True] >= recall[False] + 10, recall
