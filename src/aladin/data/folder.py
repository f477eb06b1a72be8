"""The dataset folder format: `root/captions.jsonl` plus images, strictly validated line by line.

Each line is `{"image": "<file>", "captions": ["...", ...], "split": "train"|"val"|"test"}` with an
optional `"id"` (default: the `image` string). Images live in `root/images/` when that folder exists,
else directly in `root/`. Validation is strict so that a typo fails at load time with the file, line and
field named, not hours later inside training.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
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


# ---- folders of photos: what can be indexed, and served -------------------------------------------------------

#: Extensions looked at when a folder is searched for images (any case).
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".heic", ".heif", ".avif", ".jxl"}
)
#: The largest image indexed or served (width × height): the service's default limit too.
MAX_IMAGE_PIXELS = 40_000_000


@dataclass(frozen=True)
class Skipped:
    """A file left out of an index, and why (shown in the build summary, kept in the manifest)."""

    path: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def check_image_file(root: str | Path, path: str | Path, max_pixels: int = MAX_IMAGE_PIXELS) -> str | None:
    """Why `path` cannot be indexed or served from `root` (None when it can): one rule for the index builder
    and the service. Symlinks are followed only where they stay inside `root`; the size is read from the header.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not os.path.lexists(path):
        return "file not found"
    target = path.resolve()
    if not target.exists():
        return "dangling symlink"
    if not target.is_relative_to(Path(root).resolve()):
        return f"a symlink to {target}, outside {root}"
    if not target.is_file():
        return "not a regular file"
    if target.stat().st_size == 0:
        return "empty file"
    try:
        with Image.open(target) as img:
            width, height = img.size
    except UnidentifiedImageError:
        suffix = path.suffix.lower()
        if suffix in IMAGE_EXTENSIONS and suffix not in Image.registered_extensions():
            return f"no {suffix} decoder installed (HEIC/HEIF: pip install pillow-heif)"
        return "not an image" + ("" if suffix else " (no extension)")
    except (OSError, SyntaxError, ValueError) as exc:
        return f"cannot read image ({' '.join(str(exc).split()) or type(exc).__name__})"
    if width * height > max_pixels:
        return f"{width}×{height} pixels, over the limit of {max_pixels:,}"
    return None


def scan_image_folder(root: str | Path) -> tuple[list[Path], list[Skipped]]:
    """Image files under `root` (sorted) and the candidates left out (extensions of images, or none); hidden
    files and folders are not searched.

    Symlinked folders are not followed, and reported: one inside `root` is searched anyway under its real
    path (following it would index its photos twice, or loop), one outside could not be shown by the server.
    """
    root = Path(os.path.abspath(root))
    real_root = root.resolve()
    found: list[Path] = []
    skipped: list[Skipped] = []
    folders = [root]
    while folders:
        folder = folders.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            skipped.append(Skipped(str(folder), f"cannot list the folder ({exc.strerror})"))
            continue
        for entry in entries:
            path = Path(entry.path)
            if entry.name.startswith("."):
                continue  # hidden: system files (.DS_Store, ._IMG.jpg), caches, an index's own files
            if entry.is_dir(follow_symlinks=False):
                folders.append(path)
            elif entry.is_symlink() and entry.is_dir():
                real = path.resolve()
                where = "searched there" if real.is_relative_to(real_root) else f"outside {root}"
                skipped.append(
                    Skipped(str(path), f"a symlinked folder, not followed (it leads to {real}, {where})")
                )
            elif path.suffix.lower() in IMAGE_EXTENSIONS or not path.suffix:
                reason = check_image_file(root, path)
                if reason is None:
                    found.append(path)
                else:
                    skipped.append(Skipped(str(path), reason))
    return sorted(found), sorted(skipped, key=lambda s: Path(s.path))
