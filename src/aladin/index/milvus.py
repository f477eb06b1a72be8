"""The Milvus backend: an index's global vectors in a Milvus collection, with metadata as scalar fields to filter on.

The same client code runs embedded (Milvus Lite: `uri` is a folder ending in .db, default `<index>/milvus.db`)
or against a Milvus server or cluster (`uri` = http(s)://host:port, token from $ALADIN_MILVUS_TOKEN, never from
the command line or the manifest). One collection per side (`<prefix>_images_<generation>`, `..._texts_...`)
holds `id`, `vector` and the `row_fields`; its properties record the fingerprint of the model that built it.

Milvus is not versioned like the index folder, so an update keeps the manifest in charge:
- added rows are written and flushed before the manifest switch, but search only returns ids below the
  current manifest's next id, so they stay invisible until the switch; the next update sweeps leftovers of a
  failed one (ids at or above that bound) before it writes;
- removals are applied before the switch: if the switch then fails they are already gone from search while the
  manifest still lists them, and rerunning the remove completes it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from aladin.errors import AladinError, CheckpointError
from aladin.index.backend import VectorBackend
from aladin.index.config import IndexConfig

#: Environment variable holding the token (or "user:password") of a Milvus server.
TOKEN_ENV = "ALADIN_MILVUS_TOKEN"
#: Seconds to wait for a server before giving up (a closed port fails at once).
CONNECT_TIMEOUT = 10.0
#: Milvus Lite folder inside the index folder when no uri is given.
DEFAULT_LITE = "milvus.db"
#: Rows per insert/get request (well under gRPC's message size limit at 256-d float32).
BATCH = 5000
#: Milvus's largest top-k.
MAX_K = 16384
#: HNSW build-time candidate list, FAISS's default, so both backends build the same graph quality.
HNSW_EF_CONSTRUCTION = 40
_TEXT = 65535  # longest VARCHAR Milvus stores


def _pymilvus() -> Any:
    try:
        import pymilvus
    except ImportError as exc:
        raise AladinError(
            "the milvus backend needs pymilvus and milvus-lite: pip install 'aladin[milvus]'"
        ) from exc
    quiet = logging.getLogger("pymilvus.decorators")
    if quiet.level == logging.NOTSET:  # it logs every failed call with a traceback; we raise one line instead
        quiet.setLevel(logging.CRITICAL)
    return pymilvus


def _message(exc: Exception) -> str:
    return str(getattr(exc, "message", exc)).strip().splitlines()[0]


def resolve_uri(uri: str, directory: Path) -> str:
    """A server URL as given; a Lite path (default `<index>/milvus.db`) relative to the index folder."""
    if urlsplit(uri).scheme in ("http", "https"):
        return uri
    return str(directory / (uri or DEFAULT_LITE))


def connect(uri: str, directory: Path) -> tuple[Any, str]:
    """A client for `uri` (see `resolve_uri`) and the name to show for it; one clear line when unreachable."""
    pymilvus = _pymilvus()
    target = resolve_uri(uri, directory)
    token = os.environ.get(TOKEN_ENV, "")
    if urlsplit(target).scheme not in (
        "http",
        "https",
    ):  # Milvus Lite opens its folder only in an existing one
        Path(target).parent.mkdir(parents=True, exist_ok=True)
    try:
        return pymilvus.MilvusClient(uri=target, token=token, timeout=CONNECT_TIMEOUT), target
    except pymilvus.MilvusException as exc:
        raise AladinError(
            f"milvus {target}: cannot connect ({_message(exc)}); start the server or fix --uri"
        ) from exc


def _prefix(cfg: IndexConfig, directory: Path) -> str:
    """Collection name prefix: the configured one, or the folder's name plus a hash of its absolute path."""
    if cfg.collection:
        return cfg.collection
    stem = re.sub(r"\W", "_", directory.name)[:40]
    return f"aladin_{stem}_{_identity(directory)[:8]}"


def _identity(directory: Path) -> str:
    return hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:16]


