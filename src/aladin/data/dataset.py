"""The one dataset object every reader produces and every later layer consumes."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path

from aladin.config import DatasetSplitConfig
from aladin.errors import DataError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ImageItem:
    """One image with all its captions (any number ≥ 1)."""

    image_id: str
    path: Path
    captions: tuple[str, ...]
    split: str


@dataclass
class Dataset:
    """Images with captions, each tagged with a split."""

    root: Path
    items: list[ImageItem] = field(default_factory=list)
    name: str = "dataset"

    def __len__(self) -> int:
        return len(self.items)

    def split(self, name: str) -> Dataset:
        """The items of one split, in file order."""
        return Dataset(self.root, [it for it in self.items if it.split == name], name=f"{self.name}:{name}")

    def split_names(self) -> list[str]:
        return sorted({it.split for it in self.items}, key=lambda s: (SPLITS + (s,)).index(s))

    @property
    def num_captions(self) -> int:
        return sum(len(it.captions) for it in self.items)

    def flat_captions(self) -> tuple[list[str], list[int]]:
        """All captions in order, and for each the index of its image in `items`."""
        texts: list[str] = []
        owner: list[int] = []
        for i, it in enumerate(self.items):
            texts.extend(it.captions)
            owner.extend([i] * len(it.captions))
        return texts, owner

    def fingerprint(self) -> str:
        """Identifies the content (ids, captions, splits) so caches built from other data are refused."""
        h = hashlib.sha256()
        for it in self.items:
            joined = "\x01".join(it.captions)
            h.update(f"{it.image_id}\x00{it.split}\x00{joined}\n".encode())
        return h.hexdigest()[:16]

    def with_validation_split(self, cfg: DatasetSplitConfig | None = None) -> Dataset:
        """Carve a seeded validation split out of train when the dataset has none; test is never touched."""
        cfg = cfg or DatasetSplitConfig()
        if any(it.split == "val" for it in self.items) or (cfg.val_fraction <= 0 and cfg.val_size <= 0):
            return self
        train_idx = [i for i, it in enumerate(self.items) if it.split == "train"]
        if not train_idx:
            return self  # evaluation-only data: nothing to carve from
        if len(train_idx) < 2:
            raise DataError(f"{self.root}: need at least 2 training images to carve a validation split")
        n_val = cfg.val_size or max(1, round(len(train_idx) * cfg.val_fraction))
        n_val = min(n_val, len(train_idx) - 1)
        chosen = set(random.Random(cfg.seed).sample(train_idx, n_val))
        items = [
            ImageItem(it.image_id, it.path, it.captions, "val") if i in chosen else it
            for i, it in enumerate(self.items)
        ]
        return Dataset(self.root, items, name=self.name)
