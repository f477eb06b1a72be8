"""`aladin dataset check`: everything wrong with a dataset found in one pass, before hours of feature extraction.

Readers already refuse malformed files; this goes further and opens every image (a truncated JPEG only fails
when decoded) and reports all problems at once instead of stopping at the first.
"""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from aladin.data.dataset import SPLITS, Dataset, ImageItem
from aladin.data.images import load_image
from aladin.errors import DataError

#: How many problems of each kind `format_report` lists by name.
_SHOWN = 5


@dataclass
class CheckReport:
    """What `check_dataset` found; `ok` is False when any problem (not warning) was found."""

    name: str
    root: Path
    images: dict[str, int]  # split → number of images
    captions: dict[str, int]  # split → number of captions
    captions_per_image: dict[int, int]  # number of captions → number of images with that many
    images_opened: bool  # False: only existence was checked
    missing_images: list[Path]
    unreadable_images: list[tuple[Path, str]]  # (path, why)
    empty_captions: list[tuple[str, int]]  # (image id, caption index)
    images_without_captions: list[str]
    duplicate_ids: list[str]
    warnings: list[str]

    @property
    def num_images(self) -> int:
        return sum(self.images.values())

    @property
    def num_captions(self) -> int:
        return sum(self.captions.values())

    @property
    def num_problems(self) -> int:
        return (
            len(self.missing_images)
            + len(self.unreadable_images)
            + len(self.empty_captions)
            + len(self.images_without_captions)
            + len(self.duplicate_ids)
            + (self.num_images == 0)
        )

    @property
    def ok(self) -> bool:
        return self.num_problems == 0


def check_dataset(
    dataset: Dataset, open_images: bool = True, progress: bool = True, workers: int | None = None
) -> CheckReport:
    """Count the dataset and find its problems; `open_images` decodes every image with `load_image`.

    Images are opened on `workers` threads (default: up to 8), since decoding is most of the time.
    """
    images: Counter[str] = Counter()
    captions: Counter[str] = Counter()
    histogram: Counter[int] = Counter()
    empty: list[tuple[str, int]] = []
    for item in dataset.items:
        images[item.split] += 1
        captions[item.split] += len(item.captions)
        histogram[len(item.captions)] += 1
        empty.extend((item.image_id, i) for i, caption in enumerate(item.captions) if not caption.strip())
    order = {name: i for i, name in enumerate(SPLITS)}
    splits = sorted(images, key=lambda s: (order.get(s, len(order)), s))
    id_count = Counter(item.image_id for item in dataset.items)
    exists = [Path(item.path).is_file() for item in dataset.items]
    present = [item for item, found in zip(dataset.items, exists, strict=True) if found]
    unreadable: list[tuple[Path, str]] = []
    if open_images and present:
        with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:
            results = pool.map(_open, present)
            bar = tqdm(
                results, total=len(present), desc="checking images", unit="image", disable=not progress
            )
            unreadable = [problem for problem in bar if problem is not None]
    return CheckReport(
        name=dataset.name,
        root=Path(dataset.root),
        images={s: images[s] for s in splits},
        captions={s: captions[s] for s in splits},
        captions_per_image=dict(sorted(histogram.items())),
        images_opened=open_images,
        missing_images=[
            Path(item.path) for item, found in zip(dataset.items, exists, strict=True) if not found
        ],
        unreadable_images=unreadable,
        empty_captions=empty,
        images_without_captions=[item.image_id for item in dataset.items if not item.captions],
        duplicate_ids=[image_id for image_id, n in id_count.items() if n > 1],
        warnings=_split_warnings(set(images)),
    )


def _open(item: ImageItem) -> tuple[Path, str] | None:
    try:
        load_image(item.path)
    except DataError as exc:
        return Path(item.path), str(exc).removeprefix(f"{item.path}: ")
    return None


def _split_warnings(splits: set[str]) -> list[str]:
    warnings = []
    if not splits:
        return warnings
    if "train" not in splits:
        warnings.append("no train split: the dataset can only be evaluated, not trained on")
    elif "val" not in splits:
        warnings.append("no val split: one will be carved from train")
    if "test" not in splits:
        warnings.append("no test split: evaluation needs one")
    other = sorted(splits - set(SPLITS))
    if other:
        warnings.append(
            f"split(s) {', '.join(map(repr, other))} are not {'/'.join(SPLITS)} and are ignored by training "
            "and evaluation"
        )
    return warnings


def format_report(report: CheckReport) -> str:
    """A short summary for the terminal: counts, the first few problems of each kind, warnings, verdict."""
    lines = [
        f"dataset {report.name!r} at {report.root}: {report.num_images} images, {report.num_captions} captions"
    ]
    lines += [
        f"  {split:<6} {n:>8} images {report.captions[split]:>9} captions"
        for split, n in report.images.items()
    ]
    if report.captions_per_image:
        spread = ", ".join(f"{k}: {n}" for k, n in report.captions_per_image.items())
        lines.append(f"captions per image (captions: images): {spread}")
    if not report.images_opened:
        lines.append("images were not opened (only checked that the files exist)")
    if report.num_images == 0:
        lines.append("problem: the dataset has no images")
    sections = [
        ("missing images", [str(p) for p in report.missing_images]),
        ("unreadable images", [f"{p}: {why}" for p, why in report.unreadable_images]),
        ("empty captions", [f"image {i!r}, caption {k}" for i, k in report.empty_captions]),
        ("images without captions", [repr(i) for i in report.images_without_captions]),
        ("duplicate image ids", [repr(i) for i in report.duplicate_ids]),
    ]
    for title, entries in sections:
        if entries:
            lines.append(f"{title}: {len(entries)}")
            lines += [f"  {entry}" for entry in entries[:_SHOWN]]
            if len(entries) > _SHOWN:
                lines.append(f"  ... and {len(entries) - _SHOWN} more")
    lines += [f"warning: {w}" for w in report.warnings]
    problems = report.num_problems
    lines.append("OK" if problems == 0 else f"{problems} problem{'s' if problems != 1 else ''} found")
    return "\n".join(lines)
