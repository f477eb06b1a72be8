"""Encoder outputs cached on disk (float16, memory-mapped) so training epochs never re-run the frozen encoders.

Layout per split: `cache_dir/<split>/` holds regions/boxes/region_mask (images) and tokens/token_mask/
attention_mask/input_ids/caption_image (captions) as .npy files, plus meta.json; the train split of a cache with
augmented views (`ImageEncoderConfig.train_views`) also holds view_regions. Extraction writes into
`<split>.partial/` batch by batch, records progress in progress.json (so an interrupted run resumes), and renames
the folder into place only when complete. Images go through `ImageEncoder.encode_items`, so encoders that serve
stored features never open the pictures.

Under torchrun each rank encodes a contiguous run of whole batches into `<split>.partial/ranks/<r>-of-<N>/`
(resumable the same way); after a barrier rank 0 concatenates the shards, so the cache is byte for byte the one
a single process writes.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.lib.format import open_memmap
from tqdm import tqdm

from aladin import distributed
from aladin.config import (
    CACHE_FORMAT_VERSION,
    ImageEncoderConfig,
    TextEncoderConfig,
    config_from_dict,
    config_to_dict,
    first_difference,
)
from aladin.data.dataset import Dataset
from aladin.encoders.image import ImageEncoder, RegionBatch
from aladin.encoders.text import TextEncoder, TokenBatch
from aladin.errors import AladinError, CheckpointError
from aladin.fileio import read_json, recover_directory, swap_directory, write_json
from aladin.migrations import SCHEMA_KEY, SCHEMA_VERSION, migrate, stored_version

_COPY_ROWS = 1024
IMAGE_ARRAYS = ("regions", "boxes", "region_mask")
TEXT_ARRAYS = ("tokens", "token_mask", "attention_mask", "input_ids")
#: Regions of the augmented views [N, views - 1, R, D]: only in the train split of a cache with train_views > 1.
VIEW_ARRAY = "view_regions"
#: The encoders' own embeddings in the space they share (CLIP, SigLIP: `RegionBatch.projected`,
#: `TokenBatch.projected`), [N, P] and [T, P]: only when both encoders have the same shared space.
PROJECTED_ARRAYS = {"images": "image_projected", "captions": "text_projected"}
_DTYPES = {
    "regions": np.float16,
    VIEW_ARRAY: np.float16,
    "boxes": np.float16,
    "region_mask": np.bool_,
    "tokens": np.float16,
    "token_mask": np.bool_,
    "attention_mask": np.bool_,
    "input_ids": np.int32,
    "image_projected": np.float16,
    "text_projected": np.float16,
}


@dataclass
class CachedSplit:
    """One split's cached features, memory-mapped; batches come back as float32 torch tensors."""

    directory: Path
    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]

    @property
    def num_images(self) -> int:
        return int(self.meta["num_images"])

    @property
    def num_captions(self) -> int:
        return int(self.meta["num_captions"])

    @property
    def image_ids(self) -> list[str]:
        return list(self.meta["image_ids"])

    @property
    def image_paths(self) -> list[str]:
        return list(self.meta["image_paths"])

    @property
    def captions(self) -> list[str]:
        return list(self.meta["captions"])

    @property
    def caption_image(self) -> np.ndarray:
        """For each caption, the index of its image within the split: int64 [T]."""
        return self.arrays["caption_image"]

    def image_batch(self, indices: Sequence[int] | np.ndarray) -> RegionBatch:
        idx = np.asarray(indices, dtype=np.int64)
        return RegionBatch(
            torch.from_numpy(self.arrays["regions"][idx].astype(np.float32)),
            torch.from_numpy(self.arrays["boxes"][idx].astype(np.float32)),
            torch.from_numpy(np.array(self.arrays["region_mask"][idx])),
        )

    def text_batch(self, indices: Sequence[int] | np.ndarray) -> TokenBatch:
        """Captions `indices`, padding trimmed to the longest of them (saves compute in the heads)."""
        idx = np.asarray(indices, dtype=np.int64)
        attention = np.array(self.arrays["attention_mask"][idx])
        length = max(int(attention.sum(1).max(initial=0)), 1)
        return TokenBatch(
            torch.from_numpy(self.arrays["tokens"][idx, :length].astype(np.float32)),
            torch.from_numpy(np.array(self.arrays["token_mask"][idx, :length])),
            torch.from_numpy(attention[:, :length]),
            torch.from_numpy(self.arrays["input_ids"][idx, :length].astype(np.int64)),
        )