class MilvusBackend(VectorBackend):
    """One side's vectors in a Milvus collection (created on the first save)."""

    name = "milvus"

    def __init__(
        self,
        client: Any,
        label: str,
        cfg: IndexConfig,
        kind: str,
        dim: int,
        collection: str | None,
        bound: int,
    ):
        self.client, self.label, self.cfg, self.kind = client, label, cfg, kind
        self._dim = dim
        self.collection = collection  # None until the first save creates it
        self.bound = bound  # ids below this are committed; search returns nothing else
        self._added: list[tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]] = []
        self._removed = np.zeros(0, np.int64)
        self._relabeled: list[tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]] = []
        self._staged_bound = bound
        self._pending: dict[str, str] | None = None  # properties of the collection to create on save
        self._search_params: dict[str, Any] = {}
        self.set_search_params(cfg.nprobe, cfg.ef_search)

    @classmethod
    def create(cls, cfg: IndexConfig, kind: str, dim: int, directory: Path, model: str) -> MilvusBackend:
        client, label = connect(cfg.uri, directory)
        backend = cls(client, label, cfg, kind, dim, None, 0)
        backend._pending = {
            "prefix": _prefix(cfg, directory),
            "aladin.model": model,
            "aladin.index": _identity(directory),
            "aladin.kind": kind,
        }
        return backend

    @classmethod
    def preflight(cls, cfg: IndexConfig, directory: Path, processes: int = 1) -> None:
        """A Lite folder is opened by one process at a time; a server must answer before anything is encoded."""
        if processes > 1 and urlsplit(cfg.uri).scheme not in ("http", "https"):
            raise AladinError(
                f"--uri {cfg.uri}: Milvus Lite (a local path) is opened by one process at a time; build with "
                "one process, or point --uri at a Milvus server"
            )
        connect(cfg.uri, directory)

    @classmethod
    def user_uri(cls, uri: str) -> str:
        """A Lite path typed by a user is relative to the working directory (`IndexConfig` reads a relative one
        against the index folder): made absolute; a server URL as given."""
        if not uri or urlsplit(uri).scheme in ("http", "https"):
            return uri
        return str(Path(uri).resolve())

    @classmethod
    def release_replaced(cls, directory: Path, old: dict[str, Any], new: dict[str, Any]) -> None:
        """Drop the collections only the replaced version used. A failure leaves the new index intact, so it is
        a warning, not an error."""
        kept = {(new["index_config"].get("uri"), e.get("collection")) for e in new["collections"].values()}
        stale = [
            e["collection"]
            for e in old["collections"].values()
            if (old["index_config"].get("uri"), e.get("collection")) not in kept
        ]
        try:
            drop_collections(old["index_config"].get("uri", ""), directory, stale)
        except AladinError as exc:
            warnings.warn(
                f"{directory}: the replaced index's collections were not dropped: {exc}", stacklevel=2
            )

    @classmethod
    def open(
        cls,
        cfg: IndexConfig,
        kind: str,
        entry: dict[str, Any],
        directory: Path,
        manifest: dict[str, Any],
        tombstones: np.ndarray | None = None,
    ) -> MilvusBackend:
        """The collection the manifest names, refused if it is missing or was built by another model."""
        client, label = connect(cfg.uri, directory)
        name = entry["collection"]
        built_by = manifest["model"]["fingerprint"]
        try:
            if not client.has_collection(name):
                raise CheckpointError(
                    f"milvus {label}: collection {name} not found (named by {directory}/manifest.json); "
                    "rebuild the index with `aladin index build`"
                )
            found = client.describe_collection(name).get("properties", {}).get("aladin.model")
            if found != built_by:
                raise CheckpointError(
                    f"milvus {label}: collection {name} was built by model {found}, but the index {directory} "
                    f"was built by model {built_by}; rebuild the index with `aladin index build`"
                )
            client.load_collection(name)
        except _pymilvus().MilvusException as exc:
            raise AladinError(f"milvus {label}: cannot open collection {name} ({_message(exc)})") from exc
        return cls(client, label, cfg, kind, entry["global_dim"], name, int(manifest["next_ids"][kind]))

    # ---- reading --------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self._dim

    @property
    def ntotal(self) -> int:
        if self.collection is None:
            return 0
        rows = self._call(
            "count",
            self.client.query,
            self.collection,
            filter=f"id < {self.bound}",
            output_fields=["count(*)"],
        )
        return int(rows[0]["count(*)"])

    def set_search_params(self, nprobe: int, ef_search: int) -> None:
        if self.cfg.nlist:
            self._search_params = {"nprobe": nprobe}
        elif self.cfg.hnsw_m:
            self._search_params = {"ef": ef_search}

    def search(
        self, queries: np.ndarray, k: int, where: str | None = None, ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        allowed = None if ids is None else np.asarray(ids, np.int64)
        k = max(1, min(k, MAX_K) if allowed is None else min(k, MAX_K, len(allowed)))
        scores = np.full((len(queries), k), -np.inf, np.float32)
        found_ids = np.full((len(queries), k), -1, np.int64)
        if self.collection is None or not len(queries) or (allowed is not None and not len(allowed)):
            return scores, found_ids
        params = dict(self._search_params)
        if "ef" in params:
            params["ef"] = max(params["ef"], k)  # Milvus refuses ef below k
        expr = f"id < {self.bound}" + (f" and ({where})" if where else "")
        if allowed is not None:  # the filter's ids: Milvus searches inside them (exactly when few match)
            expr += f" and id in [{','.join(map(str, allowed.tolist()))}]"
        try:
            found = self.client.search(
                self.collection,
                data=queries,
                limit=k,
                anns_field="vector",
                filter=expr,
                search_params={"metric_type": "IP", "params": params},
            )
        except _pymilvus().MilvusException as exc:
            what = f"filter {where!r}" if where else f"milvus {self.label}: search"
            raise AladinError(f"{what}: {_message(exc)}") from exc
        chosen = None if allowed is None else set(allowed.tolist())
        for q, hits in enumerate(found):
            # checked here too: a filter such as "x) or (y" could otherwise escape the bound and ids in the
            # expression
            visible = [
                hit for hit in hits if hit["id"] < self.bound and (chosen is None or hit["id"] in chosen)
            ]
            for j, hit in enumerate(visible):
                found_ids[q, j], scores[q, j] = hit["id"], hit["distance"]
        return scores, found_ids

    def fetch(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, np.int64)
        out = np.zeros((len(ids), self.dim), np.float32)
        position = {int(i): n for n, i in enumerate(ids)}
        for start in range(0, len(ids), BATCH):
            part = ids[start : start + BATCH].tolist()
            for row in self._call(
                "get", self.client.get, self.collection, ids=part, output_fields=["vector"]
            ):
                out[position[int(row["id"])]] = row["vector"]
                del position[int(row["id"])]
        if position:
            raise AladinError(f"milvus {self.label}: collection {self.collection} lacks id {min(position)}")
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "uri": self.label,
            "collection": self.collection,
            "vectors": self.ntotal,
        }

    # ---- changing -------------------------------------------------------------------------------
    def add(self, ids: np.ndarray, vectors: np.ndarray, fields: list[dict[str, Any]]) -> None:
        self._added.append((np.asarray(ids, np.int64), np.asarray(vectors, np.float32), fields))

    def remove(self, ids: np.ndarray) -> None:
        self._removed = np.union1d(self._removed, np.asarray(ids, np.int64))

    def relabel(self, ids: np.ndarray, fields: list[dict[str, Any]]) -> None:
        """Rows keep their id and vector; `save` upserts them with the new fields (row by row atomic: a failed
        switch leaves some with the new fields, which the next sync writes again)."""
        self._relabeled.append((np.asarray(ids, np.int64), self.fetch(ids), fields))

    def save(self, directory: Path, generation: int) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """Sweep leftovers of failed updates, apply removals, insert and flush (sealed, indexed segments keep
        search fast); nothing new is visible to search before `commit` raises the id bound."""
        if self.collection is None:
            self.collection = self._create_collection(generation)
        name = self.collection
        self._call("delete", self.client.delete, name, filter=f"id >= {self.bound}")
        for start in range(0, len(self._removed), BATCH):
            self._call("delete", self.client.delete, name, ids=self._removed[start : start + BATCH].tolist())
        for ids, vectors, fields in self._added:
            self._write_rows("insert", self.client.insert, name, ids, vectors, fields)
            if len(ids):
                self._staged_bound = max(self._staged_bound, int(ids.max()) + 1)
        for ids, vectors, fields in self._relabeled:
            self._write_rows("upsert", self.client.upsert, name, ids, vectors, fields)
        self._call("flush", self.client.flush, name)
        self._call("load", self.client.load_collection, name)
        return {"vectors": None, "collection": name}, {}

    def _write_rows(
        self,
        what: str,
        fn: Any,
        name: str,
        ids: np.ndarray,
        vectors: np.ndarray,
        fields: list[dict[str, Any]],
    ) -> None:
        for start in range(0, len(ids), BATCH):
            stop = start + BATCH
            rows = [
                {"id": int(i), "vector": v, **f}
                for i, v, f in zip(ids[start:stop], vectors[start:stop], fields[start:stop], strict=True)
            ]
            self._call(what, fn, name, rows)

    def commit(self) -> None:
        self.bound = self._staged_bound
        self.discard()

    def discard(self) -> None:
        """Forget the staged changes; rows already written stay invisible (above the bound) until swept."""
        self._added, self._removed, self._staged_bound = [], np.zeros(0, np.int64), self.bound
        self._relabeled = []

    def _create_collection(self, generation: int) -> str:
        """A new collection for this version; a leftover of an interrupted build of the same index folder is
        replaced, one of another index is refused."""
        assert self._pending is not None
        properties = dict(self._pending)
        name = f"{properties.pop('prefix')}_{self.kind}_{generation:06d}"
        pymilvus = _pymilvus()
        if self._call("check", self.client.has_collection, name):
            described = self._call("describe", self.client.describe_collection, name)
            owner = described.get("properties", {}).get("aladin.index")
            if owner != properties["aladin.index"]:
                raise AladinError(
                    f"milvus {self.label}: collection {name} already exists and belongs to another index; "
                    "choose another --collection"
                )
            self._call("drop", self.client.drop_collection, name)
        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", pymilvus.DataType.INT64, is_primary=True)
        schema.add_field("vector", pymilvus.DataType.FLOAT_VECTOR, dim=self.dim)
        schema.add_field("image_id", pymilvus.DataType.INT64)
        for field in ("external_id", "path", "folder"):
            schema.add_field(field, pymilvus.DataType.VARCHAR, max_length=_TEXT)
        index = self.client.prepare_index_params()
        # Build parameters nested under "params": the wire form that both Milvus servers and Lite read.
        index.add_index(
            "vector", index_type=self._index_type(), metric_type="IP", params={"params": self._build_params()}
        )
        self._call(
            "create",
            self.client.create_collection,
            name,
            schema=schema,
            index_params=index,
            properties=properties,
        )
        self._pending = None
        return name

    def _index_type(self) -> str:
        return "IVF_FLAT" if self.cfg.nlist else "HNSW" if self.cfg.hnsw_m else "FLAT"

    def _build_params(self) -> dict[str, int]:
        if self.cfg.nlist:
            return {"nlist": self.cfg.nlist}
        if self.cfg.hnsw_m:
            return {"M": self.cfg.hnsw_m, "efConstruction": HNSW_EF_CONSTRUCTION}
        return {}

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a client call, turning a Milvus failure into one line naming the server and collection."""
        try:
            return fn(*args, **kwargs)
        except _pymilvus().MilvusException as exc:
            raise AladinError(
                f"milvus {self.label}: {what} on collection {self.collection} failed ({_message(exc)})"
            ) from exc


def drop_collections(uri: str, directory: Path, names: list[str]) -> None:
    """Drop collections no index version refers to any more (those of a replaced build)."""
    if not names:
        return
    client, label = connect(uri, directory)
    for name in names:
        try:
            client.drop_collection(name)
        except _pymilvus().MilvusException as exc:
            raise AladinError(f"milvus {label}: cannot drop collection {name} ({_message(exc)})") from exc
