"""A persistent search index: global vectors in a backend (FAISS files or Milvus), packed region/word stores,
SQLite metadata, a manifest.

Every change (build, add, remove) is staged as new files and published by one atomic rename of the manifest
(see `aladin.index.manifest`), so a crash at any point leaves the previous version loadable and unchanged (for
what Milvus adds to that, see `aladin.index.milvus`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from aladin.config import config_to_dict
from aladin.encoders.image import ImageEncoder
from aladin.errors import AladinError, CheckpointError
from aladin.index.backend import VectorBackend, backend_class
from aladin.index.config import INDEX_FORMAT_VERSION, IndexConfig, saved_index_config
from aladin.index.filters import Filter
from aladin.index.manifest import (
    MANIFEST_NAME,
    read_manifest,
    verify_files,
)
from aladin.index.metadata import IMAGES, TEXTS, Metadata
from aladin.index.store import PackedStore
from aladin.index.update import IndexUpdate, disk_generation
from aladin.model.aladin import AladinModel


@dataclass
class Collection:
    """One searchable side (images or captions): the global vectors' backend and the store of per-item sets."""

    vectors: VectorBackend
    store: PackedStore
    entry: dict[str, Any]  # its part of the manifest


def _model_entry(model: AladinModel, checkpoint: str | None) -> dict[str, Any]:
    """The model part of a manifest; the checkpoint folder recorded absolute, so that `model_for_index` finds it
    from any working directory."""
    return {
        "fingerprint": model.fingerprint(),
        "config": config_to_dict(model.config),
        "checkpoint": os.path.abspath(checkpoint) if checkpoint else checkpoint,
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
        previous = disk_generation(directory)
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
            vectors = backend_class(cfg.backend).create(
                cfg, kind, m.global_dim, directory, model.fingerprint()
            )
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
            cfg = saved_index_config(manifest["index_config"], "manifest.json: index_config")
            meta = Metadata.open(directory / manifest["meta"])
            collections = {}
            for kind, entry in manifest["collections"].items():
                tombstones = meta.ids(kind, deleted=True) if entry.get("vectors_hold_deleted") else None
                vectors = backend_class(cfg.backend).open(cfg, kind, entry, directory, manifest, tombstones)
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
        return saved_index_config(self.manifest["index_config"], "index_config")

    @property
    def generation(self) -> int:
        return int(self.manifest["generation"])

    @property
    def has_texts(self) -> bool:
        return TEXTS in self.collections

    @property
    def image_root(self) -> Path | None:
        """The folder image external ids are relative to: the recorded one, else (an index that records none)
        the folder a folder-built index was made from, found from an image whose id is its relative path."""
        if self.meta.image_root is not None:
            return self.meta.image_root
        for record in self.meta.images(self.meta.ids(IMAGES)[:1].tolist()).values():
            path, relative = Path(record.path).absolute().parts, PurePosixPath(record.external_id).parts
            if relative and relative[0] != "/" and path[-len(relative) :] == relative:
                return Path(*path[: -len(relative)])
        return None

    def __len__(self) -> int:
        """Number of images that can be found (removed ones excluded)."""
        return int(self.manifest["counts"][IMAGES]["live"])

    def collection(self, kind: str) -> Collection:
        if kind not in self.collections:
            hint = " (build it with --with-texts for image→text search)" if kind == TEXTS else ""
            raise AladinError(f"{self.directory}: this index has no {kind}{hint}")
        return self.collections[kind]

    def search(
        self,
        kind: str,
        queries: np.ndarray,
        k: int,
        milvus_filter: str | None = None,
        where: Filter | None = None,
        matching: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """First stage: top-k global-vector inner products per query ([nq, k] scores and ids, -1 = none), among
        the items matching `milvus_filter` (a Milvus expression on image_id, external_id, path, folder; milvus
        backend only) and `where` (`aladin.index.filters`, any backend: k hits whenever k items match).
        `matching`: the ids `where` selects, when the caller has them already (`meta.matching(kind, where)`)."""
        vectors = self.collection(kind).vectors
        if where is None:
            return vectors.search(queries, k, milvus_filter)
        chosen = self.meta.matching(kind, where) if matching is None else matching
        everything = len(chosen) == self.meta.count(kind)  # no need to pass them all on
        return vectors.search(queries, k, milvus_filter, None if everything else chosen)

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
            "index_config": config_to_dict(self.config),  # complete: defaults from the class filled in
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
        """Encode and add images (files, or folders searched recursively); returns their new ids. Files already
        indexed are not added again (see `aladin.index.builder.add_images`, which also reports what it left out)."""
        from aladin.index.builder import add_images

        return add_images(self, paths, image_encoder, progress).ids

    def remove(self, ids: Iterable[int]) -> None:
        """Remove images (and their captions) from search; their ids are never given out again."""
        with self.update() as up:
            up.remove_images(ids)

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


def model_for_index(directory: str | Path, device: str | torch.device = "cpu") -> AladinModel:
    """The model that built the index in `directory`: its recorded checkpoint folder, or the bundled default
    model when that is what built it (matched by fingerprint); a clear error when neither is."""
    from aladin.model.pretrained import load_default_model

    directory = Path(directory)
    recorded = read_manifest(directory).get("model")
    if not isinstance(recorded, dict) or not isinstance(recorded.get("fingerprint"), str):
        raise CheckpointError(f"{directory / MANIFEST_NAME}: malformed index manifest: no model fingerprint")
    checkpoint = str(recorded.get("checkpoint") or "")
    loaders = [lambda: load_default_model(device)]
    if checkpoint:
        loaders.insert(0, lambda: AladinModel.from_pretrained(checkpoint, device))
    failed = ""
    for load in loaders:
        try:
            model = load()
        except (AladinError, OSError) as exc:
            failed = failed or f"; it cannot be loaded: {exc}"  # the recorded checkpoint's reason comes first
            continue
        if model.fingerprint() == recorded["fingerprint"]:
            return model
    built = f" ({checkpoint}){failed}" if checkpoint else ""
    raise AladinError(f"--model is required: the checkpoint folder of the model that built the index{built}")


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
