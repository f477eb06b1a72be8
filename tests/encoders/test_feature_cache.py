from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from aladin.config import ImageEncoderConfig, TextEncoderConfig
from aladin.data.dataset import Dataset, ImageItem
from aladin.data.images import load_image
from aladin.encoders.cache import FeatureCache, extract_features, load_split
from aladin.encoders.image import ImageEncoder, RegionBatch
from aladin.encoders.text import TextEncoder, TokenBatch
from aladin.errors import CheckpointError, DataError

CAPTIONS = [
    (
        "a red square on grey",
        "a square",
        "red block",
        "grey background with red",
        "one red shape",
        "a red box",
    ),
    ("a blue circle",),
    ("a green bar", "a long green shape on the left side of a picture"),
    ("a yellow triangle", "yellow"),
    ("two dots",),
    ("an orange ring", "a ring that is orange"),
]
SPLITS = ("train", "train", "train", "train", "test", "test")


def make_dataset(root: Path, corrupt: int | None = None) -> Dataset:
    items = []
    for i, (captions, split) in enumerate(zip(CAPTIONS, SPLITS, strict=True)):
        path = root / f"img{i}.png"
        if i == corrupt:
            path.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
        else:
            img = Image.new("RGB", (40 + 8 * i, 32), (30 * i, 100, 200 - 20 * i))
            ImageDraw.Draw(img).rectangle([4 * i, 4, 4 * i + 12, 20], fill=(250, 20 * i, 10))
            img.save(path)
        items.append(ImageItem(f"id{i}", path, captions, split))
    return Dataset(root, items, name="tiny")


class Wrapped(ImageEncoder, TextEncoder):
    """Delegates to a real encoder, counting what it encodes and failing after `fail_after` calls."""

    def __init__(self, inner: ImageEncoder | TextEncoder, fail_after: int | None = None) -> None:
        self.inner = inner
        self.config = inner.config
        self.fail_after = fail_after
        self.calls = 0
        self.encoded = 0

    @property
    def feature_dim(self) -> int:
        return self.inner.feature_dim

    @property
    def num_regions(self) -> int:
        return self.inner.num_regions

    def lengths(self, texts: list[str]) -> list[int]:
        return self.inner.lengths(texts)

    def word_pieces(self, text: str) -> list[str]:
        return self.inner.word_pieces(text)

    def encode(self, inputs: list) -> RegionBatch | TokenBatch:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("simulated interruption")
        self.calls += 1
        self.encoded += len(inputs)
        return self.inner.encode(inputs)


@pytest.fixture(scope="module")
def extracted(tmp_path_factory: pytest.TempPathFactory, grid_encoder, minilm) -> tuple[Dataset, Path]:
    root = tmp_path_factory.mktemp("data")
    dataset = make_dataset(root)
    cache_dir = root / "cache"
    extract_features(dataset, grid_encoder, minilm, cache_dir, batch_size=2, progress=False)
    return dataset, cache_dir


def read_arrays(directory: Path) -> dict[str, np.ndarray]:
    return {p.stem: np.load(p) for p in sorted(directory.glob("*.npy"))}


def test_layout_dtypes_and_shapes(extracted, minilm) -> None:
    dataset, cache_dir = extracted
    assert sorted(p.name for p in cache_dir.iterdir()) == ["test", "train"]
    train = read_arrays(cache_dir / "train")
    num_captions = sum(len(c) for c in CAPTIONS[:4])
    longest = max(minilm.lengths([c for caps in CAPTIONS[:4] for c in caps]))
    assert longest < minilm.config.max_length  # L is the longest caption, not max_length
    expected = {
        "regions": (np.float16, (4, 49, 1280)),
        "boxes": (np.float16, (4, 49, 5)),
        "region_mask": (np.bool_, (4, 49)),
        "tokens": (np.float16, (num_captions, longest, 384)),
        "token_mask": (np.bool_, (num_captions, longest)),
        "attention_mask": (np.bool_, (num_captions, longest)),
        "input_ids": (np.int32, (num_captions, longest)),
        "caption_image": (np.int64, (num_captions,)),
    }
    assert {name: (a.dtype.type, a.shape) for name, a in train.items()} == expected
    assert train["caption_image"].tolist() == [0] * 6 + [1] + [2] * 2 + [3] * 2
    meta = json.loads((cache_dir / "train" / "meta.json").read_text())
    assert meta["fingerprint"] == dataset.split("train").fingerprint()
    assert meta["image_ids"] == ["id0", "id1", "id2", "id3"]
    assert meta["image_paths"] == [str(it.path) for it in dataset.items[:4]]
    assert meta["captions"] == [c for caps in CAPTIONS[:4] for c in caps]
    assert meta["num_images"] == 4 and meta["num_captions"] == num_captions
    assert meta["image_encoder"]["name"] == "efficientnet-lite0" and meta["text_feature_dim"] == 384
    assert not list(cache_dir.glob("*.partial"))


