from __future__ import annotations

from pathlib import Path

from PIL import Image

from aladin.data.check import check_dataset, format_report
from aladin.data.dataset import Dataset, ImageItem


def make_image(path: Path) -> Path:
    Image.new("RGB", (8, 6), (10, 120, 200)).save(path)
    return path


def item(image_id: str, path: Path, n: int, split: str) -> ImageItem:
    return ImageItem(image_id, path, tuple(f"{image_id} caption {i}" for i in range(n)), split)


def healthy(tmp_path: Path) -> Dataset:
    items = [
        item("a", make_image(tmp_path / "a.png"), 5, "train"),
        item("b", make_image(tmp_path / "b.png"), 5, "train"),
        item("c", make_image(tmp_path / "c.png"), 7, "train"),
        item("d", make_image(tmp_path / "d.png"), 6, "val"),
        item("e", make_image(tmp_path / "e.png"), 5, "test"),
    ]
    return Dataset(tmp_path, items, name="tiny")


def test_counts_histogram_and_ok(tmp_path: Path) -> None:
    report = check_dataset(healthy(tmp_path), progress=False)
    assert report.images == {"train": 3, "val": 1, "test": 1}
    assert report.captions == {"train": 17, "val": 6, "test": 5}
    assert report.captions_per_image == {5: 3, 6: 1, 7: 1}
    assert report.num_images == 5 and report.num_captions == 28
    assert report.ok and report.warnings == []
    text = format_report(report)
    assert "dataset 'tiny'" in text and "5 images, 28 captions" in text
    assert "5: 3, 6: 1, 7: 1" in text
    assert text.splitlines()[-1] == "OK"


def test_missing_unreadable_empty_and_duplicates(tmp_path: Path) -> None:
    ds = healthy(tmp_path)
    truncated = tmp_path / "trunc.jpg"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not an image at all")
    ds.items += [
        item("gone", tmp_path / "gone.jpg", 5, "train"),
        item("trunc", truncated, 5, "train"),
        item("garbage", garbage, 5, "test"),
        ImageItem("blank", make_image(tmp_path / "blank.png"), ("fine", "  "), "train"),
        item("a", tmp_path / "a.png", 5, "train"),
        ImageItem("none", tmp_path / "a.png", (), "train"),
    ]
    report = check_dataset(ds, progress=False, workers=2)
    assert report.missing_images == [tmp_path / "gone.jpg"]
    assert [p for p, _ in report.unreadable_images] == [truncated, garbage]
    assert "cannot identify image file" in report.unreadable_images[1][1]
    assert report.empty_captions == [("blank", 1)]
    assert report.images_without_captions == ["none"]
    assert report.duplicate_ids == ["a"]
    assert report.captions_per_image[0] == 1 and report.captions_per_image[2] == 1
    assert not report.ok and report.num_problems == 6
    text = format_report(report)
    for expected in (
        "missing images: 1",
        str(tmp_path / "gone.jpg"),
        "unreadable images: 2",
        "garbage.jpg: cannot read image (cannot identify image file)",
        "empty captions: 1",
        "image 'blank', caption 1",
        "images without captions: 1",
        "duplicate image ids: 1",
    ):
        assert expected in text
    assert text.splitlines()[-1] == "6 problems found"


def test_without_opening_only_existence_is_checked(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"junk")
    ds = Dataset(tmp_path, [item("g", garbage, 5, "train"), item("m", tmp_path / "m.jpg", 5, "train")])
    report = check_dataset(ds, open_images=False)
    assert report.unreadable_images == [] and report.missing_images == [tmp_path / "m.jpg"]
    assert "not opened" in format_report(report)


def test_split_warnings(tmp_path: Path) -> None:
    path = make_image(tmp_path / "a.png")
    only_train = Dataset(tmp_path, [item("a", path, 5, "train"), item("b", path, 5, "train")])
    report = check_dataset(only_train, open_images=False)
    assert report.warnings == [
        "no val split: one will be carved from train",
        "no test split: evaluation needs one",
    ]
    assert report.ok  # warnings are not problems
    assert "warning: no val split: one will be carved from train" in format_report(report)
    odd = Dataset(tmp_path, [item("a", path, 5, "test"), item("b", path, 5, "holdout")])
    warnings = check_dataset(odd, open_images=False).warnings
    assert warnings[0].startswith("no train split") and "'holdout'" in warnings[-1]


def test_empty_dataset_is_a_problem(tmp_path: Path) -> None:
    report = check_dataset(Dataset(tmp_path, []), progress=False)
    assert not report.ok
    assert "no images" in format_report(report)


def test_long_lists_are_cut(tmp_path: Path) -> None:
    ds = Dataset(tmp_path, [item(f"m{i}", tmp_path / f"m{i}.jpg", 5, "train") for i in range(8)])
    text = format_report(check_dataset(ds, progress=False))
    assert "missing images: 8" in text and "... and 3 more" in text
    assert str(tmp_path / "m4.jpg") in text and str(tmp_path / "m5.jpg") not in text
