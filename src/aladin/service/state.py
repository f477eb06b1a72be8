"""What every router shares: the limits, the model thread, the live index, and the request checks they all use."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import HTTPException
from fastapi import Path as PathParam

from aladin.data.folder import check_image_file
from aladin.index.metadata import IMAGES
from aladin.search.searcher import Searcher
from aladin.service.config import ServiceConfig
from aladin.service.live import LiveIndex, Served
from aladin.service.worker import ModelWorker

T = TypeVar("T")
#: Ids are SQLite integers: anything larger is no id at all (422, never a 500 from an overflow).
MAX_ID = 2**63 - 1
ItemId = Annotated[int, PathParam(ge=0, le=MAX_ID, description="an image id from a search result")]
THUMBNAIL_WORKERS = 4


@dataclass
class ServiceState:
    config: ServiceConfig
    worker: ModelWorker
    live: LiveIndex
    # Decoding a large photo takes memory: a few at a time, the rest wait briefly, then get 503.
    thumbnail_slots: threading.BoundedSemaphore = field(
        default_factory=lambda: threading.BoundedSemaphore(THUMBNAIL_WORKERS)
    )

    async def on_model(self, fn: Callable[[Searcher], T]) -> T:
        """Run `fn` with the current searcher on the model thread; the index is checked there, just before."""
        return await self.worker.run(lambda: fn(self.live.current().searcher))

    async def on_model_batched(
        self, key: Hashable, fn: Callable[[Searcher, Sequence[Any]], Sequence[Any]], item: Any
    ) -> Any:
        """Run `fn(searcher, [item, ...])` on the model thread together with queued items of the same `key`
        (the same `fn` and settings); returns this item's result (`fn` gives one result or exception per item)."""
        return await self.worker.run_batched(key, lambda items: fn(self.live.current().searcher, items), item)

    def query(self, q: str) -> str:
        """A text query within the limits, or 400."""
        if not q.strip():
            raise HTTPException(400, "empty query: give some words to search for")
        if len(q) > self.config.max_query_chars:
            raise HTTPException(
                400, f"query of {len(q)} characters; the limit is {self.config.max_query_chars}"
            )
        return q

    def live_image(self, item_id: int) -> Served:
        """The current version, after checking it holds image `item_id` (404 otherwise)."""
        served = self.live.current()
        if served.searcher.index.meta.missing(IMAGES, [item_id]):
            raise HTTPException(404, f"no image with id {item_id}")
        return served

    def image_file(self, item_id: int) -> Path:
        """The file of image `item_id`, served by the rule that decides what a build indexes
        (`check_image_file`): inside the served image folder (403), present (404), an image within the pixel
        limit (415)."""
        served = self.live_image(item_id)
        stored = Path(served.searcher.index.meta.images([item_id])[item_id].path)
        if not stored.resolve().is_relative_to(served.image_root):
            raise HTTPException(403, f"the file of image {item_id} is outside the served image folder")
        reason = check_image_file(served.image_root, stored, self.config.max_pixels)
        if reason in ("file not found", "dangling symlink"):
            raise HTTPException(404, f"the file of image {item_id} is missing")
        if reason is not None:
            raise HTTPException(415, f"the file of image {item_id} cannot be shown: {reason}")
        return stored.resolve()
