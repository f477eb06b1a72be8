"""Building an index from a source: encode everything batch by batch (resumable), then publish one version.

Encoded batches go to `<out>/.building/` as they are made, with progress.json saying how far the run got; a
rerun with the same model, source and batch size continues from there. Only when every batch is encoded is
the index written (one atomic switch) and the staging folder deleted.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

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
        state = self._resume(staging, source, with_texts)
        images = None if not source.needs_encoders else self.image_encoder()
        n_image_chunks = self._encode(
            staging,
            state,
            IMAGES,
            len(source.items),
            lambda a, b: embed_images(self.model, source.region_batch(a, b, images)),
        )
        n_text_chunks = 0
        if with_texts:
            texts = None if not source.needs_encoders else self.text_encoder()
            n_text_chunks = self._encode(
                staging,
                state,
                TEXTS,
                len(captions),
                lambda a, b: embed_texts(self.model, source.token_batch(a, b, texts)),
            )
        index = SearchIndex.create(out_dir, self.model, self.cfg, with_texts, self.checkpoint)
        with index.update() as up:
            image_ids = []
            for i in range(n_image_chunks):
                chunk = EncodedChunk.load(_chunk_path(staging, IMAGES, i))
                start = i * self.cfg.batch_size
                image_ids.extend(up.add_images(chunk, source.items[start : start + len(chunk)]).tolist())
            for i in range(n_text_chunks):
                chunk = EncodedChunk.load(_chunk_path(staging, TEXTS, i))
                part = captions[i * self.cfg.batch_size :][: len(chunk)]
                up.add_texts(chunk, [TextRecord(image_ids[owner], caption) for owner, caption in part])
        shutil.rmtree(staging)
        return index

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
        encode: Callable[[int, int], EncodedChunk],
    ) -> int:
        """Encode items [0, total) of `kind` in batches not yet on disk; returns the number of chunks."""
        size = self.cfg.batch_size
        done = state[kind]
        with tqdm(
            total=total, initial=min(done * size, total), desc=f"index {kind}", disable=not self.progress
        ) as bar:
            for start in range(done * size, total, size):
                stop = min(start + size, total)
                atomic_write(_chunk_path(staging, kind, start // size), encode(start, stop).save)
                state[kind] = start // size + 1
                write_json(staging / _PROGRESS, state)
                bar.update(stop - start)
        return -(-total // size)


def _chunk_path(staging: Path, kind: str, number: int) -> Path:
    return staging / f"{kind}-{number:06d}.npz"


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
