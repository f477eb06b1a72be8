from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from aladin.config import ImageEncoderConfig
from aladin.data.dataset import ImageItem
from aladin.encoders.image import build_image_encoder
from aladin.encoders.precomputed import (
    PrecomputedRegionEncoder,
    RegionFolder,
    RegionHDF5,
    collate_regions,
    open_regions,
)
from aladin.errors import AladinError, DataError

CFG = ImageEncoderConfig(name="precomputed")
DIM = 6


def feats(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


def pixel_boxes(n: int) -> np.ndarray:
    """n boxes in a 200×100 image; box i is (10i, 5i, 10i+50, 5i+20)."""
    i = np.arange(n, dtype=np.float64)[:, None]
    return np.hstack([10 * i, 5 * i, 10 * i + 50, 5 * i + 20])


def item(image_id: str, path: Path | None = None) -> ImageItem:
    return ImageItem(image_id, path or Path(f"/nowhere/{image_id}.jpg"), ("a caption",), "train")


def npz_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "feats"
    folder.mkdir(parents=True)
    np.savez(
        folder / "1.npz",
        features=feats(3, 1),
        boxes=pixel_boxes(3),
        image_w=200,
        image_h=100,
        tags=np.array(["dog", "frisbee"]),
    )
    np.savez_compressed(folder / "2.npz", x=feats(5, 2), bbox=pixel_boxes(5), image_w=200, image_h=100)
    return folder


def test_npz_folder_pads_variable_n_and_normalises_boxes(tmp_path: Path) -> None:
    enc = PrecomputedRegionEncoder(CFG, npz_folder(tmp_path))
    assert enc.feature_dim == DIM and enc.num_regions == 5
    batch = enc.encode_items([item("1"), item("2")])
    assert batch.regions.shape == (2, 5, DIM) and batch.regions.dtype == torch.float32
    assert batch.boxes.shape == (2, 5, 5)
    assert batch.region_mask.tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    torch.testing.assert_close(batch.regions[0, :3], torch.from_numpy(feats(3, 1)))
    assert (batch.regions[0, 3:] == 0).all() and (batch.boxes[0, 3:] == 0).all()
    # box 1 of image 1: (10, 5, 60, 25) px in 200×100 → (0.05, 0.05, 0.3, 0.25), area 0.25 × 0.2
    torch.testing.assert_close(batch.boxes[0, 1], torch.tensor([0.05, 0.05, 0.3, 0.25, 0.05]))
    x1, y1, x2, y2, area = batch.boxes[1].unbind(-1)
    torch.testing.assert_close(area, (x2 - x1) * (y2 - y1))
    assert enc.tags_for(item("1")) == ("dog", "frisbee") and enc.tags_for("2") == ()


def test_max_regions_cuts_and_pads(tmp_path: Path) -> None:
    enc = PrecomputedRegionEncoder(CFG, npz_folder(tmp_path), max_regions=4)
    batch = enc.encode_items([item("1"), item("2")])
    assert enc.num_regions == 4 and batch.regions.shape == (2, 4, DIM)
    assert batch.region_mask.tolist() == [[True, True, True, False], [True] * 4]
    torch.testing.assert_close(batch.regions[1], torch.from_numpy(feats(5, 2)[:4]))
    with pytest.raises(AladinError, match="max_regions"):
        PrecomputedRegionEncoder(CFG, npz_folder(tmp_path / "x"), max_regions=-1)


def test_collate_pads_to_largest_in_batch() -> None:
    small = (feats(2, 0), np.full((2, 5), 0.5, dtype=np.float32))
    big = (feats(4, 1), np.full((4, 5), 0.25, dtype=np.float32))
    batch = collate_regions([small, big])
    assert batch.regions.shape == (2, 4, DIM) and batch.region_mask.sum(1).tolist() == [2, 4]
    assert collate_regions([small, small]).regions.shape == (2, 2, DIM)


def test_npy_folder_lookup_by_stem_and_box_units(tmp_path: Path) -> None:
    folder = tmp_path / "npy"
    folder.mkdir()
    np.save(folder / "COCO_val_7.npy", feats(2, 7))
    np.save(folder / "COCO_val_7_boxes.npy", np.array([[0.0, 0.0, 0.5, 0.5], [0.5, 0.25, 1.0, 1.0]]))
    np.save(folder / "pix.npy", feats(3, 8))
    np.save(folder / "pix_boxes.npy", pixel_boxes(3))
    image = tmp_path / "pix.jpg"
    Image.new("RGB", (200, 100)).save(image)
    enc = PrecomputedRegionEncoder(CFG, folder)
    assert enc.num_regions == 3
    # id 7 is not a key, but the image file's stem is; boxes already in 0..1 are kept
    _, boxes = enc.regions_of(item("7", tmp_path / "COCO_val_7.jpg"))
    np.testing.assert_allclose(boxes[1], [0.5, 0.25, 1.0, 1.0, 0.375])
    # pixel boxes without image_w/image_h: the size comes from the image file
    _, boxes = enc.regions_of(item("pix", image))
    np.testing.assert_allclose(boxes[1], [0.05, 0.05, 0.3, 0.25, 0.05], rtol=1e-6)
    with pytest.raises(DataError) as excinfo:
        enc.regions_of(item("pix", tmp_path / "gone" / "pix.jpg"))
    assert "pix.npy" in str(excinfo.value) and "field 'boxes'" in str(excinfo.value)


def test_hdf5(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py", reason="h5py is not installed")
    path = tmp_path / "regions.h5"
    with h5py.File(path, "w") as f:
        for key, n in (("10", 2), ("11", 4)):
            group = f.create_group(key)
            group["features"] = feats(n, int(key))
            group["boxes"] = pixel_boxes(n)
            group.attrs["image_w"], group.attrs["image_h"] = 200, 100
        f["10"]["tags"] = np.array([b"cat", b"sofa"])
        f.create_group("12")["features"] = feats(2, 12)
    assert isinstance(open_regions(path), RegionHDF5)
    enc = PrecomputedRegionEncoder(CFG, path)
    assert enc.num_regions == 4
    batch = enc.encode_items([item("10"), item("11")])
    assert batch.region_mask.sum(1).tolist() == [2, 4]
    torch.testing.assert_close(batch.regions[1], torch.from_numpy(feats(4, 11)))
    torch.testing.assert_close(batch.boxes[0, 1], torch.tensor([0.05, 0.05, 0.3, 0.25, 0.05]))
    assert enc.tags_for("10") == ("cat", "sofa")
    with pytest.raises(DataError) as excinfo:
        enc.encode_items([item("12")])
    assert_error(excinfo, "regions.h5:/12", "'boxes'")
    with pytest.raises(DataError) as excinfo:
        enc.encode_items([item("13")])
    assert_error(excinfo, "regions.h5", "'13'", "group /13")
    enc.source.close()
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(DataError) as excinfo:
        open_regions(bad)
    assert_error(excinfo, "bad.h5", "HDF5")


def assert_error(excinfo: pytest.ExceptionInfo[DataError], *parts: str) -> None:
    message = str(excinfo.value)
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"


@pytest.mark.parametrize(
    ("arrays", "parts"),
    [
        ({"features": np.zeros((2, 3, DIM)), "boxes": pixel_boxes(2)}, ["field 'features'", "2-D"]),
        ({"features": np.zeros((0, DIM)), "boxes": np.zeros((0, 4))}, ["field 'features'", "at least one"]),
        ({"features": feats(3, 0), "boxes": pixel_boxes(2)}, ["field 'boxes'", "2 boxes for 3"]),
        ({"features": feats(2, 0), "boxes": np.zeros((2, 5))}, ["field 'boxes'", "[N, 4]"]),
        ({"features": np.full((2, DIM), np.nan), "boxes": pixel_boxes(2)}, ["field 'features'", "NaN"]),
        ({"features": feats(2, 0), "boxes": np.full((2, 4), np.inf)}, ["field 'boxes'", "NaN or infinite"]),
        ({"features": feats(2, 0)}, ["missing field 'boxes'"]),
        ({"boxes": pixel_boxes(2)}, ["missing field 'features'"]),
        ({"features": np.array([["a"] * DIM] * 2), "boxes": pixel_boxes(2)}, ["field 'features'", "numbers"]),
        ({"features": feats(2, 0), "boxes": pixel_boxes(2), "image_w": 200}, ["'image_h'"]),
        (
            {"features": feats(2, 0), "boxes": pixel_boxes(2), "image_w": -1, "image_h": 5},
            ["field 'image_w'"],
        ),
        (
            {"features": feats(2, 0), "boxes": np.array([[0, 0, 9, 9], [30, 0, 20, 9]])},
            ["field 'boxes'", "row 1"],
        ),
        ({"features": feats(2, 3), "boxes": pixel_boxes(2), "tags": np.zeros((2, 2))}, ["field 'tags'"]),
        (
            {"features": feats(2, 0)[:, :4], "boxes": pixel_boxes(2)},
            ["field 'features'", "expected 6 values"],
        ),
    ],
)
def test_malformed_npz(tmp_path: Path, arrays: dict[str, Any], parts: list[str]) -> None:
    folder = npz_folder(tmp_path)
    size = {} if "image_w" in arrays else {"image_w": 200, "image_h": 100}
    np.savez(folder / "bad.npz", **size, **arrays)
    enc = PrecomputedRegionEncoder(CFG, folder, max_regions=8)
    with pytest.raises(DataError) as excinfo:
        enc.encode_items([item("1"), item("bad")])
    assert_error(excinfo, "bad.npz", *parts)


def test_malformed_files_and_missing_features(tmp_path: Path) -> None:
    folder = npz_folder(tmp_path)
    (folder / "junk.npz").write_bytes(b"garbage")
    np.save(folder / "lonely.npy", feats(2, 0))
    enc = PrecomputedRegionEncoder(CFG, folder, max_regions=8)
    with pytest.raises(DataError) as excinfo:
        enc.encode_items([item("3", Path("/x/COCO_3.jpg"))])
    assert_error(excinfo, str(folder), "'3'", "3.npz or 3.npy", "COCO_3.npz")
    with pytest.raises(DataError) as excinfo:
        enc.encode_items([item("junk")])
    assert_error(excinfo, "junk.npz", "cannot read")
    with pytest.raises(DataError) as excinfo:
        enc.encode_items([item("lonely")])
    assert_error(excinfo, "lonely_boxes.npy", "field 'boxes'", "not found")
    np.savez(folder / "lonely.npz", features=feats(2, 0), boxes=pixel_boxes(2))
    with pytest.raises(DataError) as excinfo:
        RegionFolder(folder)
    assert_error(excinfo, "lonely.npy", "lonely.npz")


def test_scanning_n_reports_bad_shapes(tmp_path: Path) -> None:
    folder = npz_folder(tmp_path)
    np.save(folder / "flat.npy", np.zeros(DIM, dtype=np.float32))
    enc = PrecomputedRegionEncoder(CFG, folder)
    with pytest.raises(DataError) as excinfo:
        enc.num_regions  # noqa: B018
    assert_error(excinfo, "flat.npy", "field 'features'", "2-D")


def test_encode_pictures_is_refused_and_empty_stores(tmp_path: Path) -> None:
    enc = PrecomputedRegionEncoder(CFG, npz_folder(tmp_path))
    with pytest.raises(AladinError, match="cannot encode new pictures"):
        enc.encode([Image.new("RGB", (4, 4))])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no region features"):
        PrecomputedRegionEncoder(CFG, tmp_path / "empty")
    with pytest.raises(DataError, match="not found"):
        open_regions(tmp_path / "missing")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(DataError, match="expected a folder"):
        open_regions(tmp_path / "f.txt")


def test_registered_under_precomputed(tmp_path: Path) -> None:
    with pytest.raises(AladinError, match="features_path"):
        build_image_encoder(CFG)
    # the config fields this encoder reads (features_path, max_regions), as the config will carry them
    fields = [
        ("features_path", str, dataclasses.field(default="")),
        ("max_regions", int, dataclasses.field(default=0)),
    ]
    extended = dataclasses.make_dataclass("Cfg", fields, bases=(ImageEncoderConfig,), frozen=True)
    cfg = extended(name="precomputed", features_path=str(npz_folder(tmp_path)), max_regions=7)
    enc = build_image_encoder(cfg)
    assert isinstance(enc, PrecomputedRegionEncoder) and enc.num_regions == 7 and enc.config is cfg


def test_object_tags_follow_the_regions_as_word_pieces(tmp_path: Path, minilm) -> None:
    cfg = ImageEncoderConfig(name="precomputed", tags_text_encoder="all-MiniLM-L6-v2", max_tag_tokens=4)
    enc = PrecomputedRegionEncoder(cfg, npz_folder(tmp_path))
    tag_dim = minilm.feature_dim
    assert enc.feature_dim == DIM + tag_dim and enc.region_slots == 5 and enc.num_regions == 5 + 6
    batch = enc.encode_items([item("1"), item("2")])
    assert batch.regions.shape == (2, 11, DIM + tag_dim)
    # region rows: the stored features, then zeros where tag features go
    torch.testing.assert_close(batch.regions[0, :3, :DIM], torch.from_numpy(feats(3, 1)))
    assert batch.regions[:, :5, DIM:].abs().sum() == 0
    # tag rows: zeros where region features go, then the tag encoder's word pieces ([CLS]/[SEP] masked)
    words = minilm.encode(["dog frisbee"])
    scored = words.token_mask[0]
    assert batch.region_mask[0, 5:].sum() == scored.sum() > 0
    tag_rows = batch.regions[0, 5:][batch.region_mask[0, 5:]]
    assert tag_rows[:, :DIM].abs().sum() == 0
    torch.testing.assert_close(tag_rows[:, DIM:], words.tokens[0][scored], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(batch.boxes[0, 5:], torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0]).expand(6, 5))
    assert not batch.region_mask[1, 5:].any()  # image 2 has no tags


def test_object_tags_need_precomputed_regions() -> None:
    with pytest.raises(AladinError, match="tags_text_encoder.*precomputed"):
        ImageEncoderConfig(name="efficientnet-lite0", tags_text_encoder="all-MiniLM-L6-v2")
    with pytest.raises(AladinError, match="max_tag_tokens"):
        ImageEncoderConfig(name="precomputed", tags_text_encoder="all-MiniLM-L6-v2", max_tag_tokens=0)
