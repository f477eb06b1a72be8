"""A persistent search index: global vectors in a backend (FAISS files or Milvus), packed region/word stores,
SQLite metadata, a manifest.

Every change (build, add, remove) is staged as new files and published by one atomic rename of the manifest
(see `aladin.index.manifest`), so a crash at any point leaves the previous version loadable and unchanged (for
what Milvus adds to that, see `aladin.index.milvus`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aladin.config import config_from_dict, config_to_dict
from aladin.encoders.image import ImageEncoder, build_image_encoder
from aladin.errors import AladinError, CheckpointError
from aladin.index.backends import VectorBackend, new_backend, open_backend, release_replaced, row_fields
from aladin.index.config import INDEX_FORMAT_VERSION, IndexConfig
from aladin.index.encoding import embed_images, model_device
from aladin.index.manifest import (
    MANIFEST_NAME,
    collect_garbage,
    generation_name,
    publish_with,
    read_manifest,
    remove_generation,
    verify_files,
    write_manifest,
    writer_lock,
)
from aladin.index.metadata import IMAGES, TEXTS, ImageRecord, Metadata, TextRecord
from aladin.index.sources import find_images
from aladin.index.store import EncodedChunk, PackedStore, SegmentWriter
from aladin.model.aladin import AladinModel

#: File stem of each collection's store segments.
_STEMS = {IMAGES: "regions", TEXTS: "words"}


@dataclass
class Collection:
    """One searchable side (images or captions): the global vectors' backend and the store of per-item sets."""

    vectors: VectorBackend
    store: PackedStore
    entry: dict[str, Any]  # its part of the manifest


def _model_entry(model: AladinModel, checkpoint: str | None) -> dict[str, Any]:
    return {
        "fingerprint": model.fingerprint(),
        "config": config_to_dict(model.config),
        "checkpoint": checkpoint,
    }


