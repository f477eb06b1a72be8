"""Precomputed detector regions (bottom-up attention, VinVL) as the image side, as in the ALADIN paper.

Two layouts, each keyed by image id or, failing that, by the image file's stem:

* a folder with one file per image: `<key>.npz` holding `features` [N, D] (or `x`), `boxes` [N, 4] (or
  `bbox`; these aliases are what py-bottom-up-attention writes), optional scalars `image_w`, `image_h` and an
  optional string array `tags`; or `<key>.npy` holding the features with the boxes in `<key>_boxes.npy`;
* one HDF5 file with a group `/<key>` per image holding datasets `features` [N, D], `boxes` [N, 4], optional
  `tags` (strings) and optional attributes `image_w`, `image_h`.

Boxes are x1, y1, x2, y2: divided by `image_w`/`image_h` when given; taken as already normalised when all
lie in 0..1; otherwise pixels of the image file, whose size is read from its header. N may differ per image.

Object tags can join the image side the Oscar/VinVL way (`ImageEncoderConfig.tags_text_encoder`): the tags
of an image, joined by spaces, are encoded by a frozen text encoder and each word piece becomes one more
"region" with a whole-image box (`aladin.encoders.image.TagWords`, which the bundled CNN's classifier tags use
too); caches, checkpoints and indexes need no new fields.
"""

from __future__ import annotations

import os
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from aladin.config import ImageEncoderConfig
from aladin.data.dataset import ImageItem
from aladin.encoders.image import ImageEncoder, RegionBatch, TagWords, register_image_encoder
from aladin.errors import AladinError, DataError

_FEATURE_NAMES = ("features", "x")
_BOX_NAMES = ("boxes", "bbox")
_HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")


@dataclass(frozen=True)
class RegionRecord:
    """The regions of one image as stored, already checked for shape and finiteness."""

    features: np.ndarray  # [N, D] float32
    boxes: np.ndarray  # [N, 4] float64: x1, y1, x2, y2 in the stored units
    image_size: tuple[float, float] | None  # (width, height) when the file gives it
    tags: tuple[str, ...]
    source: str  # file (and key) for error messages


class PrecomputedRegions(ABC):
    """A store of per-image region features, looked up by key (image id or file stem)."""

    location: Path

    @abstractmethod
    def keys(self) -> list[str]:
        """All keys, sorted."""

    @abstractmethod
    def __contains__(self, key: str) -> bool: ...

    @abstractmethod
    def num_regions(self, key: str) -> int:
        """N of one image, reading as little as the format allows (for sizing the padded batch)."""

    @abstractmethod
    def read(self, key: str) -> RegionRecord: ...

    @abstractmethod
    def describe(self, key: str) -> str:
        """Where `key`'s features would be, for the message when they are missing."""

    @abstractmethod
    def close(self) -> None:
        """Release open files."""

    def key_for(self, item: ImageItem | str) -> str:
        """The key of an image: its id, else its file stem; a DataError naming both when neither is stored."""
        image_id = item.image_id if isinstance(item, ImageItem) else item
        candidates = [image_id]
        if isinstance(item, ImageItem):
            candidates.append(Path(item.path).stem)
        candidates = [c for c in dict.fromkeys(candidates) if c and "/" not in c]
        for key in candidates:
            if key in self:
                return key
        looked = ", ".join(self.describe(key) for key in candidates) or "no usable key"
        raise DataError(f"{self.location}: no region features for image {image_id!r} (looked for {looked})")


