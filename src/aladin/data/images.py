"""Image loading: every reader and encoder goes through one function so all formats and modes look alike."""

from __future__ import annotations

import io
import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from aladin.errors import DataError

_WHITE = (255, 255, 255)
_ORIENTATION = 0x0112
_QUARTER_TURNS = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height
#: Formats Pillow can decode at a reduced DCT scale (1/2, 1/4, 1/8) through `Image.draft`.
_DRAFT_FORMATS = frozenset({"JPEG", "MPO"})


class ImageTooLarge(DataError):
    """An image over the caller's pixel limit (told from its header, before the pixels are decoded)."""


def load_image(path: str | Path, min_size: tuple[int, int] | None = None) -> Image.Image:
    """Open `path` as an upright 8-bit RGB image, or raise a one-line `DataError` naming the path.

    Transparency is composited over white, 16-bit and float greyscale are rescaled (not clipped), EXIF
    orientation is applied and the pixels are decoded here so that truncated files fail now. `min_size` is the
    upright (width, height) the caller will resize the picture to: a JPEG then decodes at the smallest DCT
    scale that still covers it (a 12-megapixel photo for a 448-px encoder at 1/4 scale, several times faster);
    other formats, and JPEGs without `min_size`, decode in full.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: cannot read image (file not found)")
    if path.is_dir():
        raise DataError(f"{path}: cannot read image (is a directory, expected an image file)")
    return _decode(path, str(path), min_size=min_size)


def load_images_ahead(
    batches: Iterable[Sequence[str | Path]],
    min_size: tuple[int, int] | None = None,
    ahead: int = 2,
    workers: int | None = None,
    keep_errors: bool = False,
) -> Iterator[list[Any]]:
    """`load_image` of each batch of paths, batch by batch in order, decoded in worker threads up to `ahead`
    batches before the one the caller holds, so decoding overlaps what the caller does with it (Pillow releases
    the GIL while it decodes). At most `ahead` + 1 batches of pictures exist at once; a file that cannot be read
    raises its `DataError` when its batch is reached, after every batch before it was delivered. `ahead=0`
    decodes each batch when it is asked for, in the caller's thread. `keep_errors`: a file that cannot be read
    gives its `DataError` in its place instead (so a caller can leave it out and go on)."""
    load = _load_or_error if keep_errors else load_image
    if ahead < 1:
        for paths in batches:
            yield [load(path, min_size) for path in paths]
        return
    pool = ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1), thread_name_prefix="aladin-decode")
    pending: deque[list[Future[Any]]] = deque()
    try:
        for paths in batches:
            pending.append([pool.submit(load, path, min_size) for path in paths])
            if len(pending) > ahead:
                yield [future.result() for future in pending.popleft()]
        while pending:
            yield [future.result() for future in pending.popleft()]
    finally:  # also when the caller stops early: decodes not started yet are dropped
        pool.shutdown(wait=True, cancel_futures=True)


def _load_or_error(path: str | Path, min_size: tuple[int, int] | None) -> Image.Image | DataError:
    try:
        return load_image(path, min_size)
    except DataError as exc:
        return exc


def decode_image_bytes(
    data: bytes, name: str, max_pixels: int | None = None, min_size: tuple[int, int] | None = None
) -> Image.Image:
    """Image bytes (an upload) → the same RGB image `load_image(path, min_size)` gives for that file;
    `ImageTooLarge` over `max_pixels`, checked from the header before decoding."""
    return _decode(io.BytesIO(data), name, max_pixels, min_size)


def _decode(
    source: Path | IO[bytes],
    name: str,
    max_pixels: int | None = None,
    min_size: tuple[int, int] | None = None,
) -> Image.Image:
    try:
        with Image.open(source) as img:
            width, height = img.size
            if max_pixels is not None and width * height > max_pixels:
                raise ImageTooLarge(f"{name} is {width}×{height} pixels; the limit is {max_pixels:,}")
            if min_size is not None and img.format in _DRAFT_FORMATS:
                # draft sizes the stored pixels, which a quarter-turn orientation shows transposed
                turned = img.getexif().get(_ORIENTATION, 1) in _QUARTER_TURNS
                img.draft(img.mode, min_size[::-1] if turned else min_size)
            img.load()
            return _to_rgb(ImageOps.exif_transpose(img))
    except UnidentifiedImageError as exc:
        raise DataError(f"{name}: cannot read image (cannot identify image file)") from exc
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DataError(f"{name}: cannot read image ({reason})") from exc


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode.startswith("I") or img.mode == "F":
        img = _wide_grey_to_l(img)
    if "transparency" in img.info:  # palette or colour-key transparency
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _wide_grey_to_l(img: Image.Image) -> Image.Image:
    """16/32-bit or float greyscale → 8-bit: 16-bit ranges are divided down, [0, 1] floats scaled up."""
    arr = np.asarray(img, dtype=np.float64)
    peak = float(arr.max()) if arr.size else 0.0
    if img.mode.startswith("I;16") or peak > 255:
        arr = arr / 257.0
    elif img.mode == "F" and peak <= 1.0:
        arr = arr * 255.0
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))
