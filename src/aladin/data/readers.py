"""Readers for the public caption formats (COCO, Karpathy splits, Flickr tokens, CSV/JSONL), all giving a `Dataset`.

Every reader validates strictly and raises a one-line `DataError` naming the file, the position (JSON path or
line number), the field and what was expected, so that a bad download fails at load time and not mid-training.
Captions are stripped of surrounding whitespace; an empty caption is an error. Image ids are strings.

Images whose files are absent are an error unless `require_images=False`, which is for training on precomputed
region features (`aladin.encoders.precomputed`) without the pictures themselves.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from dataclasses import field as _dataclass_field
from pathlib import Path, PurePosixPath
from typing import Any

from aladin.data.dataset import SPLITS, Dataset, ImageItem
from aladin.data.folder import CAPTIONS_FILE, image_base, load_dataset_folder, non_empty_string, safe_relative
from aladin.errors import DataError

logger = logging.getLogger(__name__)

#: Values of `load_dataset(format=...)`; "captions" is a generic image folder + JSONL/CSV captions file.
FORMATS = ("auto", "folder", "karpathy", "flickr", "coco", "captions")
#: Karpathy's `restval` images (the COCO val2014 images outside his val/test) are training images.
_KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}
#: Flickr8k split list names (`Flickr_8k.trainImages.txt`, ...) → split.
_FLICKR_SPLIT_FILES = {"train": "*trainImages.txt", "val": "*devImages.txt", "test": "*testImages.txt"}
_GENERIC_FIELDS = ("image", "caption", "captions", "split")


# ---------------------------------------------------------------------------------------------------------------
# COCO captions: {"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]}


def read_coco_captions(
    annotations_json: str | Path,
    images_dir: str | Path,
    split: str = "train",
    *,
    require_images: bool = True,
) -> Dataset:
    """All captioned images of one COCO captions file, in `images` order, every one in `split`.

    COCO gives 5 captions to most images and 6 or 7 to some; all are kept. Images without any caption are
    skipped and their number logged as a warning (COCO's own files have none, but subsets often do).
    """
    path = Path(annotations_json)
    images_dir = Path(images_dir)
    _check_split(split, f"{path}: split")
    data = _load_json_object(path)
    files: dict[str, tuple[int, str]] = {}  # image id → (index in `images`, file_name)
    for i, entry in enumerate(_list_field(data, "images", path)):
        where = f"{path}: images[{i}]"
        entry = _object(entry, where)
        image_id = _image_id(entry, "id", where)
        if image_id in files:
            raise DataError(
                f"{where}: field 'id': duplicate image id {image_id!r} (first at images[{files[image_id][0]}])"
            )
        files[image_id] = (i, non_empty_string(entry, "file_name", where))
    captions: dict[str, list[str]] = {image_id: [] for image_id in files}
    for i, entry in enumerate(_list_field(data, "annotations", path)):
        where = f"{path}: annotations[{i}]"
        entry = _object(entry, where)
        image_id = _image_id(entry, "image_id", where)
        if image_id not in captions:
            raise DataError(f"{where}: field 'image_id': unknown image id {image_id!r} (not in 'images')")
        captions[image_id].append(_caption(entry, "caption", where))
    items = []
    for image_id, (i, file_name) in files.items():
        if not captions[image_id]:
            continue
        where = f"{path}: images[{i}]"
        image_path = images_dir.joinpath(*safe_relative(file_name, where).parts)
        _check_image(image_path, where, "file_name", require_images)
        items.append(ImageItem(image_id, image_path, tuple(captions[image_id]), split))
    skipped = len(files) - len(items)
    if skipped:
        logger.warning("%s: skipped %d image(s) without captions", path, skipped)
    if not items:
        raise DataError(f"{path}: no captioned images (field 'annotations' names none of 'images')")
    return Dataset(images_dir, items, name=path.stem)


# ---------------------------------------------------------------------------------------------------------------
# Karpathy splits: dataset_{coco,flickr30k,flickr8k}.json


def read_karpathy(
    dataset_json: str | Path, images_root: str | Path, *, require_images: bool = True
) -> Dataset:
    """A Karpathy split file; `restval` counts as train.

    The image id is `cocoid` when present (COCO), else the file name's stem (Flickr ids are their file
    names), which is also how precomputed region features are usually named. Images are looked for at
    `images_root/filepath/filename`, then at `images_root/filename` (for a flattened COCO folder).
    """
    path = Path(dataset_json)
    images_root = Path(images_root)
    data = _load_json_object(path)
    items = []
    first: dict[str, int] = {}
    for i, entry in enumerate(_list_field(data, "images", path)):
        where = f"{path}: images[{i}]"
        entry = _object(entry, where)
        filename = non_empty_string(entry, "filename", where)
        raw_split = non_empty_string(entry, "split", where)
        if raw_split not in _KARPATHY_SPLITS:
            raise DataError(
                f"{where}: field 'split': expected one of {', '.join(_KARPATHY_SPLITS)}, got {raw_split!r}"
            )
        sentences = entry.get("sentences")
        if not isinstance(sentences, list) or not sentences:
            raise DataError(
                f"{where}: field 'sentences': expected a non-empty list of {{'raw': caption}} objects, "
                f"got {sentences!r:.60}"
            )
        captions = tuple(
            _caption(_object(s, f"{where}: sentences[{j}]"), "raw", f"{where}: sentences[{j}]")
            for j, s in enumerate(sentences)
        )
        image_id = _image_id(entry, "cocoid", where) if "cocoid" in entry else PurePosixPath(filename).stem
        if image_id in first:
            raise DataError(f"{where}: duplicate image id {image_id!r} (first at images[{first[image_id]}])")
        first[image_id] = i
        rel = safe_relative(filename, where)
        candidates = [images_root.joinpath(*rel.parts)]
        if "filepath" in entry:
            subdir = safe_relative(non_empty_string(entry, "filepath", where), where)
            candidates.insert(0, images_root.joinpath(*subdir.parts, *rel.parts))
        image_path = next((c for c in candidates if c.is_file()), candidates[0])
        _check_image(image_path, where, "filename", require_images)
        items.append(ImageItem(image_id, image_path, captions, _KARPATHY_SPLITS[raw_split]))
    if not items:
        raise DataError(f"{path}: field 'images': expected at least one image, got an empty list")
    return Dataset(images_root, items, name=path.stem.removeprefix("dataset_"))


# ---------------------------------------------------------------------------------------------------------------
# Flickr tokens: "<image>#<n>\t<caption>" lines


def read_flickr_tokens(
    token_file: str | Path,
    images_dir: str | Path,
    splits: Mapping[str, str | Path] | None = None,
    *,
    require_images: bool = True,
) -> Dataset:
    """A Flickr8k/30k `*.token` file; `splits` maps split name → image list file (`Flickr_8k.trainImages.txt`).

    With `splits`, images listed in none of them are skipped (logged): Flickr8k's token file names a few images
    that do not exist. Without `splits` every image is "train", since the token file has no split of its own
    (`Dataset.with_validation_split` then carves val; use the Karpathy file for the standard test split).
    Image ids are the file names' stems.
    """
    token_path = Path(token_file)
    images_dir = Path(images_dir)
    captions: dict[str, list[str]] = {}
    first_line: dict[str, int] = {}
    for lineno, line in _lines(token_path):
        where = f"{token_path}:{lineno}"
        key, tab, caption = line.partition("\t")
        if not tab:
            raise DataError(
                f"{where}: malformed line: expected '<image>#<n><TAB><caption>', got {line!r:.60}"
            )
        name, hash_mark, number = key.strip().rpartition("#")
        if not hash_mark or not name or not number.isdigit():
            raise DataError(
                f"{where}: field 'image': expected '<image file>#<caption number>', got {key!r:.60}"
            )
        if not caption.strip():
            raise DataError(f"{where}: field 'caption': expected a non-empty caption")
        captions.setdefault(name, []).append(caption.strip())
        first_line.setdefault(name, lineno)
    if not captions:
        raise DataError(f"{token_path}: no captions (the file is empty)")
    assigned = _flickr_splits(splits, captions, token_path) if splits is not None else None
    items = []
    for name, caps in captions.items():
        split = "train" if assigned is None else assigned.get(name)
        if split is None:
            continue
        where = f"{token_path}:{first_line[name]}"
        image_path = images_dir.joinpath(*safe_relative(name, where).parts)
        _check_image(image_path, where, "image", require_images)
        items.append(ImageItem(PurePosixPath(name).stem, image_path, tuple(caps), split))
    if len(items) < len(captions):
        logger.warning(
            "%s: skipped %d image(s) listed in no split file", token_path, len(captions) - len(items)
        )
    if not items:
        raise DataError(f"{token_path}: no image of the token file is listed in a split file")
    return Dataset(images_dir, items, name=token_path.name.split(".")[0])


def _flickr_splits(
    splits: Mapping[str, str | Path], captions: Mapping[str, list[str]], token_path: Path
) -> dict[str, str]:
    """Image file name → split, from the split list files."""
    assigned: dict[str, str] = {}
    for split, list_file in splits.items():
        _check_split(split, "splits")
        list_path = Path(list_file)
        for lineno, line in _lines(list_path):
            name = line.strip()
            if name not in captions:
                raise DataError(f"{list_path}:{lineno}: image {name!r} has no captions in {token_path}")
            if name in assigned:
                raise DataError(
                    f"{list_path}:{lineno}: image {name!r} is already in split {assigned[name]!r}"
                )
            assigned[name] = split
    return assigned


# ---------------------------------------------------------------------------------------------------------------
# Generic: an image folder plus a JSONL or CSV captions file


def read_image_folder_with_captions(
    folder: str | Path, captions_file: str | Path, *, require_images: bool = True
) -> Dataset:
    """Images under `folder` and a `.jsonl` or `.csv` captions file; several rows may name the same image.

    CSV: a header with `image,caption` and optionally `split`. JSONL: objects with `image`, `caption` (a string)
    or `captions` (a list), and optionally `split`. The image path is relative to `folder` and is also the
    image id. An image's split defaults to "train"; rows of one image must not give different splits.
    """
    folder = Path(folder)
    path = Path(captions_file)
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".csv"):
        raise DataError(f"{path}: expected a .jsonl or .csv captions file, got {suffix or 'no extension'!r}")
    rows = _csv_rows(path) if suffix == ".csv" else _jsonl_rows(path)
    merged: dict[str, _Rows] = {}  # image path (posix) → its rows so far
    for where, record in rows:
        image = record.get("image")
        if not isinstance(image, str) or not image.strip():
            raise DataError(f"{where}: field 'image': expected a non-empty string, got {image!r:.60}")
        key = safe_relative(image.strip(), where).as_posix()
        if "captions" in record:
            value = record["captions"]
            if not isinstance(value, list) or not value:
                raise DataError(
                    f"{where}: field 'captions': expected a non-empty list of strings, got {value!r:.60}"
                )
            new = [_caption_value(c, "captions", where) for c in value]
        else:
            new = [_caption(record, "caption", where)]
        entry = merged.setdefault(key, _Rows(where))
        entry.captions.extend(new)
        split = (record.get("split") or "").strip()
        if split:
            _check_split(split, f"{where}: field 'split'")
            if entry.split and split != entry.split:
                raise DataError(
                    f"{where}: field 'split': image {key!r} is already in split {entry.split!r} ({entry.split_where})"
                )
            entry.split, entry.split_where = split, where
    if not merged:
        raise DataError(f"{path}: no captions (the file is empty)")
    items = []
    for key, entry in merged.items():
        image_path = folder.joinpath(*PurePosixPath(key).parts)
        _check_image(image_path, entry.where, "image", require_images)
        items.append(ImageItem(key, image_path, tuple(entry.captions), entry.split or "train"))
    return Dataset(folder, items, name=folder.name)


@dataclass
class _Rows:
    """The rows of one image in a generic captions file, merged."""

    where: str  # the first row, for errors about the image itself
    captions: list[str] = _dataclass_field(default_factory=list)
    split: str = ""
    split_where: str = ""


def _csv_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    text = _read_text(path)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [name.strip() for name in reader.fieldnames or []]
    reader.fieldnames = header
    for required in ("image", "caption"):
        if required not in header:
            raise DataError(f"{path}:1: header: missing column '{required}' (expected image,caption[,split])")
    unknown = [name for name in header if name not in ("image", "caption", "split")]
    if unknown:
        raise DataError(
            f"{path}:1: header: unknown column(s) {', '.join(map(repr, unknown))}; allowed: image, caption, split"
        )
    for row in reader:
        where = f"{path}:{reader.line_num}"
        if None in row:
            raise DataError(f"{where}: more values than the header has columns")
        if all(not (v or "").strip() for v in row.values()):
            continue
        yield where, dict(row)


def _jsonl_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    for lineno, line in _lines(path):
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
        record = _object(record, where)
        unknown = sorted(set(record) - set(_GENERIC_FIELDS))
        if unknown:
            raise DataError(
                f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(_GENERIC_FIELDS)}"
            )
        if ("caption" in record) == ("captions" in record):
            raise DataError(f"{where}: field 'caption': expected exactly one of 'caption' or 'captions'")
        split = record.get("split")
        if split is not None and not isinstance(split, str):
            raise DataError(f"{where}: field 'split': expected a string, got {split!r:.60}")
        yield where, record


# ---------------------------------------------------------------------------------------------------------------
# Auto-detection


def load_dataset(path: str | Path, format: str = "auto", *, require_images: bool = True) -> Dataset:
    """Read a dataset given as a folder or as its annotation file, detecting the format from file names.

    In a folder, the first match wins: `captions.jsonl` (the aladin folder format), `dataset_*.json` (Karpathy),
    `*.token` / `*.token.txt` (Flickr; `*trainImages.txt` / `*devImages.txt` / `*testImages.txt` beside it
    give the splits, dev = val), `captions_*.json` in the folder or its `annotations/` (COCO; the split is read
    from the name, `captions_val2014.json` → val, images from `<folder>/val2014/`), `captions.csv` (generic).
    A file is recognised by the same names, and any other `.csv` / `.jsonl` is the generic format.
    Images are looked for in `<folder>/images/` when it exists, else in the folder itself. The folder format
    always requires its images; `require_images` applies to the others.
    """
    path = Path(path)
    if format not in FORMATS:
        raise DataError(f"format: expected one of {', '.join(FORMATS)}, got {format!r}")
    if not path.exists():
        raise DataError(f"{path}: dataset not found")
    if path.is_dir():
        format, files = _find_in_folder(path, format)
        root = path
    else:
        files = [path]
        format = _format_of_file(path) if format == "auto" else format
        root = path.parent.parent if path.parent.name == "annotations" else path.parent
    if format == "folder":
        return load_dataset_folder(files[0].parent, require_images=require_images)
    if format == "karpathy":
        return read_karpathy(files[0], image_base(root), require_images=require_images)
    if format == "flickr":
        splits = _flickr_split_files(files[0].parent)
        return read_flickr_tokens(files[0], image_base(root), splits or None, require_images=require_images)
    if format == "coco":
        return _read_coco_files(files, root, require_images)
    return read_image_folder_with_captions(image_base(root), files[0], require_images=require_images)


def _find_in_folder(root: Path, format: str) -> tuple[str, list[Path]]:
    found = {
        "folder": [root / CAPTIONS_FILE] if (root / CAPTIONS_FILE).is_file() else [],
        "karpathy": sorted(root.glob("dataset_*.json")),
        "flickr": _token_files(root),
        "coco": sorted(root.glob("captions_*.json")) + sorted(root.glob("annotations/captions_*.json")),
        "captions": [root / "captions.csv"] if (root / "captions.csv").is_file() else [],
    }
    if format == "auto":
        format = next((name for name, files in found.items() if files), "")
        if not format:
            raise DataError(
                f"{root}: no dataset found (looked for {CAPTIONS_FILE}, dataset_*.json, *.token, "
                "captions_*.json, annotations/captions_*.json, captions.csv)"
            )
    files = found[format]
    if not files:
        raise DataError(f"{root}: no annotation file for format {format!r}")
    if len(files) > 1 and format != "coco":
        names = ", ".join(f.name for f in files)
        raise DataError(f"{root}: several {format} annotation files ({names}); pass the one to use")
    return format, files


def _token_files(root: Path) -> list[Path]:
    """Flickr token files, lemmatised ones (Flickr8k.lemma.token.txt) only when there is nothing else."""
    tokens = sorted({*root.glob("*.token"), *root.glob("*.token.txt")})
    plain = [p for p in tokens if "lemma" not in p.name.lower()]
    return plain or tokens


def _format_of_file(path: Path) -> str:
    name = path.name
    if name == CAPTIONS_FILE:
        return "folder"
    if name.startswith("dataset_") and name.endswith(".json"):
        return "karpathy"
    if name.endswith((".token", ".token.txt")):
        return "flickr"
    if name.startswith("captions_") and name.endswith(".json"):
        return "coco"
    if path.suffix.lower() in (".csv", ".jsonl"):
        return "captions"
    raise DataError(
        f"{path}: cannot tell the dataset format from the file name "
        "(expected dataset_*.json, *.token, captions_*.json, .csv or .jsonl)"
    )


def _flickr_split_files(folder: Path) -> dict[str, Path]:
    splits = {}
    for split, pattern in _FLICKR_SPLIT_FILES.items():
        matches = sorted(folder.glob(pattern))
        if len(matches) > 1:
            raise DataError(f"{folder}: several {split} split files ({', '.join(m.name for m in matches)})")
        if matches:
            splits[split] = matches[0]
    return splits


def _read_coco_files(files: list[Path], root: Path, require_images: bool) -> Dataset:
    """Merge COCO caption files, each into the split its name says (`captions_train2014.json` → train)."""
    items: list[ImageItem] = []
    seen: dict[str, Path] = {}
    for path in files:
        subset = path.stem.removeprefix("captions_")
        split = next((s for s in SPLITS if subset.startswith(s)), None)
        if split is None:
            raise DataError(
                f"{path}: cannot tell the split from the file name (expected captions_train*, captions_val* "
                "or captions_test*); use read_coco_captions(..., split=)"
            )
        images_dir = next(
            (d for d in (root / subset, root / "images" / subset) if d.is_dir()), image_base(root)
        )
        for item in read_coco_captions(path, images_dir, split, require_images=require_images).items:
            if item.image_id in seen:
                raise DataError(f"{path}: image id {item.image_id!r} is also in {seen[item.image_id]}")
            seen[item.image_id] = path
            items.append(item)
    return Dataset(root, items, name=root.name)


# ---------------------------------------------------------------------------------------------------------------
# Shared validation


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"{path}: not found")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc})") from exc


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Non-blank lines with their 1-based numbers."""
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if line.strip():
            yield lineno, line


