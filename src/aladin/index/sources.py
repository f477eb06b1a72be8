"""What an index can be built from: a folder of images, a dataset folder (captions.jsonl) or a feature cache split."""

from __future__ import annotations

import hashlib
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from aladin.config import AladinConfig
from aladin.data.folder import (
    CAPTIONS_FILE,
    IMAGE_EXTENSIONS,
    Skipped,
    check_image_file,
    image_base,
    load_dataset_folder,
    scan_image_folder,
)
from aladin.data.images import load_images_ahead
from aladin.encoders.cache import CachedSplit, load_split
from aladin.encoders.image import ImageEncoder, RegionBatch
from aladin.encoders.text import TextEncoder, TokenBatch
from aladin.errors import AladinError, DataError
from aladin.index.metadata import FileState, ImageRecord, external_id_for

logger = logging.getLogger("aladin.index")


def find_images(paths: Iterable[str | Path]) -> tuple[list[Path], list[Skipped]]:
    """Image files named directly, plus those found recursively (sorted) under folders, and the files left
    out (see `scan_image_folder`); DataError if nothing can be indexed."""
    paths = list(paths)
    found: list[Path] = []
    skipped: list[Skipped] = []
    for path in map(Path, paths):
        if path.is_dir():
            images, left_out = scan_image_folder(path)
            found.extend(images)
            skipped.extend(left_out)
        elif os.path.lexists(path):
            reason = check_image_file(path.resolve().parent, path)
            if reason is None:
                found.append(Path(os.path.abspath(path)))
            else:
                skipped.append(Skipped(os.path.abspath(path), reason))
        else:
            raise DataError(f"{path}: no such image file or folder")
    if not found:
        why = f"; {len(skipped)} left out, first {skipped[0]}" if skipped else ""
        raise DataError(
            f"{', '.join(map(str, paths))}: no images found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}"
            f"{why})"
        )
    return found, skipped


def warn_skipped(skipped: Sequence[Skipped], strict: bool) -> None:
    """One warning line per file left out; with `strict`, the first one stops the command instead."""
    if strict and skipped:
        raise DataError(f"{skipped[0]} (--strict stops at the first bad file)")
    for item in skipped:
        logger.warning("skipped %s", item)


def read_image_batches(
    batches: Sequence[Sequence[str]], encoder: ImageEncoder, strict: bool = False
) -> Iterator[tuple[list[Image.Image], list[int], list[Skipped]]]:
    """Decode each batch of paths at the size `encoder` needs, the next ones in worker threads while the caller
    encodes one (`ImageEncoder.read_ahead`): per batch, the images that could be read, their positions in the
    batch, and the files that could not (each warned about; with `strict` the first one raises)."""
    decoded = load_images_ahead(batches, encoder.decode_size, encoder.read_ahead, keep_errors=True)
    for paths, results in zip(batches, decoded, strict=True):
        images: list[Image.Image] = []
        kept: list[int] = []
        skipped: list[Skipped] = []
        for i, (path, result) in enumerate(zip(paths, results, strict=True)):
            if isinstance(result, DataError):
                bad = Skipped(path, str(result).removeprefix(f"{path}: "))
                warn_skipped([bad], strict)
                skipped.append(bad)
            else:
                images.append(result)
                kept.append(i)
        yield images, kept, skipped


@dataclass
class ReadBatch:
    """Regions of the items of a batch that could be read (None when none could), and the others."""

    regions: RegionBatch | None
    kept: list[int]  # positions in the source's `items` of the rows of `regions`
    skipped: list[Skipped] = field(default_factory=list)


