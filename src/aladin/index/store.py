"""Packed per-item vector sets (an image's regions, a caption's words), memory-mapped and looked up by item id.

A segment holds the items `first_id .. first_id + count - 1`: their rows packed one after another in one raw
file (`regions.000001.f16`, `.i8` [rows, dim], or `.pq` [rows, code bytes]), an offsets array ([count + 1], item i owns rows
offsets[i]:offsets[i+1], so items may have different numbers of rows) and, for regions, their boxes. Segments
are written once and never changed; an index version lists the segments it uses. A "pq" store's quantiser is
trained on (a sample of) its first segment, saved in its own file (`regions.000001.pqcodes.faiss`) that every
later segment's manifest entry names and reuses.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from aladin.errors import AladinError, CheckpointError
from aladin.fileio import temp_file
from aladin.index.manifest import generation_name, publish


class Float16Codec:
    """Half precision: half the size of float32, error far below what re-ranking can notice."""

    name, suffix, dtype = "float16", "f16", np.dtype(np.float16)

    def encode(self, rows: np.ndarray) -> np.ndarray:
        return rows.astype(np.float16, copy=False)

    def decode(self, stored: torch.Tensor) -> torch.Tensor:
        """Stored rows (any leading shape, zero padding allowed) → float32 (torch converts faster than numpy)."""
        return stored.float()


class Int8Codec:
    """Symmetric int8 with a per-vector scale (max |x| → 127): a quarter of float32.

    The scale is not stored: rows are unit vectors, so decoding divides by the quantised vector's own norm,
    which restores scale and unit length together, keeping the store at exactly one byte per dimension.
    """

    name, suffix, dtype = "int8", "i8", np.dtype(np.int8)

    def encode(self, rows: np.ndarray) -> np.ndarray:
        values = torch.from_numpy(rows).float()  # torch: several times faster than numpy on float16 input
        peak = values.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
        return (values * (127.0 / peak)).round_().to(torch.int8).numpy()

    def decode(self, stored: torch.Tensor) -> torch.Tensor:
        values = stored.float()
        return values / values.norm(dim=-1, keepdim=True).clamp_min(1e-12)


class PQCodec:
    """FAISS product quantisation: M sub-quantisers of nbits each, M * nbits / 8 bytes per row.

    Decoded rows are re-normalised to unit length (the codebook centroids are not). `file` names the trained
    quantiser in the index folder, shared by every segment encoded with it.
    """

    name, suffix, dtype = "pq", "pq", np.dtype(np.uint8)

    def __init__(self, pq: faiss.ProductQuantizer, file: str):
        self.pq, self.file = pq, file

    @property
    def code_size(self) -> int:
        return int(self.pq.code_size)

    @classmethod
    def train(cls, sample: np.ndarray, m: int, nbits: int, file: str) -> PQCodec:
        dim = sample.shape[1]
        m = m or max(1, dim // 8)
        if dim % m:
            raise AladinError(f"pq_m: {m} sub-quantisers do not divide the row dimension {dim}")
        if len(sample) < 2**nbits:
            raise AladinError(
                f"pq: training {2**nbits} centroids ({nbits} bits) needs at least {2**nbits} rows, "
                f"the first segment has {len(sample)}; index more items first, lower pq_nbits or use int8"
            )
        pq = faiss.ProductQuantizer(dim, m, nbits)
        pq.train(np.ascontiguousarray(sample, dtype=np.float32))
        return cls(pq, file)

    @classmethod
    def read(cls, path: Path) -> PQCodec:
        try:
            return cls(faiss.read_ProductQuantizer(str(path)), path.name)
        except RuntimeError as exc:
            raise CheckpointError(
                f"{path}: cannot read the product quantiser ({str(exc).splitlines()[0]})"
            ) from exc

    def write(self, path: Path) -> None:
        faiss.write_ProductQuantizer(self.pq, str(path))

    def encode(self, rows: np.ndarray) -> np.ndarray:
        return self.pq.compute_codes(np.ascontiguousarray(rows, dtype=np.float32))

    def decode(self, stored: torch.Tensor) -> torch.Tensor:
        codes = np.ascontiguousarray(stored.numpy()).reshape(-1, self.code_size)
        values = torch.from_numpy(self.pq.decode(codes)).view(*stored.shape[:-1], int(self.pq.d))
        return values / values.norm(dim=-1, keepdim=True).clamp_min(1e-12)


Codec = Float16Codec | Int8Codec | PQCodec

CODECS: dict[str, Float16Codec | Int8Codec] = {codec.name: codec for codec in (Float16Codec(), Int8Codec())}

#: Most rows a product quantiser is trained on (a uniform random sample of the first segment).
PQ_TRAIN_SAMPLE = 50_000


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
        quantizer: PQCodec | None = None,
        pq_m: int = 0,
        pq_nbits: int = 8,
    ):
        """For dtype "pq", `quantizer` is the store's trained one; without it this (first) segment's rows are
        spilled as float16, and `finish` trains a quantiser (`pq_m`, `pq_nbits`) on a sample of them."""
        self.codec: Codec = quantizer if dtype == "pq" and quantizer is not None else CODECS.get(dtype)  # type: ignore[assignment]
        self.directory, self.dim, self.first_id = directory, dim, first_id
        self.names = {
            "data": generation_name(stem, generation, "pq" if dtype == "pq" else CODECS[dtype].suffix),
            "offsets": generation_name(stem, generation, "offsets.npy"),
            "boxes": generation_name(stem, generation, "boxes.f16"),
        }
        self.temps: dict[str, Path] = {"data": temp_file(directory / self.names["data"])}
        self._data = open(self.temps["data"], "wb")  # closed in finish or discard
        self._spill: Any = None  # float16 rows awaiting the quantiser this segment trains
        self._pq = (pq_m, pq_nbits, generation_name(stem, generation, "pqcodes.faiss"))
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
        """Train the quantiser on a sample of the spilled rows, then encode them all into the data file."""
        self._spill.close()
        self._spill = None
        spill = self.temps.pop("spill")
        try:
            total = spill.stat().st_size // (2 * self.dim)
            rows = np.memmap(spill, np.float16, mode="r", shape=(total, self.dim)) if total else None
            if total > PQ_TRAIN_SAMPLE:
                pick = np.sort(np.random.default_rng(0).choice(total, PQ_TRAIN_SAMPLE, replace=False))
            else:
                pick = np.arange(total)
            sample = rows[pick] if rows is not None else np.zeros((0, self.dim), np.float16)
            m, nbits, file = self._pq
            self.codec = PQCodec.train(sample, m, nbits, file)
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
            "quantizer": self.codec.file if isinstance(self.codec, PQCodec) else None,
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
    data: np.ndarray  # memory-mapped [rows, dim] ([rows, code bytes] for pq)
    offsets: np.ndarray  # [count + 1]
    boxes: np.ndarray | None  # [R, 5] shared template or [rows, 5]
    boxes_shared: bool


def _open_segment(directory: Path, entry: dict[str, Any], quantizers: dict[str, PQCodec]) -> _Segment:
    codec: Codec
    if entry["dtype"] == "pq":
        name = entry.get("quantizer")
        if not name:
            raise CheckpointError(f"{directory / entry['data']}: a pq segment without a quantizer file")
        if name not in quantizers:
            quantizers[name] = PQCodec.read(directory / name)
        codec = quantizers[name]
    else:
        codec = CODECS[entry["dtype"]]
    path = directory / entry["data"]
    shape = (int(entry["rows"]), codec.code_size if isinstance(codec, PQCodec) else int(entry["dim"]))
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


class PackedStore:
    """Read side over a version's segments: `lookup(ids)` gathers only the rows of those items."""

    def __init__(self, directory: Path, entries: list[dict[str, Any]], dim: int):
        self.dim = dim
        quantizers: dict[str, PQCodec] = {}
        self.segments = sorted(
            (_open_segment(directory, e, quantizers) for e in entries), key=lambda s: s.first_id
        )
        dtypes = {s.codec.name for s in self.segments}
        if len(dtypes) > 1:
            raise CheckpointError(f"{directory}: store segments of different types {sorted(dtypes)}")
        if len(quantizers) > 1:
            raise CheckpointError(f"{directory}: store segments of different quantizers {sorted(quantizers)}")
        self.codec: Codec = self.segments[0].codec if self.segments else CODECS["float16"]
        self._width = self.codec.code_size if isinstance(self.codec, PQCodec) else dim
        self._firsts = np.array([s.first_id for s in self.segments], dtype=np.int64)

    @property
    def num_items(self) -> int:
        return sum(s.count for s in self.segments)

    @property
    def quantizer(self) -> PQCodec | None:
        """The trained product quantiser later pq segments must reuse (None for other stores, or none yet)."""
        return self.codec if isinstance(self.codec, PQCodec) else None

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
        if isinstance(self.codec, PQCodec):  # code 0 decodes to a centroid, not zero: clear the padding
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
