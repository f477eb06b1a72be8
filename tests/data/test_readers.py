from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from aladin.data.readers import (
    load_dataset,
    read_coco_captions,
    read_flickr_tokens,
    read_image_folder_with_captions,
    read_karpathy,
)
from aladin.errors import DataError


def make_image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), (200, 30, 30)).save(path)
    return path


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def caps(prefix: str, n: int) -> list[str]:
    return [f"{prefix} caption {i}" for i in range(n)]


def assert_error(excinfo: pytest.ExceptionInfo[DataError], *parts: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"


# --- COCO ----------------------------------------------------------------------------------------------------------


def coco_data(n_caps: dict[int, int]) -> dict[str, Any]:
    return {
        "images": [{"id": i, "file_name": f"COCO_{i}.jpg"} for i in n_caps],
        "annotations": [
            {"image_id": i, "id": 100 * i + k, "caption": c}
            for i, n in n_caps.items()
            for k, c in enumerate(caps(f"img{i}", n))
        ],
    }


def coco_fixture(tmp_path: Path, n_caps: dict[int, int] | None = None) -> tuple[Path, Path]:
    n_caps = n_caps if n_caps is not None else {1: 5, 2: 6, 3: 7, 4: 0}
    images = tmp_path / "train2014"
    for i in n_caps:
        make_image(images / f"COCO_{i}.jpg")
    return write_json(tmp_path / "annotations" / "captions_train2014.json", coco_data(n_caps)), images


def test_coco_keeps_5_6_7_captions_and_skips_uncaptioned(tmp_path: Path, caplog: Any) -> None:
    ann, images = coco_fixture(tmp_path)
    with caplog.at_level(logging.WARNING):
        ds = read_coco_captions(ann, images, "train")
    assert [it.image_id for it in ds.items] == ["1", "2", "3"]
    assert [len(it.captions) for it in ds.items] == [5, 6, 7]
    assert ds.items[2].captions[6] == "img3 caption 6"
    assert ds.items[0].path == images / "COCO_1.jpg"
    assert {it.split for it in ds.items} == {"train"}
    assert "skipped 1 image(s) without captions" in caplog.text


def test_coco_strips_captions(tmp_path: Path) -> None:
    data = coco_data({1: 1})
    data["annotations"][0]["caption"] = "  A dog.\n"
    make_image(tmp_path / "COCO_1.jpg")
    ds = read_coco_captions(write_json(tmp_path / "c.json", data), tmp_path, "val")
    assert ds.items[0].captions == ("A dog.",) and ds.items[0].split == "val"


@pytest.mark.parametrize(
    ("mutate", "parts"),
    [
        (lambda d: d.pop("images"), ["'images'"]),
        (lambda d: d.pop("annotations"), ["'annotations'"]),
        (lambda d: d.update(images={"id": 1}), ["field 'images'", "expected a list"]),
        (lambda d: d["images"][1].pop("file_name"), ["images[1]", "'file_name'"]),
        (lambda d: d["images"][0].update(id=1.5), ["images[0]", "field 'id'"]),
        (
            lambda d: d["images"].append({"id": 1, "file_name": "x.jpg"}),
            ["images[2]", "duplicate image id '1'"],
        ),
        (lambda d: d["annotations"][3].update(image_id=99), ["annotations[3]", "field 'image_id'", "'99'"]),
        (
            lambda d: d["annotations"][2].update(caption="  "),
            ["annotations[2]", "field 'caption'", "non-empty"],
        ),
        (lambda d: d["annotations"][2].update(caption=7), ["annotations[2]", "field 'caption'"]),
        (lambda d: d["annotations"][0].pop("caption"), ["annotations[0]", "'caption'"]),
        (lambda d: d["annotations"].__setitem__(1, "x"), ["annotations[1]", "expected a JSON object"]),
        (lambda d: d["images"][1].update(file_name="../up.jpg"), ["images[1]", "field 'image'"]),
    ],
)
def test_coco_malformed(tmp_path: Path, mutate: Any, parts: list[str]) -> None:
    data = coco_data({1: 2, 2: 2})
    mutate(data)
    for i in (1, 2):
        make_image(tmp_path / f"COCO_{i}.jpg")
    ann = write_json(tmp_path / "caps_bad.json", data)
    with pytest.raises(DataError) as excinfo:
        read_coco_captions(ann, tmp_path, "train")
    assert_error(excinfo, "caps_bad.json", *parts)


def test_coco_invalid_json_missing_image_and_bad_split(tmp_path: Path) -> None:
    bad = tmp_path / "broken.json"
    bad.write_text('{"images": [')
    with pytest.raises(DataError) as excinfo:
        read_coco_captions(bad, tmp_path, "train")
    assert_error(excinfo, "broken.json", "not valid JSON", "line 1")
    ann = write_json(tmp_path / "c.json", coco_data({1: 1}))
    with pytest.raises(DataError) as excinfo:
        read_coco_captions(ann, tmp_path, "train")
    assert_error(excinfo, "c.json", "images[0]", "'file_name'", "image file not found", "COCO_1.jpg")
    assert read_coco_captions(ann, tmp_path, "train", require_images=False).items[0].image_id == "1"
    with pytest.raises(DataError) as excinfo:
        read_coco_captions(ann, tmp_path, "dev", require_images=False)
    assert_error(excinfo, "c.json", "split", "'dev'")


# --- Karpathy ------------------------------------------------------------------------------------------------------


def karpathy_images() -> list[dict[str, Any]]:
    return [
        {
            "filepath": "val2014",
            "filename": "COCO_val_1.jpg",
            "cocoid": 1,
            "imgid": 0,
            "split": "restval",
            "sentences": [{"raw": c, "tokens": []} for c in caps("a", 5)],
        },
        {
            "filepath": "train2014",
            "filename": "COCO_train_2.jpg",
            "cocoid": 2,
            "imgid": 1,
            "split": "train",
            "sentences": [{"raw": c} for c in caps("b", 6)],
        },
        {
            "filepath": "val2014",
            "filename": "COCO_val_3.jpg",
            "cocoid": 3,
            "imgid": 2,
            "split": "test",
            "sentences": [{"raw": c} for c in caps("c", 7)],
        },
        {
            "filepath": "val2014",
            "filename": "COCO_val_4.jpg",
            "cocoid": 4,
            "imgid": 3,
            "split": "val",
            "sentences": [{"raw": c} for c in caps("d", 5)],
        },
    ]


def karpathy_fixture(root: Path) -> Path:
    for entry in karpathy_images():
        make_image(root / entry["filepath"] / entry["filename"])
    return write_json(root / "dataset_coco.json", {"images": karpathy_images(), "dataset": "coco"})


def test_karpathy_coco_restval_is_train(tmp_path: Path) -> None:
    ds = read_karpathy(karpathy_fixture(tmp_path), tmp_path)
    assert [(it.image_id, it.split, len(it.captions)) for it in ds.items] == [
        ("1", "train", 5),
        ("2", "train", 6),
        ("3", "test", 7),
        ("4", "val", 5),
    ]
    assert ds.items[1].path == tmp_path / "train2014" / "COCO_train_2.jpg"
    assert ds.name == "coco"


def test_karpathy_flickr_ids_are_stems_and_flat_folders_work(tmp_path: Path) -> None:
    images = [
        {"filename": "1000092795.jpg", "imgid": 0, "split": "train", "sentences": [{"raw": "two dogs"}]},
        {"filename": "10002456.jpg", "imgid": 1, "split": "test", "sentences": [{"raw": "a man"}]},
    ]
    for entry in images:
        make_image(tmp_path / "imgs" / entry["filename"])
    ds = read_karpathy(write_json(tmp_path / "dataset_flickr30k.json", {"images": images}), tmp_path / "imgs")
    assert [it.image_id for it in ds.items] == ["1000092795", "10002456"]
    assert ds.name == "flickr30k"
    # a COCO file whose images were flattened into one folder (no val2014/ subfolder)
    make_image(tmp_path / "flat" / "COCO_val_1.jpg")
    one = karpathy_images()[:1]
    ds = read_karpathy(write_json(tmp_path / "dataset_coco.json", {"images": one}), tmp_path / "flat")
    assert ds.items[0].path == tmp_path / "flat" / "COCO_val_1.jpg"


@pytest.mark.parametrize(
    ("mutate", "parts"),
    [
        (lambda d: d.pop("images"), ["'images'"]),
        (lambda d: d["images"][1].pop("sentences"), ["images[1]", "field 'sentences'"]),
        (lambda d: d["images"][1].update(sentences=[]), ["images[1]", "field 'sentences'"]),
        (lambda d: d["images"][2]["sentences"][3].update(raw=""), ["images[2]: sentences[3]", "field 'raw'"]),
        (lambda d: d["images"][2]["sentences"][0].pop("raw"), ["images[2]: sentences[0]", "'raw'"]),
        (lambda d: d["images"][0].update(split="dev"), ["images[0]", "field 'split'", "'dev'", "restval"]),
        (lambda d: d["images"][3].pop("filename"), ["images[3]", "'filename'"]),
        (lambda d: d["images"][3].update(cocoid=2), ["images[3]", "duplicate image id '2'"]),
        (
            lambda d: d["images"][0].update(filename="gone.jpg"),
            ["images[0]", "'filename'", "image file not found"],
        ),
    ],
)
def test_karpathy_malformed(tmp_path: Path, mutate: Any, parts: list[str]) -> None:
    path = karpathy_fixture(tmp_path)
    data = json.loads(path.read_text())
    mutate(data)
    write_json(path, data)
    with pytest.raises(DataError) as excinfo:
        read_karpathy(path, tmp_path)
    assert_error(excinfo, "dataset_coco.json", *parts)


# --- Flickr tokens -------------------------------------------------------------------------------------------------

TOKENS = (
    "111_a.jpg#0\tA dog runs .\n"
    "111_a.jpg#1\tA brown dog .\n"
    "222_b.jpg#0\tTwo kids play .\n"
    "222_b.jpg#1\tKids on grass .\n"
    "333_c.jpg#0\tA red car .\n"
    "333_c.jpg.1#0\tNot a real image .\n"
)


def flickr_fixture(tmp_path: Path, tokens: str = TOKENS) -> Path:
    for name in ("111_a.jpg", "222_b.jpg", "333_c.jpg"):
        make_image(tmp_path / "images" / name)
    (tmp_path / "Flickr8k.token.txt").write_text(tokens)
    (tmp_path / "Flickr_8k.trainImages.txt").write_text("111_a.jpg\n222_b.jpg\n")
    (tmp_path / "Flickr_8k.devImages.txt").write_text("\n")
    (tmp_path / "Flickr_8k.testImages.txt").write_text("333_c.jpg\n")
    return tmp_path / "Flickr8k.token.txt"


def test_flickr_tokens_with_split_files(tmp_path: Path, caplog: Any) -> None:
    token = flickr_fixture(tmp_path)
    splits = {"train": tmp_path / "Flickr_8k.trainImages.txt", "test": tmp_path / "Flickr_8k.testImages.txt"}
    with caplog.at_level(logging.WARNING):
        ds = read_flickr_tokens(token, tmp_path / "images", splits)
    assert [(it.image_id, it.split, it.captions) for it in ds.items] == [
        ("111_a", "train", ("A dog runs .", "A brown dog .")),
        ("222_b", "train", ("Two kids play .", "Kids on grass .")),
        ("333_c", "test", ("A red car .",)),
    ]
    assert "skipped 1 image(s)" in caplog.text  # 333_c.jpg.1 is in no split file


def test_flickr_tokens_without_splits_are_all_train(tmp_path: Path) -> None:
    token = flickr_fixture(tmp_path, TOKENS.replace("333_c.jpg.1#0\tNot a real image .\n", ""))
    ds = read_flickr_tokens(token, tmp_path / "images")
    assert [it.split for it in ds.items] == ["train"] * 3


@pytest.mark.parametrize(
    ("tokens", "parts"),
    [
        ("111_a.jpg#0 A dog runs .\n", [":1", "malformed line", "<TAB>"]),
        ("111_a.jpg#0\tok\n111_a.jpg\tA dog\n", [":2", "field 'image'", "#<caption number>"]),
        ("111_a.jpg#x\tA dog\n", [":1", "field 'image'"]),
        ("111_a.jpg#0\tok\n\n222_b.jpg#0\t   \n", [":3", "field 'caption'", "non-empty"]),
        ("999_z.jpg#0\tA ghost\n", [":1", "field 'image'", "image file not found", "999_z.jpg"]),
        ("", ["no captions"]),
    ],
)
def test_flickr_tokens_malformed(tmp_path: Path, tokens: str, parts: list[str]) -> None:
    token = flickr_fixture(tmp_path, tokens)
    with pytest.raises(DataError) as excinfo:
        read_flickr_tokens(token, tmp_path / "images")
    assert_error(excinfo, "Flickr8k.token.txt", *parts)


def test_flickr_split_file_errors(tmp_path: Path) -> None:
    token = flickr_fixture(tmp_path)
    listing = tmp_path / "Flickr_8k.trainImages.txt"
    listing.write_text("111_a.jpg\n\n444_d.jpg\n")
    with pytest.raises(DataError) as excinfo:
        read_flickr_tokens(token, tmp_path / "images", {"train": listing})
    assert_error(excinfo, "Flickr_8k.trainImages.txt:3", "'444_d.jpg'", "no captions")
    listing.write_text("111_a.jpg\n")
    with pytest.raises(DataError) as excinfo:
        read_flickr_tokens(token, tmp_path / "images", {"train": listing, "test": listing})
    assert_error(excinfo, "Flickr_8k.trainImages.txt:1", "already in split 'train'")
    with pytest.raises(DataError) as excinfo:
        read_flickr_tokens(token, tmp_path / "images", {"dev": listing})
    assert_error(excinfo, "splits", "'dev'")


# --- generic folder + CSV / JSONL ---------------------------------------------------------------------------------


def test_csv_merges_rows_per_image(tmp_path: Path) -> None:
    make_image(tmp_path / "a.png")
    make_image(tmp_path / "sub" / "b.png")
    (tmp_path / "caps.csv").write_text(
        'image,caption,split\na.png,"A red, square thing",test\nsub/b.png,One,\na.png,Second,test\n'
        'a.png,"Multi\nline",\n\n'
    )
    ds = read_image_folder_with_captions(tmp_path, tmp_path / "caps.csv")
    assert [(it.image_id, it.split, it.captions) for it in ds.items] == [
        ("a.png", "test", ("A red, square thing", "Second", "Multi\nline")),
        ("sub/b.png", "train", ("One",)),
    ]
    assert ds.items[1].path == tmp_path / "sub" / "b.png"


def test_jsonl_caption_and_captions(tmp_path: Path) -> None:
    make_image(tmp_path / "a.png")
    make_image(tmp_path / "b.png")
    lines = [
        {"image": "a.png", "caption": "first"},
        {"image": "b.png", "captions": ["x", "y"], "split": "val"},
        {"image": "a.png", "caption": "second", "split": "test"},
    ]
    (tmp_path / "caps.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    ds = read_image_folder_with_captions(tmp_path, tmp_path / "caps.jsonl")
    assert [(it.image_id, it.split, it.captions) for it in ds.items] == [
        ("a.png", "test", ("first", "second")),
        ("b.png", "val", ("x", "y")),
    ]


@pytest.mark.parametrize(
    ("name", "text", "parts"),
    [
        ("c.csv", "image,text\na.png,x\n", [":1", "'caption'"]),
        ("c.csv", "image,caption,splt\na.png,x,train\n", [":1", "'splt'"]),
        ("c.csv", "image,caption\na.png,  \n", [":2", "field 'caption'"]),
        ("c.csv", "image,caption,split\na.png,x,dev\n", [":2", "field 'split'", "'dev'"]),
        ("c.csv", "image,caption,split\na.png,x,test\na.png,y,train\n", [":3", "field 'split'", "c.csv:2"]),
        ("c.csv", "image,caption\nmissing.png,x\n", [":2", "field 'image'", "image file not found"]),
        ("c.csv", "image,caption\n/abs/a.png,x\n", [":2", "field 'image'"]),
        ("c.csv", "image,caption\na.png,x,extra\n", [":2", "more values"]),
        ("c.jsonl", '{"image": "a.png", "caption": "x"}\n{"image": "a.png"\n', [":2", "not valid JSON"]),
        ("c.jsonl", '{"image": "a.png", "caption": "x", "captions": ["y"]}\n', [":1", "'caption'"]),
        ("c.jsonl", '{"image": "a.png", "captions": []}\n', [":1", "field 'captions'"]),
        ("c.jsonl", '{"image": "a.png", "captions": ["ok", ""]}\n', [":1", "field 'captions'"]),
        ("c.jsonl", '{"img": "a.png", "caption": "x"}\n', [":1", "'img'"]),
        ("c.jsonl", '{"image": 3, "caption": "x"}\n', [":1", "field 'image'"]),
        ("c.txt", "a.png x\n", ["c.txt", ".jsonl or .csv"]),
    ],
)
def test_generic_malformed(tmp_path: Path, name: str, text: str, parts: list[str]) -> None:
    make_image(tmp_path / "a.png")
    (tmp_path / name).write_text(text)
    with pytest.raises(DataError) as excinfo:
        read_image_folder_with_captions(tmp_path, tmp_path / name)
    assert_error(excinfo, name, *parts)


# --- auto-detection ------------------------------------------------------------------------------------------------


def test_auto_detects_folder_format(tmp_path: Path) -> None:
    make_image(tmp_path / "images" / "a.png")
    record = {"image": "a.png", "captions": ["x"], "split": "train"}
    (tmp_path / "captions.jsonl").write_text(json.dumps(record) + "\n")
    assert load_dataset(tmp_path).items[0].path == tmp_path / "images" / "a.png"
    assert load_dataset(tmp_path / "captions.jsonl").items[0].image_id == "a.png"


def test_auto_detects_karpathy(tmp_path: Path) -> None:
    karpathy_fixture(tmp_path)
    assert len(load_dataset(tmp_path)) == 4
    assert load_dataset(tmp_path / "dataset_coco.json").split_names() == ["train", "val", "test"]
    write_json(tmp_path / "dataset_flickr8k.json", {"images": []})
    with pytest.raises(DataError) as excinfo:
        load_dataset(tmp_path)
    assert_error(excinfo, "dataset_coco.json", "dataset_flickr8k.json")


def test_auto_detects_flickr_with_split_files(tmp_path: Path) -> None:
    flickr_fixture(tmp_path)
    (tmp_path / "Flickr8k.lemma.token.txt").write_text("junk")
    ds = load_dataset(tmp_path)
    assert [(it.image_id, it.split) for it in ds.items] == [
        ("111_a", "train"),
        ("222_b", "train"),
        ("333_c", "test"),
    ]


def test_auto_detects_coco_annotations_folder(tmp_path: Path) -> None:
    coco_fixture(tmp_path, {1: 5, 2: 6})
    make_image(tmp_path / "val2014" / "COCO_7.jpg")
    write_json(tmp_path / "annotations" / "captions_val2014.json", coco_data({7: 5}))
    ds = load_dataset(tmp_path)
    assert [(it.image_id, it.split) for it in ds.items] == [("1", "train"), ("2", "train"), ("7", "val")]
    assert ds.items[2].path == tmp_path / "val2014" / "COCO_7.jpg"
    assert load_dataset(tmp_path / "annotations" / "captions_val2014.json").items[0].image_id == "7"
    write_json(tmp_path / "annotations" / "captions_extra.json", coco_data({9: 1}))
    with pytest.raises(DataError) as excinfo:
        load_dataset(tmp_path)
    assert_error(excinfo, "captions_extra.json", "split")


def test_auto_detects_generic_csv_and_explicit_format(tmp_path: Path) -> None:
    make_image(tmp_path / "images" / "a.png")
    (tmp_path / "captions.csv").write_text("image,caption\na.png,x\n")
    assert load_dataset(tmp_path).items[0].path == tmp_path / "images" / "a.png"
    (tmp_path / "other.jsonl").write_text('{"image": "a.png", "caption": "y"}\n')
    assert load_dataset(tmp_path / "other.jsonl").items[0].captions == ("y",)
    with pytest.raises(DataError) as excinfo:
        load_dataset(tmp_path, format="karpathy")
    assert_error(excinfo, str(tmp_path), "'karpathy'")
    with pytest.raises(DataError) as excinfo:
        load_dataset(tmp_path, format="tsv")
    assert_error(excinfo, "format", "'tsv'")


def test_auto_detect_nothing_found(tmp_path: Path) -> None:
    make_image(tmp_path / "a.png")
    with pytest.raises(DataError) as excinfo:
        load_dataset(tmp_path)
    assert_error(excinfo, str(tmp_path), "no dataset found", "dataset_*.json")
    with pytest.raises(DataError) as excinfo:
        load_dataset(tmp_path / "nope")
    assert_error(excinfo, "nope", "not found")
    with pytest.raises(DataError) as excinfo:
        load_dataset(tmp_path / "a.png")
    assert_error(excinfo, "a.png", "cannot tell the dataset format")


def test_require_images_false_passes_through_load_dataset(tmp_path: Path) -> None:
    write_json(tmp_path / "dataset_coco.json", {"images": karpathy_images()})
    with pytest.raises(DataError):
        load_dataset(tmp_path)
    ds = load_dataset(tmp_path, require_images=False)
    assert len(ds) == 4 and not ds.items[0].path.exists()
