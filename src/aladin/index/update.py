"""Changing an index: every change (build, add, remove) is staged as new files by an `IndexUpdate` and
published by one atomic rename of the manifest (see `aladin.index.manifest`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from aladin.errors import AladinError
from aladin.index.backend import release_replaced, row_fields
from aladin.index.manifest import (
    MANIFEST_NAME,
    collect_garbage,
    generation_name,
    publish_with,
    read_manifest,
    remove_generation,
    write_manifest,
    writer_lock,
)
from aladin.index.metadata import IMAGES, TEXTS, FileState, ImageRecord, TextRecord, id_array
from aladin.index.store import EncodedChunk, SegmentWriter

if TYPE_CHECKING:
    from aladin.index.index import SearchIndex

#: File stem of each collection's store segments.
STORE_STEMS = {IMAGES: "regions", TEXTS: "words"}


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
        self._moved: dict[int, ImageRecord] = {}
        self._files: dict[int, FileState] = {}
        #: Other manifest entries this version sets (e.g. the files a build or add left out): published with it,
        #: never seen in memory before the commit.
        self.manifest_entries: dict[str, Any] = {}
        self._stack = ExitStack()

    def __enter__(self) -> IndexUpdate:
        self._stack.enter_context(writer_lock(self.index.directory))
        on_disk = disk_generation(self.index.directory)
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
                STORE_STEMS[kind],
                self.generation,
                self.next_ids[kind],
                cfg.region_dtype,
                entry["row_dim"],
                quantizer=self.index.collection(
                    kind
                ).store.quantizer,  # later segments reuse the first's codec
                pq_m=cfg.pq_m,
                pq_nbits=cfg.pq_nbits,
                residual_centroids=cfg.residual_centroids,
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
        ids = np.unique(id_array(ids, self.index.directory))
        unknown = self.index.meta.missing(IMAGES, ids.tolist())
        if unknown:
            raise AladinError(
                f"{self.index.directory}: no image with id {', '.join(map(str, unknown[:5]))} "
                "(unknown or already removed)"
            )
        self._removed[IMAGES] = np.union1d(self._removed[IMAGES], ids)
        self._removed[TEXTS] = np.union1d(self._removed[TEXTS], self.index.meta.texts_of(ids.tolist()))

    def move_image(self, image_id: int, record: ImageRecord) -> None:
        """Stage a new path and external id for a live image whose file moved: its vectors stay as they are."""
        if self.index.meta.missing(IMAGES, [image_id]) or image_id in self._removed[IMAGES]:
            raise AladinError(f"{self.index.directory}: no image with id {image_id} to move")
        self._moved[int(image_id)] = record

    def record_files(self, ids: Sequence[int], states: Sequence[FileState]) -> None:
        """Stage the file state (`FileState`) of images, staged here or already indexed, for `index sync`."""
        self._files.update(zip(map(int, ids), states, strict=True))

    def _relabel_moved(self, kind: str) -> None:
        """Give the backend of `kind` the new `row_fields` of moved images (and of their captions)."""
        if not self._moved:
            return
        moved = sorted(self._moved)
        if kind == IMAGES:
            owners = [(i, i) for i in moved]
        else:
            texts = self.index.meta.texts(self.index.meta.texts_of(moved).tolist())
            owners = [(t, texts[t].image_id) for t in sorted(texts)]
        if owners:
            ids = np.array([item for item, _ in owners], np.int64)
            fields = [row_fields(owner, self._moved[owner]) for _, owner in owners]
            self.index.collection(kind).vectors.relabel(ids, fields)

    def _discard(self) -> None:
        for writer in self._writers.values():
            writer.discard()
        self._writers.clear()
        for collection in self.index.collections.values():
            collection.vectors.discard()

    def _commit(self) -> None:
        """Publish the new files, switch the manifest, then delete what no version refers to any more."""
        directory = self.index.directory
        replaced = disk_manifest(directory)
        try:
            manifest = self._publish()
            write_manifest(directory, manifest)
        except BaseException:
            self._discard()
            if disk_generation(directory) != self.generation:  # the switch did not happen: drop our files
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
            self._relabel_moved(kind)
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
                tmp,
                list(self._images.items()),
                self._texts,
                self._removed[IMAGES],
                self._removed[TEXTS],
                sorted(self._moved.items()),
                sorted(self._files.items()),
            ),
        )
        manifest = {
            **old,
            **self.manifest_entries,
            "generation": self.generation,
            "next_ids": self.next_ids,
            "counts": counts,
            "collections": collections,
            "meta": meta,
            "files": files,
        }
        return manifest


def disk_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest on disk (None when there is none yet)."""
    return read_manifest(directory) if (directory / MANIFEST_NAME).is_file() else None


def disk_generation(directory: Path) -> int:
    """The version the manifest on disk points at (0 when there is none yet)."""
    manifest = disk_manifest(directory)
    return 0 if manifest is None else int(manifest["generation"])