class IndexSource(ABC):
    """Items to index, in order, and their encoder features batch by batch."""

    name: str
    items: list[ImageRecord]
    #: The folder image paths are stored relative to (None: stored as they are).
    root: Path | None = None
    #: Files left out before encoding (unreadable, unsafe or not images).
    skipped: list[Skipped]
    #: Uses the frozen image/text encoders (False when the features are cached).
    needs_encoders = True
    #: The `FileState` of each item, recorded for `index sync` (empty: the source does not track its files).
    file_states: list[FileState] = []

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
    def region_batch(
        self, start: int, stop: int, encoder: ImageEncoder | None, strict: bool = False
    ) -> ReadBatch:
        """Regions of items[start:stop] (those that can be read; with `strict` a bad file raises)."""

    def region_batches(
        self, ranges: Sequence[tuple[int, int]], encoder: ImageEncoder | None, strict: bool = False
    ) -> Iterator[ReadBatch]:
        """`region_batch` of each (start, stop) in turn; sources that decode pictures read the next ones ahead."""
        return (self.region_batch(start, stop, encoder, strict) for start, stop in ranges)

    @abstractmethod
    def token_batch(self, start: int, stop: int, encoder: TextEncoder | None) -> TokenBatch:
        """Token features of captions[start:stop]."""


class _PictureSource(IndexSource):
    """Images read from disk and run through the frozen encoders."""

    def region_batch(
        self, start: int, stop: int, encoder: ImageEncoder | None, strict: bool = False
    ) -> ReadBatch:
        return next(self.region_batches([(start, stop)], encoder, strict))

    def region_batches(
        self, ranges: Sequence[tuple[int, int]], encoder: ImageEncoder | None, strict: bool = False
    ) -> Iterator[ReadBatch]:
        assert encoder is not None
        batches = [[item.path for item in self.items[start:stop]] for start, stop in ranges]
        for (start, _), (images, kept, skipped) in zip(
            ranges, read_image_batches(batches, encoder, strict), strict=True
        ):
            yield ReadBatch(encoder.encode(images) if images else None, [start + i for i in kept], skipped)

    def token_batch(self, start: int, stop: int, encoder: TextEncoder | None) -> TokenBatch:
        assert encoder is not None
        return encoder.encode([caption for _, caption in self.captions[start:stop]])


class ImageFolderSource(_PictureSource):
    """Every image under a folder (recursively); the external id is the path relative to the folder."""

    def __init__(self, root: str | Path):
        self.root = Path(os.path.abspath(root))
        self.name = str(root)
        files, self.skipped = find_images([self.root])
        self.items, self.file_states = [], []
        for path in files:
            try:
                state = FileState.of(path)  # before encoding: a later change shows at the next sync
            except OSError as exc:  # deleted or made unreadable since the folder was listed
                self.skipped.append(Skipped(str(path), f"cannot be read ({exc.strerror})"))
                continue
            self.items.append(ImageRecord(str(path), external_id_for(self.root, path)))
            self.file_states.append(state)


class DatasetSource(_PictureSource):
    """A dataset folder (captions.jsonl), all splits or one; its captions can be indexed for image→text search."""

    def __init__(self, root: str | Path, split: str | None = None):
        data = load_dataset_folder(root, require_images=False)
        if split is not None:
            data = data.split(split)
            if not data.items:
                raise DataError(f"{root}: no images in split {split!r}")
        self.name = f"{root}" + (f":{split}" if split else "")
        self.root = Path(os.path.abspath(image_base(root)))
        self.items, self.skipped = [], []
        for it in data.items:
            reason = check_image_file(self.root, it.path)
            if reason is None:
                self.items.append(ImageRecord(os.path.abspath(it.path), it.image_id, it.captions))
            else:
                self.skipped.append(Skipped(os.path.abspath(it.path), reason))
        if not self.items:
            raise DataError(f"{self.name}: no image can be indexed (first left out: {self.skipped[0]})")


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
        self.skipped = []
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

    def region_batch(
        self, start: int, stop: int, encoder: ImageEncoder | None, strict: bool = False
    ) -> ReadBatch:
        return ReadBatch(self.cached.image_batch(np.arange(start, stop)), list(range(start, stop)))

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