class SearchIndex:
    """Load with `SearchIndex.load`, start a new one with `SearchIndex.create`; change it with `update()`,
    `add(paths)` or `remove(ids)`. Item ids are assigned in order and never reused."""

    def __init__(
        self,
        directory: Path,
        manifest: dict[str, Any],
        collections: dict[str, Collection],
        meta: Metadata,
        model: AladinModel | None,
    ):
        self.directory = directory
        self.manifest = manifest
        self.collections = collections
        self.meta = meta
        self.model = model

    # ---- opening --------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        directory: str | Path,
        model: AladinModel,
        cfg: IndexConfig | None = None,
        with_texts: bool = False,
        checkpoint: str | None = None,
    ) -> SearchIndex:
        """An empty index for `model`, held in memory until its first update commits. In a folder that already
        holds an index, that commit replaces it (a rebuild), still with one atomic switch."""
        directory = Path(directory)
        cfg = cfg or IndexConfig()
        previous = _disk_generation(directory)
        m = model.config.model
        manifest: dict[str, Any] = {
            "format_version": INDEX_FORMAT_VERSION,
            "generation": previous,
            "model": _model_entry(model, checkpoint),
            "index_config": config_to_dict(cfg),
            "next_ids": {IMAGES: 0, TEXTS: 0},
            "counts": {},
            "collections": {},
            "meta": None,
            "files": {},
        }
        collections = {}
        for kind in (IMAGES, TEXTS) if with_texts else (IMAGES,):
            entry = {
                "vectors": None,
                "global_dim": m.global_dim,
                "row_dim": m.embed_dim,
                "segments": [],
                "vectors_hold_deleted": False,
            }
            manifest["collections"][kind] = entry
            manifest["counts"][kind] = {"live": 0, "removed": 0}
            store = PackedStore(directory, [], m.embed_dim)
            vectors = new_backend(cfg, kind, m.global_dim, directory, model.fingerprint())
            collections[kind] = Collection(vectors, store, entry)
        return cls(directory, manifest, collections, Metadata.empty(), model)

    @classmethod
    def load(
        cls, directory: str | Path, model: AladinModel | None = None, verify_checksums: bool = True
    ) -> SearchIndex:
        """Open the current version, checking every file's size (and checksum) and that `model` built it.

        Without `model` the index can be inspected and items removed, but nothing can be encoded.
        """
        directory = Path(directory)
        manifest = read_manifest(directory)
        if model is not None:
            check_model(manifest, model, directory)
        verify_files(directory, manifest, checksums=verify_checksums)
        try:
            cfg = config_from_dict(IndexConfig, manifest["index_config"], "manifest.json: index_config")
            meta = Metadata.open(directory / manifest["meta"])
            collections = {}
            for kind, entry in manifest["collections"].items():
                tombstones = meta.ids(kind, deleted=True) if entry.get("vectors_hold_deleted") else None
                vectors = open_backend(cfg, kind, entry, directory, manifest, tombstones)
                if vectors.dim != entry["global_dim"]:
                    raise CheckpointError(
                        f"{directory / (entry['vectors'] or MANIFEST_NAME)}: vectors of dim {vectors.dim}, "
                        f"the manifest says {entry['global_dim']}"
                    )
                store = PackedStore(directory, entry["segments"], entry["row_dim"])
                collections[kind] = Collection(vectors, store, entry)
        except CheckpointError:
            raise
        except (KeyError, TypeError, AladinError) as exc:
            raise CheckpointError(f"{directory / 'manifest.json'}: malformed manifest ({exc})") from exc
        return cls(directory, manifest, collections, meta, model)

    # ---- reading --------------------------------------------------------------------------------
    @property
    def config(self) -> IndexConfig:
        return config_from_dict(IndexConfig, self.manifest["index_config"], "index_config")

    @property
    def generation(self) -> int:
        return int(self.manifest["generation"])

    @property
    def has_texts(self) -> bool:
        return TEXTS in self.collections

    def __len__(self) -> int:
        """Number of images that can be found (removed ones excluded)."""
        return int(self.manifest["counts"][IMAGES]["live"])

    def collection(self, kind: str) -> Collection:
        if kind not in self.collections:
            hint = " (build it with --with-texts for image→text search)" if kind == TEXTS else ""
            raise AladinError(f"{self.directory}: this index has no {kind}{hint}")
        return self.collections[kind]

    def search(
        self, kind: str, queries: np.ndarray, k: int, where: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """First stage: top-k global-vector inner products per query ([nq, k] scores and ids, -1 = none), among
        the items matching `where` (a Milvus filter on image_id, external_id, path, folder; milvus backend only)."""
        return self.collection(kind).vectors.search(queries, k, where)

    def lookup(self, kind: str, ids: Sequence[int] | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Second stage input: the items' stored regions (or words), padded, and their mask."""
        return self.collection(kind).store.lookup(np.asarray(ids))

    def set_search_params(self, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Trade recall for speed at query time without rebuilding (IVF lists probed, HNSW candidate list)."""
        cfg = self.config
        for collection in self.collections.values():
            collection.vectors.set_search_params(nprobe or cfg.nprobe, ef_search or cfg.ef_search)

    def info(self) -> dict[str, Any]:
        """What `aladin index info` shows: sizes, counts, model, settings, store reconstruction error."""
        files = self.manifest["files"]
        collections = {}
        for kind, collection in self.collections.items():
            segments = collection.entry["segments"]
            quantizers = sorted({s["quantizer"] for s in segments if s.get("quantizer")})
            collections[kind] = {
                **self.manifest["counts"][kind],
                "vectors": collection.vectors.describe(),
                "segments": len(segments),
                "stored_rows": sum(s["rows"] for s in segments),
                "store_bytes": sum(
                    files[s[key]]["bytes"] for s in segments for key in ("data", "offsets", "boxes") if s[key]
                )
                + sum(files[name]["bytes"] for name in quantizers),
                "quantizer_bytes": sum(files[name]["bytes"] for name in quantizers),
                "reconstruction": [s["reconstruction"] for s in segments if s["reconstruction"]],
            }
        return {
            "directory": str(self.directory),
            "generation": self.generation,
            "format_version": self.manifest["format_version"],
            "model": {k: v for k, v in self.manifest["model"].items() if k != "config"},
            "index_config": self.manifest["index_config"],
            "collections": collections,
            "total_bytes": sum(record["bytes"] for record in files.values()),
        }

    # ---- changing -------------------------------------------------------------------------------
    def update(self) -> IndexUpdate:
        """Stage changes (`with index.update() as up: ...`); they become visible together when it commits."""
        return IndexUpdate(self)

    def add(
        self, paths: Iterable[str | Path], image_encoder: ImageEncoder | None = None, progress: bool = False
    ) -> list[int]:
        """Encode and add images (files, or folders searched recursively); returns their new ids."""
        from tqdm import tqdm

        model = self._require_model("add images")
        files = find_images(paths)
        encoder = image_encoder or build_image_encoder(model.config.image_encoder, model_device(model))
        batch_size = self.config.batch_size
        ids: list[int] = []
        with (
            self.update() as up,
            tqdm(total=len(files), desc="add", unit="image", disable=not progress) as bar,
        ):
            batches = [files[start : start + batch_size] for start in range(0, len(files), batch_size)]
            for batch, regions in zip(batches, encoder.encode_files(batches), strict=True):
                chunk = embed_images(model, regions)
                ids.extend(up.add_images(chunk, [ImageRecord(str(p), str(p)) for p in batch]).tolist())
                bar.update(len(batch))
        return ids

    def remove(self, ids: Iterable[int]) -> None:
        """Remove images (and their captions) from search; their ids are never given out again."""
        with self.update() as up:
            up.remove_images(ids)

    def _require_model(self, what: str) -> AladinModel:
        if self.model is None:
            raise AladinError(f"{self.directory}: to {what}, load the index with the model that built it")
        return self.model

    def _switch(self, manifest: dict[str, Any]) -> None:
        """Point this object at the version just committed (its backends already hold the new vectors)."""
        meta = Metadata.open(self.directory / manifest["meta"])
        self.meta.close()
        self.meta = meta
        self.manifest = manifest
        for kind, entry in manifest["collections"].items():
            collection = self.collections[kind]
            collection.vectors.commit()
            store = PackedStore(self.directory, entry["segments"], entry["row_dim"])
            self.collections[kind] = Collection(collection.vectors, store, entry)


def check_model(manifest: dict[str, Any], model: AladinModel, directory: Path) -> None:
    """Refuse to search an index with a model other than the one that built it: the vectors would not match."""
    built_by = manifest.get("model", {}).get("fingerprint")
    if built_by != model.fingerprint():
        checkpoint = manifest.get("model", {}).get("checkpoint")
        hint = f" (built from {checkpoint})" if checkpoint else ""
        raise CheckpointError(
            f"{directory}: index was built by model {built_by}{hint}, but the model given is "
            f"{model.fingerprint()}; use that model or rebuild the index with `aladin index build`"
        )


class IndexUpdate:
    """Changes staged as new files, published by one manifest switch when the `with` block ends without error.

    Until then, and if anything fails, the index on disk and in memory stays as it was.
    """

    def __init__(self, index: SearchIndex):
        self.index = index
        self.generation = index.generation + 1
        self.next_ids = dict(index.manifest["next_ids"])
        self._writers: dict[str, SegmentWriter] = {}
        self._vectors: dict[str, list[np.ndarray]] = {kind: [] for kind in index.collections}
        self._ids: dict[str, list[np.ndarray]] = {kind: [] for kind in index.collections}
        self._fields: dict[str, list[dict[str, Any]]] = {kind: [] for kind in index.collections}
        self._images: dict[int, ImageRecord] = {}
        self._texts: list[tuple[int, TextRecord]] = []
        self._removed = {kind: np.zeros(0, np.int64) for kind in (IMAGES, TEXTS)}
        self._stack = ExitStack()

    def __enter__(self) -> IndexUpdate:
        self._stack.enter_context(writer_lock(self.index.directory))
        on_disk = _disk_generation(self.index.directory)
        if on_disk != self.index.generation:
            self._stack.close()
            raise AladinError(
                f"{self.index.directory}: the index changed on disk since it was loaded "
                f"(version {on_disk}, loaded {self.index.generation}); load it again"
            )
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is None:
                self._commit()
            else:
                self._discard()
        finally:
            self._stack.close()

    def _stage(self, kind: str, chunk: EncodedChunk, owners: Sequence[tuple[int, ImageRecord]]) -> np.ndarray:
        """Stage `chunk` (its store rows, global vectors, and `row_fields` of each item's (image id, record))."""
        entry = self.index.collection(kind).entry
        n = len(chunk)
        if chunk.global_vectors.shape != (n, entry["global_dim"]):
            raise AladinError(
                f"{kind}: expected global vectors of shape ({n}, {entry['global_dim']}), "
                f"got {tuple(chunk.global_vectors.shape)}"
            )
        if kind not in self._writers:
            cfg = self.index.config
            self._writers[kind] = SegmentWriter(
                self.index.directory,
                _STEMS[kind],
                self.generation,
                self.next_ids[kind],
                cfg.region_dtype,
                entry["row_dim"],
                quantizer=self.index.collection(kind).store.quantizer,  # later pq segments reuse the first's
                pq_m=cfg.pq_m,
                pq_nbits=cfg.pq_nbits,
            )
        self._writers[kind].append(chunk)
        ids = np.arange(self.next_ids[kind], self.next_ids[kind] + n, dtype=np.int64)
        self.next_ids[kind] += n
        self._vectors[kind].append(np.asarray(chunk.global_vectors, dtype=np.float32))
        self._ids[kind].append(ids)
        self._fields[kind].extend(row_fields(image_id, record) for image_id, record in owners)
        return ids

    def add_images(self, chunk: EncodedChunk, records: Sequence[ImageRecord]) -> np.ndarray:
        """Stage images (model outputs `chunk`, metadata `records`); returns the ids they will have."""
        if len(records) != len(chunk):
            raise AladinError(f"add_images: {len(chunk)} encoded images but {len(records)} records")
        first = self.next_ids[IMAGES]
        ids = self._stage(IMAGES, chunk, list(enumerate(records, start=first)))
        self._images.update(zip(ids.tolist(), records, strict=True))
        return ids

    def add_texts(self, chunk: EncodedChunk, records: Sequence[TextRecord]) -> np.ndarray:
        """Stage captions of images already in the index or staged in this update; returns their ids."""
        if len(records) != len(chunk):
            raise AladinError(f"add_texts: {len(chunk)} encoded captions but {len(records)} records")
        owners = {r.image_id for r in records} - set(self._images)
        unknown = self.index.meta.missing(IMAGES, sorted(owners))
        if unknown:
            raise AladinError(f"add_texts: unknown image id {unknown[0]}")
        known = self.index.meta.images(owners)
        images = [(r.image_id, self._images.get(r.image_id) or known[r.image_id]) for r in records]
        ids = self._stage(TEXTS, chunk, images)
        self._texts.extend(zip(ids.tolist(), records, strict=True))
        return ids

    def remove_images(self, ids: Iterable[int]) -> None:
        """Stage removing images (and their captions); unknown or already removed ids are refused."""
        ids = np.unique(np.asarray(list(ids), dtype=np.int64))
        unknown = self.index.meta.missing(IMAGES, ids.tolist())
        if unknown:
            raise AladinError(
                f"{self.index.directory}: no image with id {', '.join(map(str, unknown[:5]))} "
                "(unknown or already removed)"
            )
        self._removed[IMAGES] = np.union1d(self._removed[IMAGES], ids)
        self._removed[TEXTS] = np.union1d(self._removed[TEXTS], self.index.meta.texts_of(ids.tolist()))

    def _discard(self) -> None:
        for writer in self._writers.values():
            writer.discard()
        self._writers.clear()
        for collection in self.index.collections.values():
            collection.vectors.discard()

    def _commit(self) -> None:
        """Publish the new files, switch the manifest, then delete what no version refers to any more."""
        directory = self.index.directory
        replaced = _disk_manifest(directory)
        try:
            manifest = self._publish()
            write_manifest(directory, manifest)
        except BaseException:
            self._discard()
            if _disk_generation(directory) != self.generation:  # the switch did not happen: drop our files
                remove_generation(directory, self.generation)
            raise
        self.index._switch(manifest)
        collect_garbage(directory, manifest)
        release_replaced(directory, replaced, manifest)

    def _publish(self) -> dict[str, Any]:
        """Write every new file of this version (and the backends' changes); returns its manifest, not yet
        switched."""
        index, directory = self.index, self.index.directory
        old = index.manifest
        files: dict[str, dict[str, Any]] = {}
        collections: dict[str, dict[str, Any]] = {}
        for kind, current in index.collections.items():
            entry = dict(current.entry)
            if kind in self._writers:
                segment, records = self._writers.pop(kind).finish()
                files.update(records)
                entry["segments"] = [*entry["segments"], segment]
            start = 0
            for ids, vectors in zip(self._ids[kind], self._vectors[kind], strict=True):
                current.vectors.add(ids, vectors, self._fields[kind][start : start + len(ids)])
                start += len(ids)
            if len(self._removed[kind]):
                current.vectors.remove(self._removed[kind])
            keys, records = current.vectors.save(directory, self.generation)
            entry.update(keys)
            files.update(records)
            kept = [entry["vectors"]] + [
                s[key]
                for s in entry["segments"]
                for key in ("data", "offsets", "boxes", "quantizer")
                if s.get(key)
            ]
            files.update({name: old["files"][name] for name in kept if name in old["files"]})
            collections[kind] = entry
        counts = {
            kind: {
                "live": old["counts"][kind]["live"]
                + sum(map(len, self._ids[kind]))
                - len(self._removed[kind]),
                "removed": old["counts"][kind]["removed"] + len(self._removed[kind]),
            }
            for kind in collections
        }
        meta = generation_name("meta", self.generation, "sqlite")
        files[meta] = publish_with(
            directory / meta,
            lambda tmp: index.meta.write_version(
                tmp, list(self._images.items()), self._texts, self._removed[IMAGES], self._removed[TEXTS]
            ),
        )
        manifest = {
            **old,
            "generation": self.generation,
            "next_ids": self.next_ids,
            "counts": counts,
            "collections": collections,
            "meta": meta,
            "files": files,
        }
        return manifest


def _disk_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest on disk (None when there is none yet)."""
    return read_manifest(directory) if (directory / MANIFEST_NAME).is_file() else None


def _disk_generation(directory: Path) -> int:
    """The version the manifest on disk points at (0 when there is none yet)."""
    manifest = _disk_manifest(directory)
    return 0 if manifest is None else int(manifest["generation"])