def _as_split_sees_it(image_config: ImageEncoderConfig, split: str) -> ImageEncoderConfig:
    """Augmented views exist only in the train split: other splits are the same whatever `train_views` says."""
    return image_config if split == "train" else dataclasses.replace(image_config, train_views=1)


def _identity(
    fingerprint: str, image_config: ImageEncoderConfig, text_config: TextEncoderConfig, split: str
) -> dict[str, Any]:
    """What must match for a cached split to be reused."""
    return {
        "format_version": CACHE_FORMAT_VERSION,
        SCHEMA_KEY: SCHEMA_VERSION,
        "fingerprint": fingerprint,
        "image_encoder": config_to_dict(_as_split_sees_it(image_config, split)),
        "text_encoder": config_to_dict(text_config),
    }


def _current_meta(meta: dict[str, Any], where: str) -> dict[str, Any]:
    """Stored metadata with its encoder configs migrated to the current schema (aladin.migrations) and
    normalised, so a cache written before an option existed is compared as what it holds."""
    out = migrate("encoders", meta, stored_version(meta), where)
    out = {**out, SCHEMA_KEY: SCHEMA_VERSION}
    for key, cls in (("image_encoder", ImageEncoderConfig), ("text_encoder", TextEncoderConfig)):
        try:
            out[key] = config_to_dict(config_from_dict(cls, out[key], f"{where}: {key}", partial=False))
        except AladinError:
            pass  # unknown or mistyped fields: compared as stored, so the difference gets named
    return out


def _split_is_current(directory: Path, identity: dict[str, Any]) -> bool:
    meta_path = directory / "meta.json"
    if not meta_path.is_file():
        return False
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    try:
        meta = _current_meta(meta, str(meta_path)) if isinstance(meta, dict) else {}
    except AladinError:
        return False  # a schema this aladin does not know: extracted again
    return all(meta.get(key) == value for key, value in identity.items())


class _SplitWriter:
    """Writes rows [start, stop) of a split's images and captions into `partial`, resuming from its progress.json
    when that matches (the whole split with one process, a rank's shard under torchrun)."""

    def __init__(
        self, partial: Path, identity: dict[str, Any], shapes: dict[str, int], rows: dict[str, list[int]]
    ) -> None:
        self.partial = partial
        self.rows = rows
        self.state: dict[str, Any] = {
            **identity,
            **shapes,
            "rows": rows,
            "images_done": 0,
            "captions_done": 0,
        }
        progress = partial / "progress.json"
        if progress.is_file():
            try:
                saved = json.loads(progress.read_text())
            except (OSError, json.JSONDecodeError):
                saved = {}
            if all(saved.get(key) == value for key, value in self.state.items() if not key.endswith("_done")):
                self.state = saved
        if self.state["images_done"] == 0 and self.state["captions_done"] == 0 and partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True, exist_ok=True)
        self.arrays: dict[str, np.ndarray] = {}

    def next_row(self, kind: str) -> int:
        """The first row of `kind` not written yet."""
        return self.rows[kind][0] + self.state[f"{kind}_done"]

    def write(self, kind: str, start: int, values: dict[str, np.ndarray]) -> None:
        """Store rows start.. of each array (created on the first batch), then record the progress."""
        done_key = f"{kind}_done"
        first, stop = self.rows[kind]
        for name, value in values.items():
            if name not in self.arrays:
                path = self.partial / f"{name}.npy"
                if self.state[done_key] == 0:
                    self.arrays[name] = open_memmap(
                        path, mode="w+", dtype=_DTYPES[name], shape=(stop - first, *value.shape[1:])
                    )
                else:
                    self.arrays[name] = np.load(path, mmap_mode="r+")
            self.arrays[name][start - first : start - first + len(value)] = value
        for name in values:
            self.arrays[name].flush()
        self.state[done_key] = start - first + len(next(iter(values.values())))
        write_json(self.partial / "progress.json", self.state)


