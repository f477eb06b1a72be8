"""Packed per-item vector sets (an image's regions, a caption's words), memory-mapped and looked up by item id.

A segment holds the items `first_id .. first_id + count - 1`: their rows packed one after another in one raw
file (`regions.000001.f16`, `.i8` [rows, dim], or `.pq`, `.rq2`, `.rq1` [rows, code bytes]), an offsets array ([count + 1], item i owns rows
offsets[i]:offsets[i+1], so items may have different numbers of rows) and, for regions, their boxes. Segments
are written once and never changed; an index version lists the segments it uses. A trained store's codec ("pq",
"residual2", "residual1"; see `aladin.index.codecs`) is trained on (a sample of) its first segment, saved in its
own file (`regions.000001.pqcodes.faiss`, `.rqcodes.npz`) that every later segment's manifest entry names and
reuses.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aladin.errors import AladinError, CheckpointError
from aladin.fileio import temp_file
from aladin.index.codecs import (
    CODECS,
    TRAINED,
    Codec,
    TrainedCodec,
    check_trainable,
    data_suffix,
    read_codec,
    train_codec,
)
from aladin.index.manifest import generation_name, publish

#: Most rows a trained codec (product quantiser, residual centroids) is trained on: a uniform random sample of
#: the first segment.
TRAIN_SAMPLE = 50_000


#: Rows per appended chunk on which the reconstruction error of a lossy store is measured.
STATS_SAMPLE = 4096


@dataclass
class ReconstructionStats:
    """How far decoded rows are from the originals (cosine and L2), accumulated while writing."""

    rows: int = 0
    cosine_sum: float = 0.0
    min_cosine: float = 1.0
    l2_sum: float = 0.0

    def update(self, original: np.ndarray, decoded: np.ndarray) -> None:
        norms = np.maximum(np.linalg.norm(original, axis=1) * np.linalg.norm(decoded, axis=1), 1e-12)
        cosine = (original * decoded).sum(axis=1) / norms
        self.rows += len(original)
        self.cosine_sum += float(cosine.sum())
        self.min_cosine = min(self.min_cosine, float(cosine.min(initial=1.0)))
        self.l2_sum += float(np.linalg.norm(original - decoded, axis=1).sum())

    def to_json(self) -> dict[str, float]:
        rows = max(self.rows, 1)
        return {
            "mean_cosine": self.cosine_sum / rows,
            "min_cosine": self.min_cosine,
            "mean_l2_error": self.l2_sum / rows,
        }


@dataclass
class EncodedChunk:
    """Model outputs for a run of items, in the store's packed layout (only real regions / scored words)."""

    global_vectors: np.ndarray  # [n, G] float32, L2-normalised
    rows: np.ndarray  # [sum(counts), E], L2-normalised
    counts: np.ndarray  # [n] int64: rows per item
    boxes: np.ndarray | None = None  # [sum(counts), 5] for regions; None for words

    def __len__(self) -> int:
        return len(self.counts)

    def save(self, path: Path) -> None:
        arrays = {"global_vectors": self.global_vectors, "rows": self.rows, "counts": self.counts}
        if self.boxes is not None:
            arrays["boxes"] = self.boxes
        with open(path, "wb") as handle:
            np.savez(handle, **arrays)

    @classmethod
    def load(cls, path: Path) -> EncodedChunk:
        with np.load(path) as data:
            boxes = data["boxes"] if "boxes" in data.files else None
            return cls(data["global_vectors"], data["rows"], data["counts"], boxes)