def test_reloaded_values_match_direct_encoding(extracted, grid_encoder, minilm) -> None:
    dataset, cache_dir = extracted
    cache = FeatureCache(cache_dir, ImageEncoderConfig(multiscale=False), TextEncoderConfig())
    assert cache.splits == ["test", "train"] and "test" in cache
    test = cache.split("test", fingerprint=dataset.split("test").fingerprint())
    assert (test.num_images, test.num_captions) == (2, 3)
    assert test.image_ids == ["id4", "id5"] and test.captions == [
        "two dots",
        "an orange ring",
        "a ring that is orange",
    ]
    assert test.caption_image.tolist() == [0, 1, 1]
    direct = grid_encoder.encode([load_image(dataset.items[5].path), load_image(dataset.items[4].path)])
    cached = test.image_batch([1, 0])
    assert cached.regions.dtype == torch.float32 and cached.region_mask.dtype == torch.bool
    torch.testing.assert_close(cached.regions, direct.regions, atol=2e-2, rtol=1e-2)
    torch.testing.assert_close(cached.boxes, direct.boxes, atol=1e-3, rtol=0)
    assert torch.equal(cached.region_mask, direct.region_mask)

    texts = test.text_batch([2, 0])
    direct_text = minilm.encode(["a ring that is orange", "two dots"])
    assert texts.tokens.shape == direct_text.tokens.shape  # trimmed to the longest caption asked for
    torch.testing.assert_close(texts.tokens, direct_text.tokens, atol=2e-2, rtol=1e-2)
    for name in ("token_mask", "attention_mask", "input_ids"):
        assert torch.equal(getattr(texts, name), getattr(direct_text, name)), name


def test_complete_split_is_not_extracted_again(extracted, grid_encoder, minilm) -> None:
    dataset, cache_dir = extracted
    before = {p: p.stat().st_mtime_ns for p in cache_dir.rglob("*")}
    images, texts = Wrapped(grid_encoder), Wrapped(minilm)
    extract_features(dataset, images, texts, cache_dir, batch_size=2, progress=False)
    assert images.encoded == 0 and texts.encoded == 0
    assert {p: p.stat().st_mtime_ns for p in cache_dir.rglob("*")} == before


@pytest.mark.parametrize("failing", ["images", "texts"])
def test_interrupted_extraction_resumes(
    extracted, grid_encoder, minilm, tmp_path: Path, failing: str
) -> None:
    dataset, reference = extracted
    cache_dir = tmp_path / "cache"
    images = Wrapped(grid_encoder, fail_after=1 if failing == "images" else None)
    texts = Wrapped(minilm, fail_after=1 if failing == "texts" else None)
    with pytest.raises(RuntimeError, match="simulated"):
        extract_features(dataset, images, texts, cache_dir, batch_size=2, progress=False)
    assert not (cache_dir / "train").exists()
    progress = json.loads((cache_dir / "train.partial" / "progress.json").read_text())
    assert (progress["images_done"], progress["captions_done"]) == ((2, 0) if failing == "images" else (4, 2))

    images, texts = Wrapped(grid_encoder), Wrapped(minilm)
    extract_features(dataset, images, texts, cache_dir, batch_size=2, progress=False)
    assert images.encoded == (4 - 2 if failing == "images" else 0) + 2  # + the test split
    assert texts.encoded == (11 if failing == "images" else 11 - 2) + 3
    assert not list(cache_dir.glob("*.partial"))
    for split in ("train", "test"):
        got, want = read_arrays(cache_dir / split), read_arrays(reference / split)
        assert got.keys() == want.keys()
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=f"{split}/{name}")


def test_changed_data_is_extracted_again(extracted, grid_encoder, minilm, tmp_path: Path) -> None:
    dataset, _ = extracted
    cache_dir = tmp_path / "cache"
    extract_features(dataset, grid_encoder, minilm, cache_dir, batch_size=4, progress=False)
    items = [
        ImageItem(it.image_id, it.path, (*it.captions, "one more caption"), it.split)
        if it.split == "test"
        else it
        for it in dataset.items
    ]
    changed = Dataset(dataset.root, items, name="tiny")
    images = Wrapped(grid_encoder)
    extract_features(changed, images, minilm, cache_dir, batch_size=4, progress=False)
    assert images.encoded == 2  # only the test split changed
    assert load_split(cache_dir, "test").num_captions == 5
    with pytest.raises(CheckpointError, match="fingerprint"):
        load_split(cache_dir, "test", fingerprint=dataset.split("test").fingerprint())


