"""Moving an index to another vector backend (FAISS ↔ Milvus) without encoding anything again.

The region store and metadata files are immutable, so the new index folder links (or copies) them as they are;
only the global vectors move, read back from the source backend by id and written into the new one.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from aladin.config import config_to_dict
from aladin.errors import AladinError
from aladin.fileio import temp_file
from aladin.index.backend import backend_class, row_fields
from aladin.index.config import IndexConfig
from aladin.index.index import SearchIndex
from aladin.index.manifest import (
    MANIFEST_NAME,
    collect_garbage,
    publish,
    write_manifest,
    writer_lock,
)
from aladin.index.metadata import IMAGES, ImageRecord, Metadata

#: Vectors read from the source backend at a time.
CHUNK = 10_000


def migrate_index(
    source: str | Path,
    target: str | Path,
    backend: str,
    uri: str = "",
    collection: str = "",
    factory: str | None = None,
) -> SearchIndex:
    """A copy of the index in `source` in a new folder `target`, its vectors in `backend` (with `uri` and
    `collection` for milvus) and, if given, another `factory`; `source` is left as it is."""
    source, target = Path(source), Path(target)
    old = SearchIndex.load(source)
    cfg = replace(
        old.config, backend=backend, uri=uri, collection=collection, factory=factory or old.config.factory
    )
    if (target / MANIFEST_NAME).is_file():
        raise AladinError(f"{target}: already holds an index (migrate into a new folder)")
    generation = old.generation
    with writer_lock(target):
        try:
            manifest = _copy(old, target, cfg, generation)
            write_manifest(target, manifest)
        except BaseException:
            collect_garbage(target, {"files": {}})  # no manifest refers to what was linked so far
            raise
    return SearchIndex.load(target)


def _copy(old: SearchIndex, target: Path, cfg: IndexConfig, generation: int) -> dict[str, Any]:
    """Link the store and metadata files into `target`, fill the new backends; returns the new manifest."""
    vector_files = {entry.get("vectors") for entry in old.manifest["collections"].values()}
    files = {}
    for name, record in old.manifest["files"].items():
        if name not in vector_files:
            tmp = temp_file(target / name)
            tmp.unlink()
            _link_or_copy(old.directory / name, tmp)
            files[name] = publish(tmp, target / name, record["sha256"])
    collections = {}
    for kind, current in old.collections.items():
        backend = backend_class(cfg.backend).create(
            cfg, kind, current.entry["global_dim"], target, old.manifest["model"]["fingerprint"]
        )
        ids = old.meta.ids(kind)
        for start in range(0, len(ids), CHUNK):
            part = ids[start : start + CHUNK]
            fields = [row_fields(image_id, record) for image_id, record in _owners(old.meta, kind, part)]
            backend.add(part, current.vectors.fetch(part), fields)
        keys, records = backend.save(target, generation)
        backend.commit()
        files.update(records)
        collections[kind] = {**current.entry, "vectors_hold_deleted": False, **keys}
    return {**old.manifest, "index_config": config_to_dict(cfg), "collections": collections, "files": files}


def _owners(meta: Metadata, kind: str, ids: np.ndarray) -> list[tuple[int, ImageRecord]]:
    """(image id, image record) of each item: the image itself, or the image a caption describes."""
    if kind == IMAGES:
        images = meta.images(ids)
        return [(int(i), images[int(i)]) for i in ids]
    texts = meta.texts(ids)
    images = meta.images({t.image_id for t in texts.values()})
    return [(texts[int(i)].image_id, images[texts[int(i)].image_id]) for i in ids]


def _link_or_copy(src: Path, dst: Path) -> None:
    """Published index files are never changed in place, so a hard link is a safe, instant copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