def _to_disk(tensor: torch.Tensor, name: str, what: str) -> np.ndarray:
    """float16 for the features, refusing values float16 cannot hold rather than caching inf."""
    array = tensor.detach().cpu().numpy().astype(_DTYPES[name])
    if array.dtype == np.float16 and not np.isfinite(array).all():
        raise AladinError(f"{what}: {name} out of float16 range; these features cannot be cached")
    return array


def _extract_split(
    data: Dataset,
    split: str,
    image_encoder: ImageEncoder,
    text_encoder: TextEncoder,
    cache_dir: Path,
    batch_size: int,
    progress: bool,
) -> None:
    identity = _identity(data.fingerprint(), image_encoder.config, text_encoder.config, split)
    final = cache_dir / split
    if _split_is_current(final, identity):
        return
    texts, owner = data.flat_captions()
    if not data.items or not texts:
        raise AladinError(f"{data.name}: split {split!r} has no images or no captions to extract")
    max_tokens = max(text_encoder.lengths(texts))
    shapes = {"num_images": len(data.items), "num_captions": len(texts), "max_tokens": max_tokens}
    partial = cache_dir / f"{split}.partial"
    world = distributed.world_size()
    shards = [
        {"images": list(images), "captions": list(captions)}
        for images, captions in zip(
            _batch_shards(len(data.items), batch_size, world),
            _batch_shards(len(texts), batch_size, world),
            strict=True,
        )
    ]
    shard_dirs = distributed.rank_folders(partial)
    writer = _SplitWriter(shard_dirs[distributed.rank()], identity, shapes, shards[distributed.rank()])
    state = writer.state
    views = image_encoder.config.train_views if split == "train" else 1
    shared = (
        image_encoder.shared_space is not None and image_encoder.shared_space == text_encoder.shared_space
    )
    with tqdm(
        total=sum(stop - start for start, stop in writer.rows.values()),
        initial=state["images_done"] + state["captions_done"],
        desc=f"features {split}",
        unit="item",
        disable=not progress or not distributed.is_main_process(),
    ) as bar:
        _write_images(data, image_encoder, writer, batch_size, views, shared, bar)
        _write_captions(texts, split, text_encoder, writer, batch_size, max_tokens, shared, bar)
    distributed.barrier()  # every shard is on disk
    meta = {
        **identity,
        **shapes,
        "split": split,
        "dataset": data.name,
        "image_feature_dim": image_encoder.feature_dim,
        "text_feature_dim": text_encoder.feature_dim,
        "num_regions": image_encoder.num_regions,
        "image_ids": [item.image_id for item in data.items],
        "image_paths": [str(item.path) for item in data.items],
        "captions": texts,
    }
    distributed.on_main_process(lambda: _publish_split(partial, shard_dirs, owner, meta, cache_dir / split))


def _write_images(
    data: Dataset,
    encoder: ImageEncoder,
    writer: _SplitWriter,
    batch_size: int,
    views: int,
    shared: bool,
    bar: tqdm,
) -> None:
    """This shard's image rows not yet on disk: regions (and augmented views), read ahead in worker threads."""
    image_stop = writer.rows["images"][1]
    starts = range(writer.next_row("images"), image_stop, batch_size)
    batches = [data.items[start : min(start + batch_size, image_stop)] for start in starts]
    encoded = encoder.encode_item_batches(batches, starts.start, views)
    for start, items, (batch, view_regions) in zip(starts, batches, encoded, strict=True):
        what = f"images {items[0].path}..{items[-1].path}"
        arrays = {} if view_regions is None else {VIEW_ARRAY: _to_disk(view_regions, VIEW_ARRAY, what)}
        arrays.update({name: _to_disk(getattr(batch, name), name, what) for name in IMAGE_ARRAYS})
        if shared and batch.projected is not None:
            name = PROJECTED_ARRAYS["images"]
            arrays[name] = _to_disk(batch.projected, name, what)
        writer.write("images", start, arrays)
        bar.update(len(items))


