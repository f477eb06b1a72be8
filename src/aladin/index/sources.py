"""What an index can be built from: a folder of images, a dataset folder (captions.jsonl) or a feature cache split."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from aladin.config import AladinConfig
from aladin.data.folder import CAPTIONS_FILE, load_dataset_folder
from aladin.data.images import load_image
from aladin.encoders.cache import CachedSplit, load_split
from aladin.encoders.image import ImageEncoder, RegionBatch
from aladin.encoders.text import TextEncoder, TokenBatch
from aladin.errors import AladinError, DataError
from aladin.index.metadata import ImageRecord

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


def find_images(paths: Iterable[str | Path]) -> list[Path]:
    """Image files named directly, plus those found recursively (sorted) under folders; DataError if none."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found.extend(
                sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            )
        elif path.is_file():
            found.append(path)
        else:
            raise DataError(f"{path}: no such image file or folder")
    if not found:
        raise DataError(
            f"{', '.join(map(str, paths))}: no images found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return found


class IndexSource(ABC):
    """Items to index, in order, and their encoder features batch by batch."""

    name: str
    items: list[ImageRecord]
    #: Uses the frozen image/text encoders (False when the features are cached).
    needs_encoders = True

    @property
    def captions(self) -> list[tuple[int, str]]:
        """Every caption with the position of its image in `items`."""
        return [(i, caption) for i, item in enumerate(self.items) for caption in item.captions]

    def fingerprint(self) -> str:
        """Identifies the items, so a resumed build is refused for a source that changed."""
        digest = hashlib.sha256(f"{type(self).__name__}\x00{self.name}\n".encode())
        for item in self.items:
            digest.update("\x00".join((item.path, item.external_id, *item.captions)).encode() + b"\n")
        return digest.hexdigest()[:16]

    @abstractmethod
    def region_batch(self, start: int, stop: int, encoder: ImageEncoder | None) -> RegionBatch:
        """Regions of items[start:stop]."""

    def region_batches(
        self, ranges: Sequence[tuple[int, int]], encoder: ImageEncoder | None
    ) -> Iterator[RegionBatch]:
        """`region_batch` of each (start, stop) in turn; sources that decode pictures read the next ones ahead."""
        return (self.region_batch(start, stop, encoder) for start, stop in ranges)

    @abstractmethod
    def token_batch(self, start: int, stop: int, encoder: TextEncoder | None) -> TokenBatch:
        """Token features of captions[start:stop]."""


class _PictureSource(IndexSource):
    """Images read from disk and run through the frozen encoders."""

    def region_batch(self, start: int, stop: int, encoder: ImageEncoder | None) -> RegionBatch:
        assert encoder is not None
        return encoder.encode([load_image(item.path, encoder.decode_size) for item in self.items[start:stop]])

    def region_batches(
        self, ranges: Sequence[tuple[int, int]], encoder: ImageEncoder | None
    ) -> Iterator[RegionBatch]:
        assert encoder is not None
        return encoder.encode_files([item.path for item in self.items[start:stop]] for start, stop in ranges)

    def token_batch(self, start: int, stop: int, encoder: TextEncoder | None) -> TokenBatch:
        assert encoder is not None
        return encoder.encode([caption for _, caption in self.captions[start:stop]])


class ImageFolderSource(_PictureSource):
    """Every image under a folder (recursively); the external id is the path relative to the folder."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.name = str(self.root)
        self.items = [
            ImageRecord(str(path), path.relative_to(self.root).as_posix())
            for path in find_images([self.root])
        ]


class DatasetSource(_PictureSource):
    """A dataset folder (captions.jsonl), all splits or one; its captions can be indexed for image→text search."""

    def __init__(self, root: str | Path, split: str | None = None):
        data = load_dataset_folder(root)
        if split is not None:
            data = data.split(split)
            if not data.items:
                raise DataError(f"{root}: no images in split {split!r}")
        self.name = f"{root}" + (f":{split}" if split else "")
        self.items = [ImageRecord(str(it.path), it.image_id, it.captions) for it in data.items]


class CachedSplitSource(IndexSource):
    """A feature cache split: no encoder runs, the cached features must come from the model's encoders."""

    needs_encoders = False

    def __init__(self, cache_dir: str | Path, split: str, config: AladinConfig | None = None):
        self.cached: CachedSplit = load_split(
            Path(cache_dir),
            split,
            config.image_encoder if config else None,
            config.text_encoder if config else None,
        )
        self.name = f"{cache_dir}:{split}"
        owners = np.asarray(self.cached.caption_image)
        # Text batches follow the cache's caption order, which must be `captions` (image by image).
        if not np.all(np.diff(owners) >= 0):
            raise AladinError(f"{self.name}: cached captions are not grouped by image")
        texts = self.cached.captions
        per_image: list[list[str]] = [[] for _ in range(self.cached.num_images)]
        for owner, caption in zip(owners, texts, strict=True):
            per_image[int(owner)].append(caption)
        self.items = [
            ImageRecord(path, image_id, tuple(caps))
            for path, image_id, caps in zip(
                self.cached.image_paths, self.cached.image_ids, per_image, strict=True
            )
        ]

    def region_batch(self, start: int, stop: int, encoder: ImageEncoder | None) -> RegionBatch:
        return self.cached.image_batch(np.arange(start, stop))

    def token_batch(self, start: int, stop: int, encoder: TextEncoder | None) -> TokenBatch:
        return self.cached.text_batch(np.arange(start, stop))


def open_source(
    path: str | Path, split: str | None = None, config: AladinConfig | None = None
) -> IndexSource:
    """Recognise what `path` is: a feature cache (or one split of it), a dataset folder, or a folder of images."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path}: not a folder (expected images, a dataset folder or a feature cache)")
    if (path / "meta.json").is_file() and (path / "regions.npy").is_file():
        return CachedSplitSource(path.parent, path.name, config)
    if (path / (split or "test") / "meta.json").is_file():
        return CachedSplitSource(path, split or "test", config)
    if (path / CAPTIONS_FILE).is_file():
        return DatasetSource(path, split)
    if split is not None:
        raise AladinError(
            f"{path}: --split needs a dataset folder or a feature cache, not a folder of images"
        )
    return ImageFolderSource(path)
