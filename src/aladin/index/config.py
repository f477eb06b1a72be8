"""How an index is built: the FAISS recipe for the global vectors and the encoding of the region store."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aladin.config import config_from_dict
from aladin.errors import AladinError
from aladin.index.backend import BACKEND_MODULES

#: Bumped whenever the on-disk layout of an index folder changes incompatibly.
INDEX_FORMAT_VERSION = 1

#: Encodings of the region/word store; see `aladin.index.store`.
REGION_DTYPES = ("float16", "int8", "pq", "residual2", "residual1")

#: The store of an index whose manifest names none: written before `region_dtype` existed, it is float16.
LEGACY_REGION_DTYPE = "float16"

#: Where the global vectors live (the registry of `aladin.index.backend`): FAISS in this process, or a Milvus
#: collection (embedded Lite or a server).
BACKENDS = tuple(BACKEND_MODULES)

_FACTORIES = re.compile(r"^(Flat|IVF(?P<nlist>[1-9]\d*),Flat|HNSW(?P<m>[1-9]\d*))$")


@dataclass(frozen=True)
class IndexConfig:
    """FAISS factory string (inner product over the normalised global vectors), its search knobs, and the store.

    `factory`: "Flat" (exact), "IVF{nlist},Flat" (searched with `nprobe` lists) or "HNSW{M}" (searched with
    `ef_search`). `region_dtype`: "int8" (a quarter of float32, the default), "float16" (half) or "pq" (FAISS product quantisation:
    `pq_m` sub-quantisers of `pq_nbits` bits, `pq_m` * `pq_nbits` / 8 bytes per row; `pq_m` 0 means
    embed_dim / 8, a sixteenth of float32 at 8 bits), "residual2" / "residual1" (PLAID-style: a k-means centroid id
    of 2 bytes plus a 2- or 1-bit residual per dimension; `residual_centroids` 0 means PLAID's count for the
    training sample, 1 a plain per-dimension quantiser without ids; benchmarks/compact_store.py). `batch_size`: images or captions encoded at once while
    building. `backend`: "faiss" (in-process, files in the index folder) or "milvus" (`uri`: a Milvus Lite
    folder ending in .db, default `<index>/milvus.db`, or http(s)://host:port of a server; `collection`: the
    collections' name prefix, default derived from the index folder). The factory maps onto Milvus's FLAT,
    IVF_FLAT and HNSW indexes with the same knobs.
    """

    factory: str = "Flat"
    nprobe: int = 16
    ef_search: int = 128
    region_dtype: str = "int8"  # lost 0.14% rsum against float16 on the demo, at half its size
    batch_size: int = 64
    pq_m: int = 0
    pq_nbits: int = 8
    residual_centroids: int = 0
    backend: str = "faiss"
    uri: str = ""
    collection: str = ""

    def __post_init__(self) -> None:
        if self.backend not in BACKEND_MODULES:
            raise AladinError(f"backend: expected one of {', '.join(BACKEND_MODULES)}, got {self.backend!r}")
        if self.backend == "faiss" and (self.uri or self.collection):
            raise AladinError("uri/collection: only for the milvus backend (add --backend milvus)")
        url = urlsplit(self.uri)
        if url.scheme in ("http", "https") and "@" in url.netloc:
            raise AladinError(
                "uri: no credentials in the uri (it is saved in the manifest); put them in $ALADIN_MILVUS_TOKEN"
            )
        if self.uri and url.scheme not in ("http", "https") and not self.uri.endswith(".db"):
            raise AladinError(
                f"uri: expected http(s)://host:port or a Milvus Lite path ending in .db, got {self.uri!r}"
            )
        if self.collection and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,150}", self.collection):
            raise AladinError(
                f"collection: letters, digits and underscores, not starting with a digit, got {self.collection!r}"
            )
        if not _FACTORIES.match(self.factory):
            raise AladinError(
                f"index factory: expected 'Flat', 'IVF<nlist>,Flat' or 'HNSW<M>', got {self.factory!r}"
            )
        if self.region_dtype not in REGION_DTYPES:
            raise AladinError(
                f"region_dtype: expected one of {', '.join(REGION_DTYPES)}, got {self.region_dtype!r}"
            )
        if self.pq_m < 0:
            raise AladinError(f"pq_m: must be 0 (embed_dim / 8) or positive, got {self.pq_m}")
        if not 1 <= self.pq_nbits <= 16:
            raise AladinError(f"pq_nbits: must be between 1 and 16, got {self.pq_nbits}")
        if not 0 <= self.residual_centroids <= 2**16:
            raise AladinError(
                f"residual_centroids: 0 (automatic) to 65536 (2-byte ids), got {self.residual_centroids}"
            )
        for name in ("nprobe", "ef_search", "batch_size"):
            if getattr(self, name) < 1:
                raise AladinError(f"{name}: must be at least 1, got {getattr(self, name)}")

    @property
    def nlist(self) -> int:
        """Number of IVF lists (0 for other factories): the minimum number of vectors training needs."""
        match = _FACTORIES.match(self.factory)
        return int(match["nlist"]) if match and match["nlist"] else 0

    @property
    def hnsw_m(self) -> int:
        """Links per node of an HNSW factory (0 for other factories)."""
        match = _FACTORIES.match(self.factory)
        return int(match["m"]) if match and match["m"] else 0


def saved_index_config(data: dict[str, Any], where: str) -> IndexConfig:
    """A manifest's `index_config`: absent fields take the defaults, except the store, which takes the one such
    an index was built with (later segments must match the first, whatever today's default)."""
    return config_from_dict(IndexConfig, {"region_dtype": LEGACY_REGION_DTYPE, **data}, where)


#: Which vector of an image is compared: the matching head's global vector ("global") or the mean of its stored
#: region rows ("regions"); benchmarks/duplicates.py measures both on COCO photos.
FEATURES = ("global", "regions")


@dataclass(frozen=True)
class DuplicateConfig:
    """`threshold`: the least cosine that links two photos as near-duplicates; `feature`: see `FEATURES`;
    `neighbours`: how many nearest images each image is compared with (global feature: the index's kNN).

    Both defaults are the bundled model's, chosen by benchmarks/duplicates.py on the COCO train photos and their
    generated copies (best pair F1: 0.994 at 0.85 with the global vectors, 0.975 at best with pooled regions;
    results/duplicates.md). Another model's vectors may need another threshold."""

    threshold: float = 0.85
    feature: str = "global"
    neighbours: int = 32

    def __post_init__(self) -> None:
        if self.neighbours < 1:
            raise AladinError(f"duplicates neighbours: expected at least 1, got {self.neighbours}")
        if not -1.0 <= float(self.threshold) <= 1.0:
            raise AladinError(f"duplicates threshold: expected a cosine in [-1, 1], got {self.threshold}")
        if self.feature not in FEATURES:
            raise AladinError(
                f"duplicates feature: expected one of {', '.join(FEATURES)}, got {self.feature!r}"
            )