class RegionFolder(PrecomputedRegions):
    """`<key>.npz`, or `<key>.npy` + `<key>_boxes.npy`, per image in one folder."""

    def __init__(self, folder: str | Path) -> None:
        self.location = Path(folder)
        if not self.location.is_dir():
            raise DataError(f"{self.location}: region feature folder not found")
        self._files: dict[str, Path] = {}
        for name in sorted(entry.name for entry in os.scandir(self.location) if entry.is_file()):
            if name.endswith("_boxes.npy") or not name.endswith((".npz", ".npy")):
                continue
            key = name[:-4]
            if key in self._files:
                raise DataError(
                    f"{self.location}: both {self._files[key].name} and {name} hold the features of {key!r}"
                )
            self._files[key] = self.location / name

    def keys(self) -> list[str]:
        return list(self._files)

    def __contains__(self, key: str) -> bool:
        return key in self._files

    def describe(self, key: str) -> str:
        return f"{key}.npz or {key}.npy"

    def close(self) -> None:
        """Nothing to release: each file is opened only while it is read."""

    def num_regions(self, key: str) -> int:
        path = self._files[key]
        try:
            if path.suffix == ".npy":
                shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
            else:
                shape = _npz_member_shape(path)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise DataError(f"{path}: cannot read region features ({_reason(exc)})") from exc
        if shape is None:  # no features member: read() names the missing field
            return self.read(key).features.shape[0]
        return _check_features_shape(shape, str(path))[0]

    def read(self, key: str) -> RegionRecord:
        path = self._files[key]
        if path.suffix == ".npz":
            return _read_npz(path)
        features = _load_npy(path, "features")
        boxes_path = path.with_name(f"{key}_boxes.npy")
        if not boxes_path.is_file():
            raise DataError(f"{boxes_path}: field 'boxes': file not found (the boxes of {path.name})")
        boxes = _load_npy(boxes_path, "boxes")
        return _record(features, boxes, None, (), str(path))


class RegionHDF5(PrecomputedRegions):
    """One HDF5 file: `/<key>/features`, `/<key>/boxes`, optional `/<key>/tags`, attrs `image_w`/`image_h`."""

    def __init__(self, path: str | Path) -> None:
        self.location = Path(path)
        try:
            import h5py
        except ModuleNotFoundError as exc:
            raise DataError(
                f"{self.location}: reading HDF5 region features needs h5py: pip install h5py"
            ) from exc
        if not self.location.is_file():
            raise DataError(f"{self.location}: region feature file not found")
        try:
            self._file = h5py.File(self.location, "r")
        except OSError as exc:
            raise DataError(f"{self.location}: not a readable HDF5 file ({_reason(exc)})") from exc
        self._group_type = h5py.Group

    def keys(self) -> list[str]:
        return sorted(key for key, value in self._file.items() if isinstance(value, self._group_type))

    def __contains__(self, key: str) -> bool:
        return "/" not in key and isinstance(self._file.get(key), self._group_type)

    def describe(self, key: str) -> str:
        return f"group /{key}"

    def close(self) -> None:
        self._file.close()

    def _dataset(self, key: str, name: str) -> Any:
        where = f"{self.location}:/{key}"
        if name not in self._file[key]:
            raise DataError(f"{where}: missing field '{name}' (expected dataset /{key}/{name})")
        return self._file[key][name]

    def num_regions(self, key: str) -> int:
        shape = self._dataset(key, "features").shape
        return _check_features_shape(shape, f"{self.location}:/{key}")[0]

    def read(self, key: str) -> RegionRecord:
        where = f"{self.location}:/{key}"
        group = self._file[key]
        features = np.asarray(self._dataset(key, "features")[()])
        boxes = np.asarray(self._dataset(key, "boxes")[()])
        size = _image_size_fields(group.attrs.get("image_w"), group.attrs.get("image_h"), where)
        tags: tuple[str, ...] = ()
        if "tags" in group:
            try:
                values = np.asarray(group["tags"].asstr()[()])
            except (TypeError, ValueError) as exc:
                raise DataError(f"{where}: field 'tags': expected a 1-D dataset of strings ({exc})") from exc
            tags = _tags(values, where)
        return _record(features, boxes, size, tags, where)