def _write_captions(
    texts: list[str],
    split: str,
    encoder: TextEncoder,
    writer: _SplitWriter,
    batch_size: int,
    max_tokens: int,
    shared: bool,
    bar: tqdm,
) -> None:
    """This shard's caption rows not yet on disk, padded to the split's longest caption."""
    caption_stop = writer.rows["captions"][1]
    for start in range(writer.next_row("captions"), caption_stop, batch_size):
        chunk = texts[start : min(start + batch_size, caption_stop)]
        batch = encoder.encode(chunk)
        pad = max_tokens - batch.tokens.shape[1]
        padded = {
            "tokens": torch.nn.functional.pad(batch.tokens, (0, 0, 0, pad)),
            "token_mask": torch.nn.functional.pad(batch.token_mask, (0, pad)),
            "attention_mask": torch.nn.functional.pad(batch.attention_mask, (0, pad)),
            "input_ids": torch.nn.functional.pad(batch.input_ids, (0, pad)),
        }
        what = f"split {split!r} captions {start}..{start + len(chunk) - 1}"
        if shared and batch.projected is not None:
            padded[PROJECTED_ARRAYS["captions"]] = batch.projected
        arrays = {name: _to_disk(value, name, what) for name, value in padded.items()}
        writer.write("captions", start, arrays)
        bar.update(len(chunk))


