"""The dataset folder format: `root/captions.jsonl` plus images, strictly validated line by line.

Each line is `{"image": "<file>", "captions": ["...", ...], "split": "train"|"val"|"test"}` with an
optional `"id"` (default: the `image` string). Images live in `root/images/` when that folder exists,
else directly in `root/`. Validation is strict so that a typo fails at load time with the file, line and
field named, not hours later inside training.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from aladin.data.dataset import SPLITS, Dataset, ImageItem
from aladin.errors import DataError
from aladin.fileio import atomic_write

CAPTIONS_FILE = "captions.jsonl"
IMAGES_DIR = "images"
_FIELDS = ("image", "captions", "split", "id")


def image_base(root: str | Path) -> Path:
    """Where image paths are relative to: `root/images` if it exists, else `root`."""
    root = Path(root)
    return root / IMAGES_DIR if (root / IMAGES_DIR).is_dir() else root


def load_dataset_folder(root: str | Path, require_images: bool = True) -> Dataset:
    """Read and validate a dataset folder; every problem is a one-line `DataError` naming file, line, field.

    `require_images=False` accepts missing image files (for training on precomputed region features).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    captions_path = root / CAPTIONS_FILE
    if not captions_path.is_file():
        raise DataError(
            f"{captions_path}: not found (a dataset folder needs {CAPTIONS_FILE} beside its images)"
        )
    try:
        # split("\n"), not splitlines(): a caption may legitimately contain U+2028 or U+0085.
        lines = captions_path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as exc:
        raise DataError(f"{captions_path}: not UTF-8 text ({exc})") from exc
    base = image_base(root)
    items: list[ImageItem] = []
    first_line: dict[str, int] = {}
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        item, id_field = _parse_line(line, f"{captions_path}:{lineno}", base, require_images)
        if item.image_id in first_line:
            raise DataError(
                f"{captions_path}:{lineno}: field '{id_field}': duplicate image id {item.image_id!r} "
                f"(first on line {first_line[item.image_id]})"
            )
        first_line[item.image_id] = lineno
        items.append(item)
    if not items:
        raise DataError(f"{captions_path}: no images (the file is empty)")
    return Dataset(root, items, name=root.name)


def _parse_line(line: str, where: str, base: Path, require_images: bool = True) -> tuple[ImageItem, str]:
    """One validated item, and the field its id came from ("id", or "image" when there is no id)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    unknown = sorted(set(record) - set(_FIELDS))
    if unknown:
        raise DataError(
            f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(_FIELDS)}"
        )
    image = non_empty_string(record, "image", where)
    rel = safe_relative(image, where)
    if "captions" not in record:
        raise DataError(f"{where}: missing field 'captions'")
    captions = record["captions"]
    if not isinstance(captions, list) or not captions:
        raise DataError(
            f"{where}: field 'captions': expected a non-empty list of strings, got {captions!r:.60}"
        )
    for i, caption in enumerate(captions):
        if not isinstance(caption, str) or not caption.strip():
            raise DataError(
                f"{where}: field 'captions': caption {i} must be a non-empty string, got {caption!r:.60}"
            )
    split = non_empty_string(record, "split", where)
    if split not in SPLITS:
        raise DataError(f"{where}: field 'split': expected one of {', '.join(SPLITS)}, got {split!r}")
    id_field = "id" if "id" in record else "image"
    image_id = non_empty_string(record, id_field, where)
    path = base.joinpath(*rel.parts)
    if require_images and not path.is_file():
        raise DataError(f"{where}: field 'image': file not found: {path}")
    return ImageItem(image_id, path, tuple(captions), split), id_field


def non_empty_string(record: dict[str, Any], field: str, where: str) -> str:
    """A required, non-blank string field (shared by every caption-file reader)."""
    if field not in record:
        raise DataError(f"{where}: missing field '{field}'")
    value = record[field]
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: field '{field}': expected a non-empty string, got {value!r:.60}")
    return value


def safe_relative(image: str, where: str, field: str = "image") -> PurePosixPath:
    """Image paths must stay inside the dataset folder: no absolute paths, no `..`."""
    rel = PurePosixPath(image.replace("\\", "/"))
    if rel.is_absolute() or PureWindowsPath(image).is_absolute() or PureWindowsPath(image).drive:
        raise DataError(
            f"{where}: field '{field}': expected a path relative to the dataset folder, got {image!r}"
        )
    if ".." in rel.parts:
        raise DataError(f"{where}: field '{field}': path must stay inside the dataset folder, got {image!r}")
    return rel


def write_dataset_folder(data: Dataset | Iterable[ImageItem], root: str | Path) -> Path:
    """Write `root/captions.jsonl` atomically for items whose images already lie under `root`.

    Paths are stored relative to `root/images` (or `root` when there is no images folder), which is how
    `load_dataset_folder` resolves them, so a written folder always loads back to the same items.
    """
    root = Path(root)
    items = data.items if isinstance(data, Dataset) else list(data)
    base = image_base(root).resolve()
    lines = []
    for item in items:
        try:
            rel = Path(item.path).resolve().relative_to(base).as_posix()
        except ValueError as exc:
            raise DataError(f"{item.path}: image of {item.image_id!r} is not inside {base}") from exc
        record: dict[str, Any] = {"image": rel, "captions": list(item.captions), "split": item.split}
        if item.image_id != rel:
            record["id"] = item.image_id
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    text = "".join(lines)
    target = root / CAPTIONS_FILE
    atomic_write(target, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return target
