"""How a region/word store keeps its rows: float16, int8, or a trained codec (product quantisation, or a
PLAID-style centroid id plus quantised residual) whose codebook is saved in its own file in the index folder.

Every codec encodes L2-normalised float rows [n, dim] into a fixed number of `dtype` values per row and decodes
stored rows (any leading shape) back to float32; see `aladin.index.store` for the files they are packed into.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import faiss
import numpy as np
import torch

from aladin.errors import AladinError, CheckpointError


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

    name, dtype = "pq", np.dtype(np.uint8)

    def __init__(self, pq: faiss.ProductQuantizer, file: str):
        self.pq, self.file = pq, file

    @property
    def code_size(self) -> int:
        return int(self.pq.code_size)

    @property
    def dim(self) -> int:
        return int(self.pq.d)

    @classmethod
    def train(cls, sample: np.ndarray, m: int, nbits: int, file: str) -> PQCodec:
        dim = sample.shape[1]
        m = m or max(1, dim // 8)
        check_trainable("pq", dim, m)
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


class ResidualCodec:
    """PLAID-style (ColBERTv2) compression: a row is the id of its nearest k-means centroid (2 bytes) plus its
    residual from that centroid quantised to `nbits` per dimension, 2 + dim * nbits / 8 bytes (66 at 256-d and
    2 bits, 34 at 1 bit). Bucket cut-offs are the residuals' quantiles per dimension; a bucket decodes to the
    mean residual that fell into it on the training sample. With a single centroid (the mean row) no id is
    stored: plain per-dimension quantile quantisation at dim * nbits / 8 bytes.

    Decoded rows are re-normalised to unit length. `file` names the trained codebook (float16 centroids,
    cut-offs, bucket values) in the index folder, shared by every segment encoded with it.
    """

    dtype = np.dtype(np.uint8)

    def __init__(self, centroids: np.ndarray, cutoffs: np.ndarray, buckets: np.ndarray, file: str):
        """`centroids` [K, dim] float16, `cutoffs` [dim, 2**nbits - 1] and `buckets` [dim, 2**nbits] float32."""
        self.centroids, self.cutoffs, self.buckets, self.file = centroids, cutoffs, buckets, file
        self.nbits = int(np.log2(buckets.shape[1]))
        self.name = f"residual{self.nbits}"
        self.id_bytes = 2 if len(centroids) > 1 else 0
        self._assign = faiss.IndexFlatL2(self.dim)
        self._assign.add(np.ascontiguousarray(centroids, dtype=np.float32))
        # Decoding looks each code byte up whole (PLAID's trick): row p * 256 + v of the table holds the residual
        # values of the dimensions packed in byte p when it reads v.
        per_byte = 8 // self.nbits
        values = np.arange(256)[:, None] >> (np.arange(per_byte) * self.nbits) & (
            2**self.nbits - 1
        )  # [256, per]
        dims = np.arange(self.dim).reshape(-1, 1, per_byte)  # [bytes, 1, per]
        self._table = torch.from_numpy(buckets[dims, values[None]].reshape(-1, per_byte).astype(np.float32))
        self._byte_offsets = torch.arange(self.dim // per_byte) * 256
        self._centroids = torch.from_numpy(centroids.astype(np.float32))

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    @property
    def code_size(self) -> int:
        return self.id_bytes + self.dim * self.nbits // 8

    @staticmethod
    def default_centroids(rows: int) -> int:
        """PLAID's choice for `rows` training rows, 2 ** floor(log2(16 * sqrt(rows))), at most `rows` and 2**16."""
        rows = max(rows, 1)
        return 2 ** min(16, int(np.log2(16 * np.sqrt(rows))), int(np.log2(rows)))

    @classmethod
    def train(cls, sample: np.ndarray, nbits: int, centroids: int, file: str) -> ResidualCodec:
        """k-means (`centroids`, 0: `default_centroids`) on `sample`, then quantiles and bucket means of the
        residuals per dimension."""
        n, dim = sample.shape
        check_trainable(f"residual{nbits}", dim)
        k = centroids or cls.default_centroids(n)
        if n < k:
            raise AladinError(
                f"residual: training {k} centroids needs at least {k} rows, the first segment has {n}; "
                "index more items first, lower residual_centroids or use int8"
            )
        x = np.ascontiguousarray(sample, dtype=np.float32)
        if k > 1:  # few rows per centroid are PLAID's choice: silence FAISS's warning about them
            kmeans = faiss.Kmeans(dim, k, niter=20, seed=0, min_points_per_centroid=1)
            kmeans.train(x)
            means = kmeans.centroids
        else:
            means = x.mean(axis=0, keepdims=True)
        levels = 2**nbits
        untrained = cls(
            means.astype(np.float16),
            np.zeros((dim, levels - 1), np.float32),
            np.zeros((dim, levels), np.float32),
            file,
        )
        residual = untrained.residuals(x)[1]
        cutoffs = np.quantile(residual, np.arange(1, levels) / levels, axis=0).T.astype(np.float32)
        codes = (residual[:, :, None] > cutoffs[None]).sum(axis=2) + np.arange(dim) * levels
        sums = np.bincount(codes.ravel(), weights=residual.ravel(), minlength=dim * levels)
        counts = np.bincount(codes.ravel(), minlength=dim * levels)
        edges = np.concatenate(
            [cutoffs[:, :1], cutoffs], axis=1
        ).ravel()  # an empty bucket decodes to its edge
        buckets = np.where(counts > 0, sums / np.maximum(counts, 1), edges).reshape(dim, levels)
        return cls(untrained.centroids, cutoffs, buckets.astype(np.float32), file)

    def residuals(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each row's nearest centroid id and its residual from that centroid."""
        x = np.ascontiguousarray(rows, dtype=np.float32)
        ids = self._assign.search(x, 1)[1][:, 0] if self.id_bytes else np.zeros(len(x), np.int64)
        return ids, x - self._centroids.numpy()[ids]

    @classmethod
    def read(cls, path: Path) -> ResidualCodec:
        try:
            with np.load(path, allow_pickle=False) as data:
                centroids, cutoffs, buckets = data["centroids"], data["cutoffs"], data["buckets"]
                _check_codebook(centroids, cutoffs, buckets)
                return cls(centroids, cutoffs, buckets, path.name)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise CheckpointError(f"{path}: cannot read the residual codebook ({exc})") from exc

    def write(self, path: Path) -> None:
        with open(path, "wb") as handle:  # a path would get ".npz" appended
            np.savez(handle, centroids=self.centroids, cutoffs=self.cutoffs, buckets=self.buckets)

    def encode(self, rows: np.ndarray) -> np.ndarray:
        ids, residual = self.residuals(rows)
        codes = (residual[:, :, None] > self.cutoffs[None]).sum(axis=2, dtype=np.uint8)
        per_byte = 8 // self.nbits
        shifts = np.arange(0, 8, self.nbits, dtype=np.uint8)
        packed = (codes.reshape(len(codes), self.dim // per_byte, per_byte) << shifts).sum(
            axis=2, dtype=np.uint8
        )
        id_bytes = ids.astype("<u2").view(np.uint8).reshape(len(ids), 2)[:, : self.id_bytes]
        return np.concatenate([id_bytes, packed], axis=1)

    def decode(self, stored: torch.Tensor) -> torch.Tensor:
        flat = stored.reshape(-1, self.code_size)
        if self.id_bytes:  # embedding(): a gather several times faster than indexing
            values = torch.nn.functional.embedding(
                flat[:, 0].long() | (flat[:, 1].long() << 8), self._centroids
            )
        else:
            values = self._centroids.expand(len(flat), -1)
        residual = torch.nn.functional.embedding(
            flat[:, self.id_bytes :].long() + self._byte_offsets, self._table
        )
        values = values + residual.view(len(flat), self.dim)
        values = values / values.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return values.view(*stored.shape[:-1], self.dim)


def _check_codebook(centroids: np.ndarray, cutoffs: np.ndarray, buckets: np.ndarray) -> None:
    """Raise ValueError unless the arrays are a residual codebook: [K, dim] centroids (1 <= K <= 2**16), and per
    dimension 2**nbits bucket values and 2**nbits - 1 cut-offs, with nbits 1, 2, 4 or 8 filling whole bytes."""
    if centroids.ndim != 2 or not 1 <= len(centroids) <= 2**16:
        raise ValueError(f"centroids of shape {centroids.shape}, expected [1..65536, dim]")
    dim, levels = centroids.shape[1], buckets.shape[-1]
    nbits = levels.bit_length() - 1
    if levels not in (2, 4, 16, 256) or buckets.shape != (dim, levels) or dim * nbits % 8:
        raise ValueError(f"buckets of shape {buckets.shape}, expected [{dim}, 2**nbits] filling whole bytes")
    if cutoffs.shape != (dim, levels - 1):
        raise ValueError(f"cut-offs of shape {cutoffs.shape}, expected [{dim}, {levels - 1}]")


Codec = Float16Codec | Int8Codec | PQCodec | ResidualCodec
TrainedCodec = PQCodec | ResidualCodec

CODECS: dict[str, Float16Codec | Int8Codec] = {codec.name: codec for codec in (Float16Codec(), Int8Codec())}

#: Stores whose codec is trained on the first segment: (data file suffix, codebook file suffix).
TRAINED: dict[str, tuple[str, str]] = {
    "pq": ("pq", "pqcodes.faiss"),
    "residual1": ("rq1", "rqcodes.npz"),
    "residual2": ("rq2", "rqcodes.npz"),
}


def data_suffix(dtype: str) -> str:
    """The suffix of a segment's data file in store `dtype`."""
    return TRAINED[dtype][0] if dtype in TRAINED else CODECS[dtype].suffix


def check_trainable(dtype: str, dim: int, pq_m: int = 0) -> None:
    """Refuse a trained `dtype` codec that cannot encode `dim`-d rows (checked before any row is encoded)."""
    if dtype == "pq":
        m = pq_m or max(1, dim // 8)
        if dim % m:
            raise AladinError(f"pq_m: {m} sub-quantisers do not divide the row dimension {dim}")
    elif dtype in TRAINED:
        nbits = int(dtype.removeprefix("residual"))
        if dim * nbits % 8:
            raise AladinError(f"residual: {nbits}-bit codes of {dim}-d rows do not fill whole bytes")


def train_codec(
    dtype: str, sample: np.ndarray, file: str, pq_m: int = 0, pq_nbits: int = 8, centroids: int = 0
) -> TrainedCodec:
    """A `dtype` codec trained on `sample`, to be saved as `file`."""
    if dtype == "pq":
        return PQCodec.train(sample, pq_m, pq_nbits, file)
    return ResidualCodec.train(sample, int(dtype.removeprefix("residual")), centroids, file)


def read_codec(path: Path, dtype: str, dim: int) -> TrainedCodec:
    """The trained codec in `path`, refused unless it encodes `dim`-d rows as `dtype`."""
    codec = PQCodec.read(path) if dtype == "pq" else ResidualCodec.read(path)
    if codec.name != dtype or codec.dim != dim:
        raise CheckpointError(
            f"{path}: a {codec.name} codebook of {codec.dim}-d rows, but its segments are {dtype} of {dim}-d rows"
        )
    return codec