class SegmentWriter:
    """Streams one segment into temporary files; `finish` publishes them, `discard` removes them."""

    def __init__(
        self,
        directory: Path,
        stem: str,
        generation: int,
        first_id: int,
        dtype: str,
        dim: int,
        quantizer: TrainedCodec | None = None,
        pq_m: int = 0,
        pq_nbits: int = 8,
        residual_centroids: int = 0,
    ):
        """For a trained dtype ("pq", "residual2", "residual1"), `quantizer` is the store's trained codec;
        without it this (first) segment's rows are spilled as float16, and `finish` trains one (`pq_m`,
        `pq_nbits`; `residual_centroids`) on a sample of them."""
        self.codec: Codec = quantizer if dtype in TRAINED and quantizer is not None else CODECS.get(dtype)  # type: ignore[assignment]
        if self.codec is None:
            check_trainable(dtype, dim, pq_m)
        self.directory, self.dim, self.first_id, self.dtype = directory, dim, first_id, dtype
        self.names = {
            "data": generation_name(stem, generation, data_suffix(dtype)),
            "offsets": generation_name(stem, generation, "offsets.npy"),
            "boxes": generation_name(stem, generation, "boxes.f16"),
        }
        self.temps: dict[str, Path] = {"data": temp_file(directory / self.names["data"])}
        self._data = open(self.temps["data"], "wb")  # closed in finish or discard
        self._spill: Any = None  # float16 rows awaiting the quantiser this segment trains
        self._training = (pq_m, pq_nbits, residual_centroids)
        self._codebook = generation_name(stem, generation, TRAINED[dtype][1]) if dtype in TRAINED else ""
        if self.codec is None:
            self.temps["spill"] = temp_file(directory / generation_name(stem, generation, "spill.f16"))
            self._spill = open(self.temps["spill"], "wb")  # closed in finish or discard
        self._hash = hashlib.sha256()
        self.counts: list[np.ndarray] = []
        self.stats = ReconstructionStats() if dtype != "float16" else None
        # Boxes are stored once per segment while every item has the same ones (grid encoders).
        self.box_template: np.ndarray | None = None
        self._boxes_file: Any = None
        self.has_boxes: bool | None = None

    @property
    def num_items(self) -> int:
        return int(sum(len(c) for c in self.counts))

    def append(self, chunk: EncodedChunk) -> None:
        rows = np.asarray(chunk.rows)
        counts = np.asarray(chunk.counts, dtype=np.int64)
        if rows.ndim != 2 or rows.shape[1] != self.dim or int(counts.sum()) != len(rows):
            raise AladinError(
                f"store: expected {int(counts.sum())} rows of dim {self.dim}, got shape {tuple(rows.shape)}"
            )
        if self.has_boxes is None:
            self.has_boxes = chunk.boxes is not None
        elif self.has_boxes != (chunk.boxes is not None):
            raise AladinError("store: every chunk of a segment must have boxes, or none")
        if self._spill is not None:
            self._spill.write(rows.astype(np.float16).tobytes())
        else:
            self._write_rows(rows)
        if chunk.boxes is not None:
            self._append_boxes(np.asarray(chunk.boxes, dtype=np.float16), counts)
        self.counts.append(counts)

    def _write_rows(self, rows: np.ndarray) -> None:
        encoded = self.codec.encode(rows)
        if self.stats is not None:  # on evenly spaced rows: exact for small chunks, cheap for large ones
            sample = slice(None, None, max(1, len(rows) // STATS_SAMPLE))
            decoded = self.codec.decode(torch.from_numpy(encoded[sample])).numpy()
            self.stats.update(rows[sample].astype(np.float32), decoded)
        data = encoded.tobytes()
        self._data.write(data)
        self._hash.update(data)

    def _train_and_encode_spill(self) -> None:
        """Train the codec on a sample of the spilled rows, then encode them all into the data file."""
        self._spill.close()
        self._spill = None
        spill = self.temps.pop("spill")
        try:
            total = spill.stat().st_size // (2 * self.dim)
            rows = np.memmap(spill, np.float16, mode="r", shape=(total, self.dim)) if total else None
            _, pq_nbits, centroids = self._training
            # At least as many rows as centroids to train (pq up to 2**16, residual up to 65536 by the settings)
            size = max(TRAIN_SAMPLE, 2**pq_nbits if self.dtype == "pq" else centroids)
            if total > size:
                pick = np.sort(np.random.default_rng(0).choice(total, size, replace=False))
            else:
                pick = np.arange(total)
            sample = rows[pick] if rows is not None else np.zeros((0, self.dim), np.float16)
            file = self._codebook
            self.codec = train_codec(self.dtype, sample, file, *self._training)
            for start in range(0, total, 65536):
                self._write_rows(np.asarray(rows[start : start + 65536], dtype=np.float32))  # type: ignore[index]
            del rows
        finally:
            spill.unlink(missing_ok=True)
        self.names["quantizer"] = file
        self.temps["quantizer"] = temp_file(self.directory / file)
        self.codec.write(self.temps["quantizer"])

    def _append_boxes(self, boxes: np.ndarray, counts: np.ndarray) -> None:
        if not len(counts):
            return
        if self.num_items == 0:
            self.box_template = boxes[: counts[0]].copy()
        template = self.box_template
        if template is not None and np.array_equal(boxes, np.tile(template, (len(counts), 1))):
            return
        if (
            self._boxes_file is None
        ):  # items differ from now on: write out the boxes shared so far, then stream
            self.temps["boxes"] = temp_file(self.directory / self.names["boxes"])
            self._boxes_file = open(self.temps["boxes"], "wb")  # closed in finish or discard
            if template is not None:
                self._boxes_file.write(np.tile(template, (self.num_items, 1)).tobytes())
            self.box_template = None
        self._boxes_file.write(boxes.tobytes())

    def finish(self) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """Publish the segment's files; returns its manifest entry and the file records."""
        if self._spill is not None:
            try:
                self._train_and_encode_spill()
            except BaseException:
                self.discard()
                raise
        self._data.close()
        counts = np.concatenate(self.counts) if self.counts else np.zeros(0, np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.temps["offsets"] = temp_file(self.directory / self.names["offsets"])
        with open(self.temps["offsets"], "wb") as handle:  # a path would get ".npy" appended
            np.save(handle, offsets)
        if self.box_template is not None:
            self.temps["boxes"] = temp_file(self.directory / self.names["boxes"])
            self.box_template.tofile(self.temps["boxes"])
        elif self._boxes_file is not None:
            self._boxes_file.close()
        files = {
            self.names[key]: publish(
                tmp, self.directory / self.names[key], self._hash.hexdigest() if key == "data" else None
            )
            for key, tmp in self.temps.items()
        }
        entry = {
            "first_id": self.first_id,
            "count": len(counts),
            "rows": int(offsets[-1]),
            "dim": self.dim,
            "dtype": self.codec.name,
            "data": self.names["data"],
            "quantizer": getattr(self.codec, "file", None),
            "offsets": self.names["offsets"],
            "boxes": self.names["boxes"] if "boxes" in self.temps else None,
            "boxes_shared": self.box_template is not None,
            "reconstruction": self.stats.to_json() if self.stats is not None else None,
        }
        return entry, files

    def discard(self) -> None:
        self._data.close()
        if self._spill is not None:
            self._spill.close()
        if self._boxes_file is not None:
            self._boxes_file.close()
        for tmp in self.temps.values():
            tmp.unlink(missing_ok=True)


@dataclass
class _Segment:
    first_id: int
    count: int
    codec: Codec
    data: np.ndarray  # memory-mapped [rows, dim] ([rows, code bytes] for trained codecs)
    offsets: np.ndarray  # [count + 1]
    boxes: np.ndarray | None  # [R, 5] shared template or [rows, 5]
    boxes_shared: bool


def _open_segment(directory: Path, entry: dict[str, Any], quantizers: dict[str, TrainedCodec]) -> _Segment:
    codec: Codec
    if entry["dtype"] in TRAINED:
        name = entry.get("quantizer")
        if not name:
            raise CheckpointError(
                f"{directory / entry['data']}: a {entry['dtype']} segment without a quantizer file"
            )
        if name not in quantizers:
            quantizers[name] = read_codec(directory / name, entry["dtype"], int(entry["dim"]))
        codec = quantizers[name]
    else:
        codec = CODECS[entry["dtype"]]
    path = directory / entry["data"]
    shape = (int(entry["rows"]), _width(codec, int(entry["dim"])))
    expected = shape[0] * shape[1] * codec.dtype.itemsize
    if shape[0] and path.is_file() and path.stat().st_size != expected:
        # e.g. a codebook of the same codec and dimension but another code size (centroid ids or none, pq_m)
        raise CheckpointError(
            f"{path}: {path.stat().st_size} bytes, but {shape[0]} rows of {shape[1]} {codec.dtype} values "
            f"({codec.name}) are {expected} bytes: the segment does not match its codebook or is truncated"
        )
    data = np.memmap(path, codec.dtype, mode="r", shape=shape) if shape[0] else np.zeros(shape, codec.dtype)
    offsets = np.load(directory / entry["offsets"])
    if offsets.shape != (entry["count"] + 1,) or int(offsets[-1]) != shape[0]:
        raise CheckpointError(f"{directory / entry['offsets']}: does not describe {path}")
    boxes = None
    if entry["boxes"]:
        boxes = np.fromfile(directory / entry["boxes"], dtype=np.float16).reshape(-1, 5)
    return _Segment(
        int(entry["first_id"]), int(entry["count"]), codec, data, offsets, boxes, bool(entry["boxes_shared"])
    )


def _width(codec: Codec, dim: int) -> int:
    """Stored values per row: code bytes for a trained codec, else one per dimension."""
    return codec.code_size if isinstance(codec, TrainedCodec) else dim


class PackedStore:
    """Read side over a version's segments: `lookup(ids)` gathers only the rows of those items."""

    def __init__(self, directory: Path, entries: list[dict[str, Any]], dim: int):
        self.dim = dim
        quantizers: dict[str, TrainedCodec] = {}
        self.segments = sorted(
            (_open_segment(directory, e, quantizers) for e in entries), key=lambda s: s.first_id
        )
        dtypes = {s.codec.name for s in self.segments}
        if len(dtypes) > 1:
            raise CheckpointError(f"{directory}: store segments of different types {sorted(dtypes)}")
        if len(quantizers) > 1:
            raise CheckpointError(f"{directory}: store segments of different quantizers {sorted(quantizers)}")
        self.codec: Codec = self.segments[0].codec if self.segments else CODECS["float16"]
        self._width = _width(self.codec, dim)
        self._firsts = np.array([s.first_id for s in self.segments], dtype=np.int64)

    @property
    def num_items(self) -> int:
        return sum(s.count for s in self.segments)

    @property
    def quantizer(self) -> TrainedCodec | None:
        """The trained codec later segments must reuse (None for untrained stores, or none yet)."""
        return self.codec if isinstance(self.codec, TrainedCodec) else None

    @property
    def nbytes(self) -> int:
        return sum(s.data.nbytes + s.offsets.nbytes for s in self.segments)

    def _locate(self, ids: np.ndarray) -> np.ndarray:
        where = np.searchsorted(self._firsts, ids, side="right") - 1
        ok = where >= 0
        ok[ok] &= ids[ok] < self._firsts[where[ok]] + np.array([self.segments[i].count for i in where[ok]])
        if not ok.all():
            raise AladinError(f"store: unknown item id {int(ids[~ok][0])}")
        return where

    def lookup(self, ids: np.ndarray | list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Items `ids` as padded float32 rows [n, Rmax, dim] and a mask [n, Rmax] (True = real row)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        where = self._locate(ids)
        starts = np.zeros(len(ids), np.int64)
        counts = np.zeros(len(ids), np.int64)
        for s in np.unique(where):
            pick = where == s
            segment = self.segments[s]
            local = ids[pick] - segment.first_id
            starts[pick] = segment.offsets[local]
            counts[pick] = segment.offsets[local + 1] - starts[pick]
        width = max(int(counts.max(initial=0)), 1)
        item = np.repeat(np.arange(len(ids)), counts)
        within = np.arange(len(item)) - np.repeat(np.cumsum(counts) - counts, counts)
        rows = starts[item] + within
        # Gather in the stored dtype (a plain copy), then convert the padded block in one go.
        out = np.zeros((len(ids) * width, self._width), self.codec.dtype)
        for s in np.unique(where):
            pick = where[item] == s
            out[item[pick] * width + within[pick]] = self.segments[s].data[rows[pick]]
        mask = np.zeros((len(ids), width), bool)
        mask[item, within] = True
        decoded = self.codec.decode(torch.from_numpy(out).view(len(ids), width, self._width))
        mask_t = torch.from_numpy(mask)
        if isinstance(self.codec, TrainedCodec):  # code 0 decodes to a centroid, not zero: clear the padding
            decoded = decoded.masked_fill(~mask_t[..., None], 0.0)
        return decoded, mask_t

    def boxes(self, item_id: int) -> np.ndarray | None:
        """Boxes [R, 5] of one item's regions (x1, y1, x2, y2, area in 0..1), or None when none were stored."""
        segment = self.segments[int(self._locate(np.array([item_id]))[0])]
        if segment.boxes is None:
            return None
        if segment.boxes_shared:
            return segment.boxes.astype(np.float32)
        local = item_id - segment.first_id
        return segment.boxes[segment.offsets[local] : segment.offsets[local + 1]].astype(np.float32)
