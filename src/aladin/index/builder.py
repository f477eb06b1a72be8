"""Building an index from a source: encode everything batch by batch (resumable), then publish one version.

Encoded batches go to `<out>/.building/` as they are made, with progress.json saying how far the run got; a
rerun with the same model, source and batch size continues from there. Only when every batch is encoded is
the index written (one atomic switch) and the staging folder deleted.

Under torchrun each rank encodes a contiguous run of the batches into `.building/ranks/<r>-of-<N>/` (resumable
the same way); after a barrier rank 0 writes the index from all of them, in order, so it is the index one
process builds.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from aladin import distributed
from aladin.encoders.image import ImageEncoder, build_image_encoder
from aladin.encoders.text import TextEncoder, build_text_encoder
from aladin.errors import AladinError
from aladin.fileio import atomic_write, write_json
from aladin.index.config import INDEX_FORMAT_VERSION, IndexConfig
from aladin.index.encoding import embed_images, embed_texts, model_device
from aladin.index.index import SearchIndex
from aladin.index.manifest import MANIFEST_NAME
from aladin.index.metadata import IMAGES, TEXTS, TextRecord
from aladin.index.sources import IndexSource, open_source
from aladin.index.store import EncodedChunk
from aladin.model.aladin import AladinModel

BUILDING_DIR = ".building"
_PROGRESS = "progress.json"


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
    ) -> SearchIndex:
        """Index every image of `source` (and, `with_texts`, its captions) into `out_dir`."""
        distributed.init_from_env()
        distributed.to_local_device(self.model)
        out_dir = Path(out_dir)
        if not isinstance(source, IndexSource):
            source = open_source(source, split, self.model.config)
        if (out_dir / MANIFEST_NAME).is_file() and not overwrite:
            raise AladinError(
                f"{out_dir}: already holds an index (add to it with `index add`, or overwrite it)"
            )
        captions = source.captions
        if with_texts and not captions:
            raise AladinError(
                f"{source.name}: no captions to index (texts need a dataset folder or a feature cache)"
            )
        staging = out_dir / BUILDING_DIR
        shard_dirs = distributed.rank_folders(staging)
        shard = shard_dirs[distributed.rank()]
        state = self._resume(shard, source, with_texts)
        images = None if not source.needs_encoders else self.image_encoder()
        n_image_chunks = self._encode(
            shard,
            state,
            IMAGES,
            len(source.items),
            lambda ranges: (embed_images(self.model, b) for b in source.region_batches(ranges, images)),
        )
        n_text_chunks = 0
        if with_texts:
            texts = None if not source.needs_encoders else self.text_encoder()
            n_text_chunks = self._encode(
                shard,
                state,
                TEXTS,
                len(captions),
                lambda ranges: (embed_texts(self.model, source.token_batch(a, b, texts)) for a, b in ranges),
            )
        distributed.barrier()  # every rank's batches are on disk

        def write_index() -> SearchIndex:
            index = SearchIndex.create(out_dir, self.model, self.cfg, with_texts, self.checkpoint)
            with index.update() as up:
                image_ids = []
                for i, path in enumerate(_chunk_files(shard_dirs, IMAGES, n_image_chunks)):
                    chunk = EncodedChunk.load(path)
                    start = i * self.cfg.batch_size
                    image_ids.extend(up.add_images(chunk, source.items[start : start + len(chunk)]).tolist())
                for i, path in enumerate(_chunk_files(shard_dirs, TEXTS, n_text_chunks)):
                    chunk = EncodedChunk.load(path)
                    part = captions[i * self.cfg.batch_size :][: len(chunk)]
                    up.add_texts(chunk, [TextRecord(image_ids[owner], caption) for owner, caption in part])
            shutil.rmtree(staging)
            return index

        index = distributed.on_main_process(write_index)
        return index if index is not None else SearchIndex.load(out_dir, self.model)

    def _resume(self, staging: Path, source: IndexSource, with_texts: bool) -> dict[str, Any]:
        """The progress of an interrupted build of the same thing, or a fresh start (stale staging deleted)."""
        identity = {
            "format_version": INDEX_FORMAT_VERSION,
            "model": self.model.fingerprint(),
            "source": source.fingerprint(),
            "batch_size": self.cfg.batch_size,
            "with_texts": with_texts,
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
        encode: Callable[[list[tuple[int, int]]], Iterator[EncodedChunk]],
    ) -> int:
        """Encode this rank's batches of items [0, total) of `kind` not yet on disk (`encode` turns the (start,
        stop) of each into its chunk, in order, lazily); returns the number of chunks (batches) of all ranks."""
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
            for number, (start, end), chunk in zip(numbers, ranges, encode(ranges), strict=True):
                atomic_write(_chunk_path(staging, kind, number), chunk.save)
                state[kind] = number - first + 1
                write_json(staging / _PROGRESS, state)
                bar.update(end - start)
        return chunks


def _chunk_path(staging: Path, kind: str, number: int) -> Path:
    return staging / f"{kind}-{number:06d}.npz"


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
) -> SearchIndex:
    """Encode `source` (a folder of images, a dataset folder or a feature cache split) into a new index."""
    builder = IndexBuilder(model, cfg, image_encoder, text_encoder, progress, checkpoint)
    return builder.build(source, out_dir, with_texts=with_texts, split=split, overwrite=overwrite)
