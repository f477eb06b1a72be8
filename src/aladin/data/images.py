"""Image loading: every reader and encoder goes through one function so all formats and modes look alike."""

from __future__ import annotations

import io
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from aladin.errors import DataError

_WHITE = (255, 255, 255)


class ImageTooLarge(DataError):
    """An image over the caller's pixel limit (told from its header, before the pixels are decoded)."""


def load_image(path: str | Path) -> Image.Image:
    """Open `path` as an upright 8-bit RGB image, or raise a one-line `DataError` naming the path.

    Transparency is composited over white, 16-bit and float greyscale are rescaled (not clipped), EXIF
    orientation is applied and the pixels are fully decoded here so that truncated files fail now.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: cannot read image (file not found)")
    if path.is_dir():
        raise DataError(f"{path}: cannot read image (is a directory, expected an image file)")
    return _decode(path, str(path))


def decode_image_bytes(data: bytes, name: str, max_pixels: int | None = None) -> Image.Image:
    """Image bytes (an upload) → the same RGB image `load_image` gives for that file; `ImageTooLarge` over
    `max_pixels`, checked from the header before decoding."""
    return _decode(io.BytesIO(data), name, max_pixels)


def _decode(source: Path | IO[bytes], name: str, max_pixels: int | None = None) -> Image.Image:
    try:
        with Image.open(source) as img:
            width, height = img.size
            if max_pixels is not None and width * height > max_pixels:
                raise ImageTooLarge(f"{name} is {width}×{height} pixels; the limit is {max_pixels:,}")
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