def _batch_shards(total: int, batch_size: int, parts: int) -> list[tuple[int, int]]:
    """Rows [start, stop) of each rank: contiguous runs of whole batches, so every batch is the one a single
    process encodes (same inputs, same numbers)."""
    batches = -(-total // batch_size)
    return [
        (first * batch_size, min(stop * batch_size, total))
        for first, stop in distributed.shard_bounds(batches, parts)
    ]


def _merge_shards(partial: Path, shard_dirs: list[Path]) -> None:
    """Concatenate the ranks' shard arrays, in rank order, into `partial` (ranks with no rows wrote nothing)."""
    for name in (*IMAGE_ARRAYS, *TEXT_ARRAYS, VIEW_ARRAY, *PROJECTED_ARRAYS.values()):
        parts = [
            np.load(d / f"{name}.npy", mmap_mode="r") for d in shard_dirs if (d / f"{name}.npy").is_file()
        ]
        if not parts:  # no augmented views or shared-space embeddings in this split
            continue
        shape = (sum(len(part) for part in parts), *parts[0].shape[1:])
        merged = open_memmap(partial / f"{name}.npy", mode="w+", dtype=parts[0].dtype, shape=shape)
        row = 0
        for part in parts:
            for start in range(0, len(part), _COPY_ROWS):
                block = part[start : start + _COPY_ROWS]
                merged[row : row + len(block)] = block
                row += len(block)
        merged.flush()
        del merged
    shutil.rmtree(partial / distributed.RANKS_DIR)


def _publish_split(
    partial: Path, shard_dirs: list[Path], owner: Sequence[int], meta: dict[str, Any], final: Path
) -> None:
    """Complete `partial` (merging the ranks' shards first, if any) and rename it into place."""
    if shard_dirs != [partial]:
        _merge_shards(partial, shard_dirs)
    # shards of an interrupted run on another number of ranks must not be published with the split
    shutil.rmtree(partial / distributed.RANKS_DIR, ignore_errors=True)
    np.save(partial / "caption_image.npy", np.asarray(owner, dtype=np.int64))
    write_json(partial / "meta.json", meta)
    swap_directory(partial, final)
    (final / "progress.json").unlink(missing_ok=True)  # a merged split has none


def extract_features(
    dataset: Dataset,
    image_encoder: ImageEncoder,
    text_encoder: TextEncoder,
    cache_dir: Path,
    batch_size: int = 32,
    progress: bool = True,
) -> FeatureCache:
    """Encode every split of `dataset` once into `cache_dir`; complete splits with the same data and encoder
    configs are kept, interrupted ones resume where they stopped."""
    if batch_size < 1:
        raise AladinError(f"batch_size: must be at least 1, got {batch_size}")
    distributed.init_from_env()
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    for split in dataset.split_names():
        _extract_split(
            dataset.split(split), split, image_encoder, text_encoder, cache_dir, batch_size, progress
        )
    return FeatureCache(cache_dir, image_encoder.config, text_encoder.config)


def load_split(
    cache_dir: Path,
    split: str,
    image_encoder_config: ImageEncoderConfig | None = None,
    text_encoder_config: TextEncoderConfig | None = None,
    fingerprint: str | None = None,
) -> CachedSplit:
    """Memory-map one cached split, refusing it when its format, encoder configs or data differ from those given."""
    cache_dir = Path(cache_dir)
    directory = recover_directory(cache_dir / split)  # a crash mid-swap leaves the previous split
    meta_path = directory / "meta.json"
    if not meta_path.is_file():
        available = ", ".join(available_splits(cache_dir)) or "none"
        raise CheckpointError(f"{cache_dir}: no cached features for split {split!r} (available: {available})")
    meta = read_json(meta_path, "feature cache metadata")
    if not isinstance(meta, dict) or meta.get("format_version") != CACHE_FORMAT_VERSION:
        version = meta.get("format_version") if isinstance(meta, dict) else None
        raise CheckpointError(
            f"{meta_path}: feature cache format version {version!r}, this aladin reads version "
            f"{CACHE_FORMAT_VERSION}; re-run feature extraction"
        )
    wanted: dict[str, Any] = {}
    if image_encoder_config is not None:
        wanted["image_encoder"] = config_to_dict(_as_split_sees_it(image_encoder_config, split))
    if text_encoder_config is not None:
        wanted["text_encoder"] = config_to_dict(text_encoder_config)
    if fingerprint is not None:
        wanted["fingerprint"] = fingerprint
    stored = _current_meta(meta, str(meta_path))
    for key, value in wanted.items():
        diff = first_difference(stored.get(key), value, key)
        if diff:
            raise CheckpointError(f"{meta_path}: {diff}; re-run feature extraction")
    arrays: dict[str, np.ndarray] = {}
    optional = (VIEW_ARRAY, PROJECTED_ARRAYS["images"], PROJECTED_ARRAYS["captions"])
    present = tuple(name for name in optional if (directory / f"{name}.npy").is_file())
    for name in (*IMAGE_ARRAYS, *TEXT_ARRAYS, "caption_image", *present):
        path = directory / f"{name}.npy"
        try:
            arrays[name] = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: cannot read cached features ({exc})") from exc
        per_image = (*IMAGE_ARRAYS, VIEW_ARRAY, PROJECTED_ARRAYS["images"])
        rows = meta["num_images"] if name in per_image else meta["num_captions"]
        if arrays[name].shape[0] != rows:
            raise CheckpointError(f"{path}: {arrays[name].shape[0]} rows, meta.json says {rows}")
    return CachedSplit(directory, stored, arrays)


def available_splits(cache_dir: Path) -> list[str]:
    """Splits with a complete cache under `cache_dir`."""
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        return []
    return sorted(
        p.name
        for p in cache_dir.iterdir()
        if p.is_dir()
        and not p.name.startswith(".")  # a swap's backup
        and not p.name.endswith((".partial", ".old"))
        and (p / "meta.json").is_file()
    )


class FeatureCache:
    """All cached splits under one folder, checked against the encoder configs given (if any)."""

    def __init__(
        self,
        cache_dir: Path,
        image_encoder_config: ImageEncoderConfig | None = None,
        text_encoder_config: TextEncoderConfig | None = None,
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.image_encoder_config = image_encoder_config
        self.text_encoder_config = text_encoder_config

    @property
    def splits(self) -> list[str]:
        return available_splits(self.cache_dir)

    def __contains__(self, split: str) -> bool:
        return split in self.splits

    def split(self, name: str, fingerprint: str | None = None) -> CachedSplit:
        return load_split(
            self.cache_dir, name, self.image_encoder_config, self.text_encoder_config, fingerprint=fingerprint
        )
