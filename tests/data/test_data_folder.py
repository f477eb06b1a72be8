"""The dataset folder format: round trips, and one precise DataError per kind of malformed input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from aladin.data import Dataset, ImageItem, load_dataset_folder, write_dataset_folder
from aladin.data.folder import MAX_IMAGE_PIXELS, check_image_file, scan_image_folder
from aladin.errors import DataError


def make_images(root: Path, *names: str) -> list[Path]:
    paths = []
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4), (10, 20, 30)).save(path)
        paths.append(path)
    return paths


def test_round_trip(tmp_path: Path) -> None:
    a, b, c = make_images(tmp_path / "images", "a.png", "sub/b.png", "c.png")
    six = tuple(f"caption {i} of a" for i in range(6))
    items = [
        ImageItem("a.png", a, six, "train"),
        ImageItem("custom-id", b, ("only one caption, with “unicode”\u2028and a line separator\x85",), "val"),
        ImageItem("c.png", c, ("x", "y", "z", "w", "v"), "test"),
    ]
    written = write_dataset_folder(items, tmp_path)
    assert written == tmp_path / "captions.jsonl"
    records = [json.loads(line) for line in written.read_text(encoding="utf-8").split("\n") if line]
    assert [r["image"] for r in records] == ["a.png", "sub/b.png", "c.png"]
    assert "id" not in records[0] and records[1]["id"] == "custom-id"

    loaded = load_dataset_folder(tmp_path)
    assert isinstance(loaded, Dataset) and loaded.name == tmp_path.name
    assert [(it.image_id, it.captions, it.split) for it in loaded.items] == [
        (it.image_id, it.captions, it.split) for it in items
    ]
    assert [it.path.resolve() for it in loaded.items] == [a.resolve(), b.resolve(), c.resolve()]
    assert loaded.num_captions == 12
    assert loaded.fingerprint() == Dataset(tmp_path, items).fingerprint()
    # A written dataset writes back byte-identically.
    before = written.read_bytes()
    write_dataset_folder(loaded, tmp_path)
    assert written.read_bytes() == before


def test_images_directly_in_root_and_blank_lines(tmp_path: Path) -> None:
    make_images(tmp_path, "x.jpg")
    line = json.dumps({"image": "x.jpg", "captions": ["a cat"], "split": "train"})
    (tmp_path / "captions.jsonl").write_text(f"\n{line}\n\n")
    (item,) = load_dataset_folder(tmp_path).items
    assert item.path == tmp_path / "x.jpg" and item.image_id == "x.jpg"


def test_write_refuses_images_outside_root(tmp_path: Path) -> None:
    (outside,) = make_images(tmp_path / "elsewhere", "o.png")
    (tmp_path / "ds" / "images").mkdir(parents=True)
    with pytest.raises(DataError, match="not inside"):
        write_dataset_folder([ImageItem("o", outside, ("c",), "train")], tmp_path / "ds")


GOOD = {"image": "a.png", "captions": ["a red circle"], "split": "train"}
DROP = object()


def with_(**changes: object) -> str:
    record = {**GOOD, **changes}
    return json.dumps({k: v for k, v in record.items() if v is not DROP})


# (bad line, fragments the message must contain besides the file name and line number)
MALFORMED = {
    "not json": ("{'image': 1", ["not valid JSON"]),
    "not an object": ('["a.png"]', ["expected a JSON object"]),
    "image missing": (with_(image=DROP), ["'image'", "missing"]),
    "image not a string": (with_(image=5), ["'image'", "non-empty string"]),
    "image empty": (with_(image="  "), ["'image'", "non-empty string"]),
    "image absent on disk": (with_(image="gone.png"), ["'image'", "file not found", "gone.png"]),
    "image escapes root": (with_(image="../a.png"), ["'image'", "inside the dataset folder"]),
    "image absolute": (with_(image="/etc/hosts"), ["'image'", "relative"]),
    "captions missing": (with_(captions=DROP), ["'captions'", "missing"]),
    "captions a string": (with_(captions="a red circle"), ["'captions'", "non-empty list"]),
    "captions empty list": (with_(captions=[]), ["'captions'", "non-empty list"]),
    "caption blank": (with_(captions=["fine", "   "]), ["'captions'", "caption 1"]),
    "caption not a string": (with_(captions=[3]), ["'captions'", "caption 0"]),
    "split missing": (with_(split=DROP), ["'split'", "missing"]),
    "split wrong type": (with_(split=1), ["'split'", "non-empty string"]),
    "split unknown": (with_(split="dev"), ["'split'", "train, val, test", "'dev'"]),
    "id not a string": (with_(id=7), ["'id'", "non-empty string"]),
    "unknown field": (with_(caption=["typo"]), ["'caption'", "unknown field"]),
    "duplicate image": (with_(), ["'image'", "duplicate image id 'a.png'", "first on line 1"]),
    "duplicate id": (with_(image="b.png", id="a.png"), ["'id'", "duplicate image id", "first on line 1"]),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_line(tmp_path: Path, case: str) -> None:
    make_images(tmp_path / "images", "a.png", "b.png")
    bad, fragments = MALFORMED[case]
    (tmp_path / "captions.jsonl").write_text(json.dumps(GOOD) + "\n\n" + bad + "\n")
    with pytest.raises(DataError) as info:
        load_dataset_folder(tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert "captions.jsonl:3:" in message  # line 2 is blank: numbers count every line
    for fragment in fragments:
        assert fragment in message, message


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="dataset folder not found"):
        load_dataset_folder(tmp_path / "nowhere")


def test_missing_captions_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"captions\.jsonl: not found"):
        load_dataset_folder(tmp_path)


def test_empty_captions_file(tmp_path: Path) -> None:
    (tmp_path / "captions.jsonl").write_text("\n  \n")
    with pytest.raises(DataError, match=r"captions\.jsonl: no images"):
        load_dataset_folder(tmp_path)


def test_any_number_of_captions(tmp_path: Path) -> None:
    make_images(tmp_path / "images", *(f"{n}.png" for n in range(1, 8)))
    lines = [
        json.dumps({"image": f"{n}.png", "captions": [f"c{k}" for k in range(n)], "split": "test"})
        for n in range(1, 8)
    ]
    (tmp_path / "captions.jsonl").write_text("\n".join(lines))
    loaded = load_dataset_folder(tmp_path)
    assert [len(it.captions) for it in loaded.items] == list(range(1, 8))


def test_scanning_a_photo_folder_reports_every_file_it_leaves_out(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    good = make_images(root, "a.jpg", "sub/b.PNG")
    (root / "noext").write_bytes((root / "a.jpg").read_bytes())  # an image without an extension: indexed
    (root / "README").write_text("not an image")
    (root / "notes.txt").write_text("ignored: not an image extension")
    (root / "x.heic").write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00")
    (root / "empty.jpg").write_bytes(b"")
    Image.new("1", (8000, MAX_IMAGE_PIXELS // 8000 + 1)).save(root / "huge.png")  # 1-bit: small on disk
    os.symlink(tmp_path / "gone.jpg", root / "dangling.jpg")
    outside = make_images(tmp_path / "elsewhere", "c.jpg")[0]
    os.symlink(outside, root / "link-out.jpg")
    os.symlink(root / "a.jpg", root / "link-in.jpg")  # stays inside: indexed (the server can show it)
    os.symlink(tmp_path / "elsewhere", root / "folder-out")
    os.symlink(root / "sub", root / "folder-in")
    os.symlink(root, root / "sub" / "loop")
    make_images(root / ".thumbnails", "t.jpg")  # hidden: not searched

    found, skipped = scan_image_folder(root)
    assert found == sorted([*good, root / "noext", root / "link-in.jpg"])
    reasons = {Path(s.path).name: s.reason for s in skipped}
    assert set(reasons) == {
        "README", "x.heic", "empty.jpg", "huge.png", "dangling.jpg", "link-out.jpg", "folder-out", "folder-in",
        "loop",
    }  # fmt: skip
    assert reasons["README"] == "not an image (no extension)"
    assert "pillow-heif" in reasons["x.heic"] and reasons["empty.jpg"] == "empty file"
    assert "over the limit" in reasons["huge.png"] and reasons["dangling.jpg"] == "dangling symlink"
    assert reasons["link-out.jpg"].endswith(f"outside {root}")
    assert "not followed" in reasons["folder-in"] and reasons["folder-out"].endswith(f"outside {root})")


def test_the_serving_rule_is_the_indexing_rule(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    inside = make_images(root, "a.png")[0]
    outside = make_images(tmp_path, "secret.png")[0]
    os.symlink(outside, root / "secret.png")
    assert check_image_file(root, inside) is None
    assert check_image_file(root, root / "secret.png") == f"a symlink to {outside}, outside {root}"
    assert check_image_file(root, root / "nothing.png") == "file not found"
    assert check_image_file(root, inside, max_pixels=15) == "4×4 pixels, over the limit of 15"
