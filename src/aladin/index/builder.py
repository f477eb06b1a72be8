"""Building an index from a source: encode everything batch by batch (resumable), then publish one version.

Encoded batches go to `<out>/.building/` as they are made, with progress.json saying how far the run got; a
rerun with the same model, source and batch size continues from there. Only when every batch is encoded is
the index written (one atomic switch) and the staging folder deleted.

A file that cannot be indexed (unreadable, not an image, too large, a symlink leading out of the folder) is
left out with a one-line warning and listed in the manifest's `skipped` (path and reason); `strict=True` stops
at the first one instead. Each encoded image batch has a JSON beside it naming the items it holds.

Under torchrun each rank encodes a contiguous run of the batches into `.building/ranks/<r>-of-<N>/` (resumable
the same way); after a barrier rank 0 writes the index from all of them, in order, so it is the index one
process builds.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from aladin import distributed
from aladin.data.folder import Skipped
from aladin.encoders.image import ImageEncoder, build_image_encoder
from aladin.encoders.text import TextEncoder, build_text_encoder
from aladin.errors import AladinError
from aladin.fileio import atomic_write, read_json, write_json
from aladin.index.backend import backend_class
from aladin.index.config import INDEX_FORMAT_VERSION, IndexConfig
from aladin.index.encoding import embed_images, embed_texts, model_device
from aladin.index.index import SearchIndex
from aladin.index.manifest import MANIFEST_NAME
from aladin.index.metadata import IMAGES, TEXTS, FileState, ImageRecord, TextRecord
from aladin.index.sources import (
    IndexSource,
    external_id_for,
    find_images,
    open_source,
    read_image_batches,
    warn_skipped,
)
from aladin.index.store import EncodedChunk
from aladin.index.update import IndexUpdate
from aladin.model.aladin import AladinModel

BUILDING_DIR = ".building"
_PROGRESS = "progress.json"
#: Manifest key of the files left out: a list of {"path", "reason"}.
SKIPPED = "skipped"


class IndexBuilder:
    """Encodes a source with `model` and writes it as a new index (`build`)."""

    def __init__(
        self,
        model: AladinModel,
        cfg: IndexConfig | None = None,
        image_encoder: ImageEncoder | None = None,
        text_encoder: TextEncoder | None = None,
        progress: bool = True,
        checkpoint: str | None = None,
    ):
        self.model = model.eval()
        self.cfg = cfg or IndexConfig()
        self._image_encoder = image_encoder
        self._text_encoder = text_encoder
        self.progress = progress
        self.checkpoint = checkpoint

    def image_encoder(self) -> ImageEncoder:
        """The frozen image encoder the model was trained on (built on first use)."""
        if self._image_encoder is None:
            cfg = self.model.config.image_encoder
            self._image_encoder = build_image_encoder(cfg, model_device(self.model))
        return self._image_encoder

    def text_encoder(self) -> TextEncoder:
        if self._text_encoder is None:
            cfg = self.model.config.text_encoder
            self._text_encoder = build_text_encoder(cfg, model_device(self.model))
        return self._text_encoder

    def build(
        self,
        source: str | Path | IndexSource,
        out_dir: str | Path,
        with_texts: bool = False,
        split: str | None = None,
        overwrite: bool = False,
        strict: bool = False,
    ) -> SearchIndex:
        """Index every image of `source` (and, `with_texts`, its captions) into `out_dir`; files that cannot be
        indexed are left out and listed in the manifest (`strict`: the first one stops the build)."""
        distributed.init_from_env()
        distributed.to_local_device(self.model)
        out_dir = Path(out_dir)
        if not isinstance(source, IndexSource):
            source = open_source(source, split, self.model.config)
        self._check_target(source, out_dir, with_texts, overwrite, strict)
        staging = out_dir / BUILDING_DIR
        shard_dirs = distributed.rank_folders(staging)
        chunks = self._encode_source(source, shard_dirs[distributed.rank()], with_texts, strict)
        distributed.barrier()  # every rank's batches are on disk
        index = distributed.on_main_process(
            lambda: self._write_index(source, out_dir, with_texts, shard_dirs, chunks)
        )
        return index if index is not None else SearchIndex.load(out_dir, self.model)

    def _check_target(
        self, source: IndexSource, out_dir: Path, with_texts: bool, overwrite: bool, strict: bool
    ) -> None:
        """What can be refused is refused before any encoding."""
        if (out_dir / MANIFEST_NAME).is_file() and not overwrite:
            raise AladinError(
                f"{out_dir}: already holds an index (add to it with `index add`, or overwrite it)"
            )
        # an unreachable vector store must fail before the encoding, not after it
        backend_class(self.cfg.backend).preflight(self.cfg, out_dir, distributed.world_size())
        warn_skipped(source.skipped, strict)
        if with_texts and not source.captions:
            raise AladinError(
                f"{source.name}: no captions to index (texts need a dataset folder or a feature cache)"
            )

    def _encode_source(
        self, source: IndexSource, shard: Path, with_texts: bool, strict: bool
    ) -> dict[str, int]:
        """This rank's share of the images (and captions) encoded into `shard`; the chunk count of each kind."""
        state = self._resume(shard, source, with_texts)
        images = None if not source.needs_encoders else self.image_encoder()

        def encode_images(
            ranges: list[tuple[int, int]],
        ) -> Iterator[tuple[EncodedChunk | None, dict[str, Any]]]:
            for read in source.region_batches(ranges, images, strict):
                chunk = None if read.regions is None else embed_images(self.model, read.regions)
                yield chunk, {"kept": read.kept, SKIPPED: [s.to_json() for s in read.skipped]}

        def encode_texts(ranges: list[tuple[int, int]]) -> Iterator[tuple[EncodedChunk, None]]:
            texts = None if not source.needs_encoders else self.text_encoder()
            for start, stop in ranges:
                yield embed_texts(self.model, source.token_batch(start, stop, texts)), None

        chunks = {IMAGES: self._encode(shard, state, IMAGES, len(source.items), encode_images), TEXTS: 0}
        if with_texts:
            chunks[TEXTS] = self._encode(shard, state, TEXTS, len(source.captions), encode_texts)
        return chunks

    def _write_index(
        self,
        source: IndexSource,
        out_dir: Path,
        with_texts: bool,
        shard_dirs: list[Path],
        chunks: dict[str, int],
    ) -> SearchIndex:
        """The encoded batches of every rank published as one index version (on the main process)."""
        index = SearchIndex.create(out_dir, self.model, self.cfg, with_texts, self.checkpoint)
        index.meta.image_root = source.root
        image_chunks = _chunk_files(shard_dirs, IMAGES, chunks[IMAGES])
        batches = [read_json(_contents_path(path), "encoded batch contents") for path in image_chunks]
        skipped = [*source.skipped, *(Skipped(**s) for batch in batches for s in batch[SKIPPED])]
        captions = source.captions
        with index.update() as up:
            up.manifest_entries[SKIPPED] = [s.to_json() for s in skipped]
            image_ids: dict[int, int] = {}  # position in source.items → id
            for path, batch in zip(image_chunks, batches, strict=True):
                if batch["kept"]:
                    ids = up.add_images(EncodedChunk.load(path), [source.items[i] for i in batch["kept"]])
                    image_ids.update(zip(batch["kept"], ids.tolist(), strict=True))
                    if source.file_states:
                        up.record_files(ids.tolist(), [source.file_states[i] for i in batch["kept"]])
            for i, path in enumerate(_chunk_files(shard_dirs, TEXTS, chunks[TEXTS])):
                chunk = EncodedChunk.load(path)
                part = captions[i * self.cfg.batch_size :][: len(chunk)]
                keep = np.array([owner in image_ids for owner, _ in part])
                if keep.any():  # captions of an image left out are left out with it
                    records = [TextRecord(image_ids[o], caption) for o, caption in part if o in image_ids]
                    up.add_texts(_take(chunk, keep), records)
        shutil.rmtree(out_dir / BUILDING_DIR)
        return index

    def _resume(self, staging: Path, source: IndexSource, with_texts: bool) -> dict[str, Any]:
        """The progress of an interrupted build of the same thing, or a fresh start (stale staging deleted)."""
        identity = {
            "format_version": INDEX_FORMAT_VERSION,
            "model": self.model.fingerprint(),
            "source": source.fingerprint(),
            "batch_size": self.cfg.batch_size,
            "with_texts": with_texts,
            "batch_contents": 1,  # image batches list the items they hold (files can be left out)
        }
        try:
            saved = json.loads((staging / _PROGRESS).read_text())
        except (OSError, json.JSONDecodeError):
            saved = {}
        if saved.get("identity") == identity:
            return saved
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        return {"identity": identity, IMAGES: 0, TEXTS: 0}

    def _encode(
        self,
        staging: Path,
        state: dict[str, Any],
        kind: str,
        total: int,
        encode: Callable[
            [list[tuple[int, int]]], Iterator[tuple[EncodedChunk | None, dict[str, Any] | None]]
        ],
    ) -> int:
        """Encode this rank's batches of items [0, total) of `kind` not yet on disk (`encode` turns the (start,
        stop) of each into its chunk, in order, lazily, with the JSON of its contents it may give; no chunk when
        nothing could be encoded); returns the number of chunks (batches) of all ranks."""
        size = self.cfg.batch_size
        chunks = -(-total // size)
        first, stop = distributed.contiguous_range(chunks)
        done = state[kind]
        rows = min(stop * size, total) - first * size
        with tqdm(
            total=rows,
            initial=min(done * size, rows),
            desc=f"index {kind}",
            disable=not self.progress or not distributed.is_main_process(),
        ) as bar:
            numbers = range(first + done, stop)
            ranges = [(number * size, min((number + 1) * size, total)) for number in numbers]
            for number, (start, end), (chunk, contents) in zip(numbers, ranges, encode(ranges), strict=True):
                path = _chunk_path(staging, kind, number)
                if contents is not None:
                    write_json(_contents_path(path), contents)
                if chunk is not None:
                    atomic_write(path, chunk.save)
                state[kind] = number - first + 1
                write_json(staging / _PROGRESS, state)
                bar.update(end - start)
        return chunks


def _chunk_path(staging: Path, kind: str, number: int) -> Path:
    return staging / f"{kind}-{number:06d}.npz"


def _contents_path(chunk: Path) -> Path:
    return chunk.with_suffix(".json")


def _take(chunk: EncodedChunk, keep: np.ndarray) -> EncodedChunk:
    """The items of `chunk` where `keep` is True (with their rows)."""
    rows = np.repeat(keep, chunk.counts)
    boxes = None if chunk.boxes is None else chunk.boxes[rows]
    return EncodedChunk(chunk.global_vectors[keep], chunk.rows[rows], chunk.counts[keep], boxes)


def _chunk_files(shard_dirs: list[Path], kind: str, chunks: int) -> list[Path]:
    """Every chunk of `kind` in order, each in the folder of the rank that encoded it."""
    bounds = distributed.shard_bounds(chunks, len(shard_dirs))
    return [
        _chunk_path(d, kind, i)
        for d, (first, stop) in zip(shard_dirs, bounds, strict=True)
        for i in range(first, stop)
    ]


def build_index(
    source: str | Path | IndexSource,
    model: AladinModel,
    out_dir: str | Path,
    cfg: IndexConfig | None = None,
    image_encoder: ImageEncoder | None = None,
    text_encoder: TextEncoder | None = None,
    with_texts: bool = False,
    split: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    checkpoint: str | None = None,
    strict: bool = False,
) -> SearchIndex:
    """Encode `source` (a folder of images, a dataset folder or a feature cache split) into a new index."""
    builder = IndexBuilder(model, cfg, image_encoder, text_encoder, progress, checkpoint)
    return builder.build(
        source, out_dir, with_texts=with_texts, split=split, overwrite=overwrite, strict=strict
    )


@dataclass
class AddReport:
    """What `index add` did: the new ids, the files already indexed (left as they are) and those left out."""

    ids: list[int]
    already_indexed: list[str]
    skipped: list[Skipped]

    def summary(self) -> str:
        parts = [
            f"added {len(self.ids)} images" + (f" (ids {self.ids[0]}..{self.ids[-1]})" if self.ids else "")
        ]
        if self.already_indexed:
            parts.append(f"skipped {len(self.already_indexed)} already indexed")
        if self.skipped:
            parts.append(f"skipped {len(self.skipped)} that cannot be indexed")
        return ", ".join(parts)


def add_images(
    index: SearchIndex,
    paths: Iterable[str | Path],
    image_encoder: ImageEncoder | None = None,
    progress: bool = False,
    strict: bool = False,
) -> AddReport:
    """Encode image files (or folders, searched recursively) into `index`, named like `build` names them.

    A file already indexed (same path, live) is left as it is, never added twice; files that cannot be indexed
    are left out with a warning and listed in the manifest (`strict`: the first one stops before any change).
    """
    encoding_model(index)  # refused before any file is read
    files, skipped = find_images(paths)
    warn_skipped(skipped, strict)
    seen = index.meta.live_paths()
    new: list[str] = []
    already: list[str] = []
    for file in map(os.path.abspath, files):
        (already if file in seen else new).append(file)
        seen.add(file)
    old_skipped = index.manifest.get(SKIPPED, [])
    if not new and _merge_skipped(old_skipped, files, skipped) == old_skipped:
        return AddReport([], already, skipped)  # nothing changes: no new version
    states = [FileState.of(path) for path in new]  # before decoding: a later change shows at the next sync
    with index.update() as up:
        ids, bad = encode_files(up, new, states, image_encoder, strict, "add" if progress else None)
        skipped.extend(bad)
        up.manifest_entries[SKIPPED] = _merge_skipped(old_skipped, files, skipped)
    return AddReport(ids, already, skipped)


def encode_files(
    up: IndexUpdate,
    paths: Sequence[str],
    states: Sequence[FileState],
    image_encoder: ImageEncoder | None = None,
    strict: bool = False,
    progress: str | None = None,
) -> tuple[list[int], list[Skipped]]:
    """Encode image files into update `up`, named like `build` names them, each with its file state (taken
    before decoding); returns the new ids and the files that could not be read. `progress`: the bar's label."""
    index = up.index
    model = encoding_model(index)
    encoder = image_encoder or build_image_encoder(model.config.image_encoder, model_device(model))
    size = index.config.batch_size
    starts = range(0, len(paths), size)
    batches = [list(paths[start : start + size]) for start in starts]
    ids: list[int] = []
    skipped: list[Skipped] = []
    with tqdm(total=len(paths), desc=progress, unit="image", disable=progress is None) as bar:
        for start, batch, (images, kept, bad) in zip(
            starts, batches, read_image_batches(batches, encoder, strict), strict=True
        ):
            skipped.extend(bad)
            if images:
                records = [ImageRecord(batch[i], external_id_for(index.image_root, batch[i])) for i in kept]
                added = up.add_images(embed_images(model, encoder.encode(images)), records).tolist()
                up.record_files(added, [states[start + i] for i in kept])
                ids.extend(added)
            bar.update(len(batch))
    return ids, skipped


def encoding_model(index: SearchIndex) -> AladinModel:
    """The model images are encoded with: the one the index was loaded with."""
    if index.model is None:
        raise AladinError(f"{index.directory}: to add images, load the index with the model that built it")
    return index.model


def _merge_skipped(
    old: list[dict[str, str]], files: list[Path], skipped: list[Skipped]
) -> list[dict[str, str]]:
    """The manifest's list of files left out after an add: earlier entries for files this add did not look at,
    then what it left out."""
    looked_at = {str(f) for f in files} | {s.path for s in skipped}
    return [entry for entry in old if entry["path"] not in looked_at] + [s.to_json() for s in skipped]