def _load_json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from exc
    return _object(data, str(path))


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value


def _list_field(data: dict[str, Any], field: str, path: Path) -> list[Any]:
    if field not in data:
        raise DataError(f"{path}: missing field '{field}'")
    value = data[field]
    if not isinstance(value, list):
        raise DataError(f"{path}: field '{field}': expected a list, got {type(value).__name__}")
    return value


def _image_id(record: dict[str, Any], field: str, where: str) -> str:
    """Ids are integers in COCO and may be strings elsewhere; both become strings."""
    if field not in record:
        raise DataError(f"{where}: missing field '{field}'")
    value = record[field]
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, str))
        or (isinstance(value, str) and not value.strip())
    ):
        raise DataError(
            f"{where}: field '{field}': expected an integer or a non-empty string, got {value!r:.60}"
        )
    return str(value)


def _caption(record: dict[str, Any], field: str, where: str) -> str:
    if field not in record:
        raise DataError(f"{where}: missing field '{field}'")
    return _caption_value(record[field], field, where)


def _caption_value(value: Any, field: str, where: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{field}': expected a caption string, got {value!r:.60}")
    if not value.strip():
        raise DataError(f"{where}: field '{field}': expected a non-empty caption, got {value!r}")
    return value.strip()


def _check_split(split: str, where: str) -> None:
    if split not in SPLITS:
        raise DataError(f"{where}: expected one of {', '.join(SPLITS)}, got {split!r}")


def _check_image(path: Path, where: str, field: str, required: bool) -> None:
    if required and not path.is_file():
        raise DataError(f"{where}: field '{field}': image file not found: {path}")
