"""load_images_ahead: pictures decoded in worker threads ahead of the caller, delivered in order, bounded."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aladin.data.images import load_image, load_images_ahead
from aladin.errors import DataError


def colour_files(folder: Path, n: int) -> list[Path]:
    """n JPEGs of distinct flat colours; the first ones are the biggest, so they finish decoding last."""
    paths = []
    for i in range(n):
        side = 1200 - i * 80
        path = folder / f"{i:02d}.jpg"
        Image.new("RGB", (side, side // 2), (10 * i, 255 - 10 * i, 128)).save(path, quality=95)
        paths.append(path)
    return paths


def batched(paths: list[Path], size: int) -> list[list[Path]]:
    return [paths[i : i + size] for i in range(0, len(paths), size)]


def test_pictures_come_back_in_order_and_match_a_plain_load(tmp_path: Path) -> None:
    paths = colour_files(tmp_path, 11)
    got = list(load_images_ahead(batched(paths, 3), min_size=(100, 100), ahead=2, workers=4))
    assert [len(batch) for batch in got] == [3, 3, 3, 2]
    flat = [picture for batch in got for picture in batch]
    for path, picture in zip(paths, flat, strict=True):
        expected = load_image(path, min_size=(100, 100))
        assert picture.size == expected.size, path  # drafted like load_image: 1/8 of 1200 px is still ≥ 100
        assert np.array_equal(np.asarray(picture), np.asarray(expected)), path


def test_reads_a_bounded_number_of_batches_ahead(tmp_path: Path) -> None:
    paths = colour_files(tmp_path, 12)
    pulled: list[int] = []

    def batches() -> Iterator[list[Path]]:
        for number, batch in enumerate(batched(paths, 2)):
            pulled.append(number)
            yield batch

    reader = load_images_ahead(batches(), ahead=2, workers=2)
    first = next(reader)
    assert [p.getpixel((0, 0)) for p in first] == [load_image(p).getpixel((0, 0)) for p in paths[:2]]
    assert pulled == [0, 1, 2]  # batches 1 and 2 were submitted before batch 0 came back, batch 3 not yet
    next(reader)
    assert pulled == [0, 1, 2, 3]
    reader.close()  # stopping early leaves no worker thread behind
    assert not [t for t in threading.enumerate() if t.name.startswith("aladin-decode")]


def test_a_bad_file_is_named_after_the_batches_before_it(tmp_path: Path) -> None:
    paths = colour_files(tmp_path, 7)
    paths[4].write_bytes(paths[4].read_bytes()[:300])  # truncated, in the third batch
    reader = load_images_ahead(batched(paths, 2), min_size=(64, 64), ahead=2, workers=3)
    assert len(next(reader)) == 2 and len(next(reader)) == 2
    with pytest.raises(DataError, match=r"04\.jpg: cannot read image") as info:
        next(reader)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("ahead", [0, 1, 3])
def test_any_window_gives_the_same_pictures(tmp_path: Path, ahead: int) -> None:
    paths = colour_files(tmp_path, 5)
    got = [p.getpixel((0, 0)) for batch in load_images_ahead(batched(paths, 2), ahead=ahead) for p in batch]
    assert got == [load_image(p).getpixel((0, 0)) for p in paths]