def test_mismatches_are_refused(extracted, tmp_path: Path) -> None:
    _, cache_dir = extracted
    with pytest.raises(CheckpointError, match=r"meta\.json: image_encoder\.multiscale was False"):
        load_split(cache_dir, "train", ImageEncoderConfig(multiscale=True))
    with pytest.raises(CheckpointError, match=r"text_encoder\.max_length was 40 when saved, 20 now"):
        FeatureCache(cache_dir, text_encoder_config=TextEncoderConfig(max_length=20)).split("train")
    with pytest.raises(CheckpointError, match=r"split 'val' \(available: test, train\)"):
        load_split(cache_dir, "val")

    copy = tmp_path / "copy"
    (copy / "train").mkdir(parents=True)
    for p in (cache_dir / "train").iterdir():
        (copy / "train" / p.name).write_bytes(p.read_bytes())
    meta = json.loads((copy / "train" / "meta.json").read_text())
    (copy / "train" / "meta.json").write_text(json.dumps({**meta, "format_version": 999}))
    with pytest.raises(CheckpointError, match=r"train/meta\.json: feature cache format version 999"):
        load_split(copy, "train")


def test_corrupt_image_names_the_file_and_leaves_no_split(grid_encoder, minilm, tmp_path: Path) -> None:
    dataset = make_dataset(tmp_path, corrupt=2)
    cache_dir = tmp_path / "cache"
    with pytest.raises(DataError, match="img2.png"):
        extract_features(dataset, grid_encoder, minilm, cache_dir, batch_size=2, progress=False)
    assert not (cache_dir / "train").exists()
    assert FeatureCache(cache_dir).splits == []


def test_encoders_of_stored_features_never_load_pictures(minilm, tmp_path: Path) -> None:
    class Stored(ImageEncoder):
        """Serves per-item features, like a detector-feature store: pixels are never looked at."""

        config = ImageEncoderConfig(name="stored-test")
        feature_dim = 4
        num_regions = 2

        def encode(self, images: list[Image.Image]) -> RegionBatch:
            raise AssertionError("pictures must not be loaded")

        def encode_items(self, items) -> RegionBatch:
            values = torch.tensor([float(it.image_id[2:]) for it in items]).view(-1, 1, 1).expand(-1, 2, 4)
            return RegionBatch(
                values.clone(), torch.zeros(len(items), 2, 5), torch.ones(len(items), 2, dtype=bool)
            )

    dataset = make_dataset(tmp_path, corrupt=2)  # the corrupt picture is never opened
    cache = extract_features(dataset, Stored(), minilm, tmp_path / "cache", batch_size=3, progress=False)
    train = cache.split("train")
    assert train.image_batch([2, 3]).regions[:, 0, 0].tolist() == [2.0, 3.0]


def test_caches_from_before_a_new_encoder_option_still_load(extracted, tmp_path: Path) -> None:
    _, cache_dir = extracted
    old = tmp_path / "old"
    shutil.copytree(cache_dir / "train", old / "train")
    meta = json.loads((old / "train" / "meta.json").read_text())
    for field in ("tags_text_encoder", "max_tag_tokens"):  # options added after such a cache was written
        del meta["image_encoder"][field]
    del meta["config_schema_version"]  # which also predates the config schema versions
    (old / "train" / "meta.json").write_text(json.dumps(meta))
    assert load_split(old, "train", ImageEncoderConfig(multiscale=False)).num_images == 4
    with pytest.raises(CheckpointError, match=r"image_encoder\.max_tag_tokens was 16 when saved, 8 now"):
        load_split(old, "train", ImageEncoderConfig(max_tag_tokens=8))  # a changed value is still named


def test_train_split_caches_augmented_views_and_other_splits_do_not(minilm, tmp_path: Path) -> None:
    from aladin.encoders.image import build_image_encoder
    from aladin.model.features import FeatureTensors

    (tmp_path / "data").mkdir()
    dataset = make_dataset(tmp_path / "data")
    encoder = build_image_encoder(ImageEncoderConfig(train_views=3, multiscale=False))
    extract_features(dataset, encoder, minilm, tmp_path / "cache", batch_size=3, progress=False)
    train, test = load_split(tmp_path / "cache", "train"), load_split(tmp_path / "cache", "test")
    regions, views = (
        train.arrays["regions"].astype(np.float32),
        train.arrays["view_regions"].astype(np.float32),
    )
    assert views.shape == (4, 2, *regions.shape[1:])
    assert "view_regions" not in test.arrays
    # each view is a crop of its own picture: not the picture, not the other crop, the same on every extraction
    assert np.abs(views[:, 0] - regions).mean() > 0.01 and np.abs(views[:, 0] - views[:, 1]).mean() > 0.01
    again = build_image_encoder(ImageEncoderConfig(train_views=3, multiscale=False)).encode_views(
        dataset.split("train").items, 0, 3
    )[1]
    assert np.allclose(again.numpy(), views, atol=2e-2)
    assert FeatureTensors.from_arrays(train.arrays).view_regions.shape == views.shape
    # only the train split depends on the number of views: a model trained with views reads any test split
    for views_wanted in (1, 3, 5):
        wanted = ImageEncoderConfig(train_views=views_wanted, multiscale=False)
        assert load_split(tmp_path / "cache", "test", wanted).num_images == 2
    with pytest.raises(CheckpointError, match=r"image_encoder\.train_views was 3 when saved, 1 now"):
        load_split(tmp_path / "cache", "train", ImageEncoderConfig(multiscale=False))
