"""load_image: every common format and mode comes out as upright 8-bit RGB; bad files give one-line DataErrors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aladin.data.images import load_image
from aladin.errors import DataError


def close(pixel: tuple[int, ...], expected: tuple[int, int, int], tol: int = 0) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(pixel, expected, strict=True))


def test_rgba_composited_over_white(tmp_path: Path) -> None:
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    img.putpixel((1, 1), (255, 0, 0, 255))
    img.putpixel((2, 2), (0, 0, 0, 128))
    img.save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.mode == "RGB" and out.size == (4, 4)
    assert out.getpixel((0, 0)) == (255, 255, 255)  # transparent → white, not the hidden red
    assert out.getpixel((1, 1)) == (255, 0, 0)
    assert close(out.getpixel((2, 2)), (127, 127, 127), tol=1)


def test_la_composited_over_white(tmp_path: Path) -> None:
    img = Image.new("LA", (3, 3), (0, 0))
    img.putpixel((1, 1), (50, 255))
    img.save(tmp_path / "la.png")
    out = load_image(tmp_path / "la.png")
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 1)) == (50, 50, 50)


def test_palette_with_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (3, 3), 0)
    img.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    img.putpixel((1, 1), 1)
    img.save(tmp_path / "p.png", transparency=0)
    assert Image.open(tmp_path / "p.png").mode == "P"
    out = load_image(tmp_path / "p.png")
    assert out.getpixel((0, 0)) == (255, 255, 255)  # index 0 is transparent black → white
    assert out.getpixel((1, 1)) == (0, 200, 0)


def test_cmyk_jpeg(tmp_path: Path) -> None:
    Image.new("CMYK", (16, 16), (255, 0, 0, 0)).save(tmp_path / "c.jpg")
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    out = load_image(tmp_path / "c.jpg")
    assert out.mode == "RGB"
    assert close(out.getpixel((8, 8)), (0, 255, 255), tol=8)  # pure cyan


def test_greyscale(tmp_path: Path) -> None:
    Image.new("L", (5, 5), 100).save(tmp_path / "g.png")
    assert load_image(tmp_path / "g.png").getpixel((2, 2)) == (100, 100, 100)


def test_16bit_png_is_rescaled_not_clipped(tmp_path: Path) -> None:
    arr = np.full((6, 6), 100 * 257, dtype=np.uint16)
    arr[0, 0] = 65535
    Image.fromarray(arr).save(tmp_path / "w.png")
    assert Image.open(tmp_path / "w.png").mode.startswith("I")
    out = load_image(tmp_path / "w.png")
    assert out.getpixel((3, 3)) == (100, 100, 100)  # a plain convert("RGB") would clip this to white
    assert out.getpixel((0, 0)) == (255, 255, 255)


def test_32bit_int_and_float_greyscale(tmp_path: Path) -> None:
    Image.fromarray(np.full((4, 4), 200 * 257, dtype=np.int32)).save(tmp_path / "i.tif")
    Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32)).save(tmp_path / "f.tif")
    assert Image.open(tmp_path / "i.tif").mode == "I"
    assert Image.open(tmp_path / "f.tif").mode == "F"
    assert load_image(tmp_path / "i.tif").getpixel((1, 1)) == (200, 200, 200)
    assert close(load_image(tmp_path / "f.tif").getpixel((1, 1)), (128, 128, 128), tol=1)


@pytest.mark.parametrize("suffix", [".webp", ".bmp", ".jpg", ".png"])
def test_common_formats(tmp_path: Path, suffix: str) -> None:
    img = Image.new("RGB", (10, 8), (30, 60, 200))
    options = {"lossless": True} if suffix == ".webp" else {}
    img.save(tmp_path / f"x{suffix}", **options)
    out = load_image(tmp_path / f"x{suffix}")
    assert out.mode == "RGB" and out.size == (10, 8)
    assert close(out.getpixel((5, 4)), (30, 60, 200), tol=6)


def test_gif_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (6, 6), (255, 0, 0)), Image.new("RGB", (6, 6), (0, 0, 255))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:], duration=50)
    out = load_image(tmp_path / "a.gif")
    assert out.mode == "RGB"
    assert close(out.getpixel((3, 3)), (255, 0, 0), tol=4)


def test_exif_orientation_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (60, 30), "white")
    img.paste((255, 0, 0), (0, 0, 15, 15))  # red block at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    img.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    out = load_image(tmp_path / "rot.jpg")
    assert out.size == (30, 60)
    assert close(out.getpixel((22, 7)), (255, 0, 0), tol=20)  # stored top-left → displayed top-right
    assert close(out.getpixel((7, 7)), (255, 255, 255), tol=20)


def assert_one_line_error(path: Path, *fragments: str) -> None:
    with pytest.raises(DataError) as info:
        load_image(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message


def test_missing_file(tmp_path: Path) -> None:
    assert_one_line_error(tmp_path / "nope.jpg", "not found")


def test_directory(tmp_path: Path) -> None:
    (tmp_path / "dir.jpg").mkdir()
    assert_one_line_error(tmp_path / "dir.jpg", "directory")


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "junk.jpg"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    assert_one_line_error(path, "cannot identify image file")


def test_truncated_jpeg_fails_at_load(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "full.jpg", quality=90)
    data = (tmp_path / "full.jpg").read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    assert_one_line_error(path, "cannot read image", "truncated")


def test_uploaded_bytes_decode_like_the_same_file(tmp_path) -> None:
    import numpy as np
    from PIL import Image

    from aladin.data.images import ImageTooLarge, decode_image_bytes, load_image

    rgba = np.zeros((6, 8, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 100  # half-transparent red: composited over white, not just dropped
    wide = (np.arange(48, dtype=np.uint16).reshape(6, 8) * 1000).astype(np.uint16)
    for name, img in (("rgba.png", Image.fromarray(rgba, "RGBA")), ("grey16.png", Image.fromarray(wide))):
        img.save(tmp_path / name)
        from_file = np.asarray(load_image(tmp_path / name))
        from_bytes = np.asarray(decode_image_bytes((tmp_path / name).read_bytes(), "upload"))
        assert np.array_equal(from_file, from_bytes), name
    with pytest.raises(ImageTooLarge, match="upload is 8×6 pixels; the limit is 40"):
        decode_image_bytes((tmp_path / "rgba.png").read_bytes(), "upload", max_pixels=40)


# ---- draft decoding: a JPEG decoded at the smallest DCT scale that still covers the caller's size ----------------

#: How a picture is stored so that EXIF orientation N displays it upright (the inverse of what the tag says).
_STORED_AS = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def upright_picture(width: int = 1600, height: int = 800) -> Image.Image:
    """Smooth gradients (red left→right, green top→bottom) under a blue checkerboard: every flip or turn shows."""
    y, x = np.mgrid[0:height, 0:width]
    checks = ((x // 200 + y // 200) % 2) * 200 + 20
    return Image.fromarray(np.stack([x * 255 // width, y * 255 // height, checks], -1).astype(np.uint8))


def save_with_orientation(picture: Image.Image, orientation: int, path: Path) -> Path:
    method = _STORED_AS[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    (picture if method is None else picture.transpose(method)).save(path, quality=90, exif=exif)
    return path


def resized(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(img.resize(size, Image.BILINEAR), dtype=np.float64)


# Upright 1600×800 to (400, 100): 1/4 scale gives 400×200; to (100, 400): only 1/2 keeps 400 rows (800×400).
# In orientations 5–8 the stored pixels are 800×1600, so the size asked of the decoder must be turned too.
@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize(("target", "expected"), [((400, 100), (400, 200)), ((100, 400), (800, 400))])
def test_draft_decoding_keeps_orientation_and_pixels(
    tmp_path: Path, orientation: int, target: tuple[int, int], expected: tuple[int, int]
) -> None:
    picture = upright_picture()
    path = save_with_orientation(picture, orientation, tmp_path / f"o{orientation}.jpg")
    full, draft = load_image(path), load_image(path, min_size=target)
    assert full.size == picture.size
    assert draft.mode == "RGB" and draft.size == expected  # decoded small, and still covering the target
    assert draft.size[0] >= target[0] and draft.size[1] >= target[1]
    # upright like the full decode, and nearly its pixels once both are resized to the target
    assert np.abs(resized(draft, target) - resized(picture, target)).mean() < 2
    assert np.abs(resized(draft, target) - resized(full, target)).mean() < 2


def test_draft_decoding_only_shrinks_big_jpegs_and_leaves_other_formats(tmp_path: Path) -> None:
    picture = upright_picture(1200, 900)
    picture.save(tmp_path / "big.png")
    picture.save(tmp_path / "big.webp", quality=90)
    save_with_orientation(picture.resize((600, 450)), 6, tmp_path / "small.jpg")
    for name in ("big.png", "big.webp", "small.jpg"):  # small.jpg: half of it would no longer cover 448 px
        full, draft = load_image(tmp_path / name), load_image(tmp_path / name, min_size=(448, 448))
        assert draft.size == full.size, name
        assert np.array_equal(np.asarray(draft), np.asarray(full)), name


def test_draft_decoding_keeps_corrupt_file_errors(tmp_path: Path) -> None:
    data = save_with_orientation(upright_picture(), 6, tmp_path / "big.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.jpg: cannot read image \(.*truncated"):
        load_image(tmp_path / "cut.jpg", min_size=(100, 100))