def open_regions(path: str | Path) -> PrecomputedRegions:
    """A folder of per-image files or an HDF5 file (.h5/.hdf5/.hdf), by what `path` is."""
    path = Path(path)
    if path.is_dir():
        return RegionFolder(path)
    if path.suffix.lower() in _HDF5_SUFFIXES:
        return RegionHDF5(path)
    if not path.exists():
        raise DataError(f"{path}: region features not found")
    raise DataError(
        f"{path}: expected a folder of .npz/.npy files or an HDF5 file ({', '.join(_HDF5_SUFFIXES)})"
    )


class PrecomputedRegionEncoder(ImageEncoder):
    """Serves stored detector regions as an `ImageEncoder`; takes dataset items, not pictures.

    Batches have a fixed width so that every batch written to the feature cache has the same shape:
    `max_regions` when set (images with more regions keep their first `max_regions`, which detectors order by
    confidence), else the largest N in the store. Shorter images are zero-padded with `region_mask` False.
    With object tags, `max_tag_tokens` + 2 tag slots follow the region slots ([CLS]/[SEP] and padding masked).
    """

    def __init__(
        self,
        cfg: ImageEncoderConfig,
        source: PrecomputedRegions | str | Path,
        max_regions: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        if max_regions < 0:
            raise AladinError(
                f"image_encoder.max_regions: must be 0 (largest N) or positive, got {max_regions}"
            )
        self.config = cfg
        self.source = source if isinstance(source, PrecomputedRegions) else open_regions(source)
        self.device = torch.device(device)
        keys = self.source.keys()
        if not keys:
            raise DataError(f"{self.source.location}: no region features found")
        self._region_dim = self.source.read(keys[0]).features.shape[1]
        self._region_slots = max_regions or None
        self._tags = TagWords(cfg, self._region_dim, self.device) if cfg.tags_text_encoder else None

    @property
    def feature_dim(self) -> int:
        return self._tags.feature_dim if self._tags else self._region_dim

    @property
    def region_slots(self) -> int:
        """Detector regions per batch row; without `max_regions` the first call reads every image's N
        (headers only)."""
        if self._region_slots is None:
            self._region_slots = max(self.source.num_regions(key) for key in self.source.keys())
        return self._region_slots

    @property
    def num_regions(self) -> int:
        """The batch width: the region slots, then the tag slots when tags are on."""
        return self.region_slots + (self._tags.slots if self._tags else 0)

    def record_of(self, item: ImageItem | str) -> RegionRecord:
        """The stored regions of one image, checked to have the store's feature width."""
        record = self.source.read(self.source.key_for(item))
        if record.features.shape[1] != self._region_dim:
            raise DataError(
                f"{record.source}: field 'features': expected {self._region_dim} values per region "
                f"(like the other images), got {record.features.shape[1]}"
            )
        return record

    def regions_of(
        self, item: ImageItem | str, record: RegionRecord | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Features [N, D] float32 and normalised boxes [N, 5] (x1, y1, x2, y2, area) of one image (from
        `record` when the caller has read it already)."""
        image_path = Path(item.path) if isinstance(item, ImageItem) else None
        record = record or self.record_of(item)
        return record.features, normalised_boxes(record, image_path)

    def tags_for(self, item: ImageItem | str) -> tuple[str, ...]:
        """The detector's object tags of one image (empty when the store has none)."""
        return self.record_of(item).tags

    def encode_items(self, items: Sequence[ImageItem]) -> RegionBatch:
        """Regions of `items`, padded (or cut) to `region_slots`, then their tags' word pieces when tags are on."""
        if not items:
            raise AladinError("encode: no images given")
        records = [self.record_of(item) for item in items]  # each file read once, for regions and tags
        regions = [self.regions_of(item, record) for item, record in zip(items, records, strict=True)]
        batch = collate_regions(regions, self.region_slots)
        if self._tags is not None:
            batch = self._tags.append(batch, [record.tags for record in records])
        return batch.to(self.device)

    def encode(self, images: list[Image.Image]) -> RegionBatch:
        raise AladinError(
            "the 'precomputed' image encoder serves stored region features of dataset images and cannot "
            "encode new pictures; pass dataset items to encode_items(), or use a CNN image encoder"
        )


def collate_regions(
    regions: Sequence[tuple[np.ndarray, np.ndarray]], width: int | None = None
) -> RegionBatch:
    """(features [N_i, D], boxes [N_i, 5]) per image → a RegionBatch padded to `width` (default: the largest N_i)."""
    width = width or max(features.shape[0] for features, _ in regions)
    dim = regions[0][0].shape[1]
    out = torch.zeros(len(regions), width, dim)
    boxes = torch.zeros(len(regions), width, 5)
    mask = torch.zeros(len(regions), width, dtype=torch.bool)
    for i, (features, box) in enumerate(regions):
        n = min(features.shape[0], width)
        out[i, :n] = torch.from_numpy(np.ascontiguousarray(features[:n], dtype=np.float32))
        boxes[i, :n] = torch.from_numpy(np.ascontiguousarray(box[:n], dtype=np.float32))
        mask[i, :n] = True
    return RegionBatch(out, boxes, mask)


def normalised_boxes(record: RegionRecord, image_path: Path | None = None) -> np.ndarray:
    """Stored boxes → [N, 5] float32 x1, y1, x2, y2, area in 0..1 (see the module docstring for the units)."""
    boxes = record.boxes
    size = record.image_size
    if size is None and (boxes.min() < 0 or boxes.max() > 1):
        if image_path is None:
            raise DataError(
                f"{record.source}: field 'boxes': values up to {boxes.max():g} look like pixels, but there is "
                "no image_w/image_h and no image file to read the size from"
            )
        size = _image_file_size(image_path, record.source)
    x1, y1, x2, y2 = (boxes / np.array(size * 2 if size else (1.0,) * 4)).T
    bad = np.flatnonzero((x2 < x1) | (y2 < y1))
    if bad.size:
        row = int(bad[0])
        raise DataError(
            f"{record.source}: field 'boxes': row {row} is {boxes[row].tolist()}, expected x1, y1, x2, y2 "
            "with x1 <= x2 and y1 <= y2"
        )
    x1, y1, x2, y2 = (
        np.clip(v, 0.0, 1.0) for v in (x1, y1, x2, y2)
    )  # detectors overshoot the border a little
    return np.stack([x1, y1, x2, y2, (x2 - x1) * (y2 - y1)], axis=1).astype(np.float32)


def _record(
    features: np.ndarray,
    boxes: np.ndarray,
    size: tuple[float, float] | None,
    tags: tuple[str, ...],
    where: str,
) -> RegionRecord:
    _check_numeric(features, "features", where)
    n, _ = _check_features_shape(features.shape, where)
    _check_numeric(boxes, "boxes", where)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise DataError(
            f"{where}: field 'boxes': expected an [N, 4] array (x1, y1, x2, y2), got shape {boxes.shape}"
        )
    if boxes.shape[0] != n:
        raise DataError(
            f"{where}: field 'boxes': {boxes.shape[0]} boxes for {n} feature rows (expected one each)"
        )
    features = features.astype(np.float32)
    for name, values in (("features", features), ("boxes", boxes)):
        if not np.isfinite(values).all():
            raise DataError(f"{where}: field '{name}': contains NaN or infinite values")
    return RegionRecord(features, boxes.astype(np.float64), size, tags, where)


def _check_features_shape(shape: tuple[int, ...], where: str) -> tuple[int, int]:
    if len(shape) != 2:
        raise DataError(f"{where}: field 'features': expected a 2-D [N, D] array, got shape {tuple(shape)}")
    if shape[0] < 1 or shape[1] < 1:
        raise DataError(f"{where}: field 'features': expected at least one region, got shape {tuple(shape)}")
    return int(shape[0]), int(shape[1])


def _check_numeric(values: np.ndarray, name: str, where: str) -> None:
    if values.dtype.kind not in "fiu":
        raise DataError(f"{where}: field '{name}': expected numbers, got dtype {values.dtype}")


def _read_npz(path: Path) -> RegionRecord:
    where = str(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            features = _npz_member(npz, _FEATURE_NAMES, where)
            boxes = _npz_member(npz, _BOX_NAMES, where)
            width, height, tag_values = (
                _npz_optional(npz, (name,), where) for name in ("image_w", "image_h", "tags")
            )
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{where}: cannot read region features ({_reason(exc)})") from exc
    size = _image_size_fields(width, height, where)
    tags = _tags(tag_values, where) if tag_values is not None else ()
    return _record(features, boxes, size, tags, where)


def _npz_member(npz: Any, names: tuple[str, ...], where: str) -> np.ndarray:
    """The first of `names` present (aliases), or a DataError naming the field."""
    value = _npz_optional(npz, names, where)
    if value is None:
        found = ", ".join(sorted(npz.files)) or "nothing"
        raise DataError(f"{where}: missing field '{names[0]}' (found: {found})")
    return value


def _npz_optional(npz: Any, names: tuple[str, ...], where: str) -> np.ndarray | None:
    name = next((n for n in names if n in npz.files), None)
    if name is None:
        return None
    try:
        return npz[name]
    except ValueError as exc:  # e.g. an object array, which would need pickle
        raise DataError(f"{where}: field '{name}': cannot read ({_reason(exc)})") from exc


def _npz_member_shape(path: Path) -> tuple[int, ...] | None:
    """Shape of the features array of an .npz from its header alone, None when there is no such member."""
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        member = next((f"{n}.npy" for n in _FEATURE_NAMES if f"{n}.npy" in names), None)
        if member is None:
            return None
        with archive.open(member) as handle:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                return np.lib.format.read_array_header_1_0(handle)[0]
            return np.lib.format.read_array_header_2_0(handle)[0]


def _load_npy(path: Path, name: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: field '{name}': cannot read ({_reason(exc)})") from exc


def _image_size_fields(width: Any, height: Any, where: str) -> tuple[float, float] | None:
    if width is None and height is None:
        return None
    values = []
    for name, value in (("image_w", width), ("image_h", height)):
        if value is None:
            raise DataError(f"{where}: missing field '{name}' (image_w and image_h come together)")
        array = np.asarray(value)
        if (
            array.size != 1
            or array.dtype.kind not in "fiu"
            or not np.isfinite(array).all()
            or array.item() <= 0
        ):
            raise DataError(f"{where}: field '{name}': expected a positive number, got {value!r:.60}")
        values.append(float(array.item()))
    return values[0], values[1]


def _tags(values: np.ndarray, where: str) -> tuple[str, ...]:
    if values.ndim != 1 or values.dtype.kind not in "USO":
        raise DataError(
            f"{where}: field 'tags': expected a 1-D array of strings, got dtype {values.dtype} shape {values.shape}"
        )
    return tuple(v.decode() if isinstance(v, bytes) else str(v) for v in values.tolist())


def _image_file_size(path: Path, where: str) -> tuple[float, float]:
    """Pixel size from the image header, for pixel boxes stored without it."""
    try:
        with Image.open(path) as img:
            return float(img.width), float(img.height)
    except (OSError, ValueError) as exc:
        raise DataError(
            f"{where}: field 'boxes': pixel boxes without image_w/image_h, and the size of {path} "
            f"cannot be read ({_reason(exc)})"
        ) from exc


def _reason(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _build(cfg: ImageEncoderConfig, device: torch.device) -> ImageEncoder:
    # `features_path` / `max_regions` are the ImageEncoderConfig fields this encoder needs.
    features_path = cfg.features_path
    if not features_path:
        raise AladinError(
            "image_encoder.features_path: the 'precomputed' image encoder needs the folder or HDF5 file "
            "of region features"
        )
    return PrecomputedRegionEncoder(cfg, features_path, cfg.max_regions, device)


register_image_encoder("precomputed", _build)
