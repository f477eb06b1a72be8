"""The HTTP service: a JSON API over a `Searcher` plus the search page, safe to expose on a shared machine.

Every model call goes through one worker thread behind a bounded queue, so concurrent requests never run the
model at the same time and a flood gets 503 at once instead of piling up. Uploads are limited in bytes and
pixels before they are decoded, and files are served only by item id, resolved through the index metadata and
checked to lie inside the image root.
"""

import asyncio
import io
import os
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from fastapi import FastAPI, File, HTTPException, Query, Request, Response, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aladin.data.images import ImageTooLarge, decode_image_bytes
from aladin.errors import AladinError, DataError
from aladin.index.metadata import IMAGES, TEXTS
from aladin.search.searcher import Hit, Searcher
from aladin.service.config import ServiceConfig

STATIC_DIR = Path(__file__).parent / "static"
#: Room for the multipart envelope around an upload when checking Content-Length against the byte limit.
_MULTIPART_SLACK = 16 * 1024
#: The page loads only its own scripts, styles and images.
_PAGE_POLICY = "default-src 'self'; img-src 'self' blob: data:"
T = TypeVar("T")


class ServiceBusy(Exception):
    """The model queue is full: the request is refused now rather than left waiting."""


class ModelWorker:
    """Runs model calls one at a time on a single thread; at most `size` calls wait or run, others are refused."""

    def __init__(self, size: int):
        self.size = size
        self.pending = 0
        self.completed = 0
        self.rejected = 0
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aladin-model")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Queue `fn(*args)` on the model thread and await it; raises ServiceBusy when the queue is full."""
        return await asyncio.wrap_future(self.submit(fn, *args))

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Queue `fn(*args)` on the model thread, or raise ServiceBusy at once when the queue is full."""
        with self._lock:
            if self.pending >= self.size:
                self.rejected += 1
                raise ServiceBusy
            self.pending += 1
        try:
            future = self._executor.submit(fn, *args)
        except RuntimeError:  # shut down
            self._finished(None)
            raise ServiceBusy from None
        future.add_done_callback(self._finished)
        return future

    def _finished(self, future: Future | None) -> None:
        with self._lock:
            self.pending -= 1
            if future is not None and not future.cancelled():
                self.completed += 1

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def too_big(size: int, limit: int) -> str:
    return f"upload of {size:,} bytes is over the limit of {limit:,}"


class UploadGuard:
    """ASGI middleware: refuses an upload from its Content-Length, before its body is read, and marks every
    response nosniff. Plain ASGI rather than `@app.middleware`, which costs every request (503s included) more."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] == "POST":
            length = dict(scope["headers"]).get(b"content-length", b"")
            refusal = None
            if not length.isdigit():
                refusal = JSONResponse({"detail": "uploads need a Content-Length header"}, status_code=411)
            elif int(length) > self.max_bytes + _MULTIPART_SLACK:
                refusal = JSONResponse({"detail": too_big(int(length), self.max_bytes)}, status_code=413)
            if refusal is not None:
                await refusal(scope, receive, send)
                return

        async def send_hardened(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-content-type-options", b"nosniff")]
            await send(message)

        await self.app(scope, receive, send_hardened)


class HitOut(BaseModel):
    id: int
    score: float
    first_stage_score: float | None
    external_id: str
    image_id: int
    caption: str | None
    thumbnail: str


class SearchOut(BaseModel):
    query: str
    target: str
    rerank: int
    hits: list[HitOut]


class ItemOut(BaseModel):
    id: int
    external_id: str
    name: str
    captions: list[str]
    thumbnail: str


class ExplainOut(BaseModel):
    item_id: int
    text: str
    words: list[str]  # the text's content words (stop words folded out, word pieces into whole words)
    similarity: list[list[float]]  # [words, regions]: each word alone against each region
    query_similarity: list[float]  # [regions]: the whole text as the alignment head reads it
    boxes: list[list[float]] | None  # [regions, 4]: x1, y1, x2, y2 in 0..1
    score: float
    thumbnail: str


def thumbnail_url(image_id: int) -> str:
    return f"/api/items/{image_id}/thumbnail"


def _hit_out(hit: Hit) -> HitOut:
    """A hit without the server's file path (the client gets the image through its thumbnail URL)."""
    fields = hit.to_json()
    fields.pop("path")
    return HitOut(**fields, thumbnail=thumbnail_url(hit.image_id))


THUMBNAIL_SIZES = (64, 128, 256, 512)
THUMBNAIL_WORKERS = 4
THUMBNAIL_WAIT_S = 10.0


def default_image_root(searcher: Searcher) -> Path:
    """The deepest folder that holds every live indexed image: thumbnails are served from inside it only."""
    meta = searcher.index.meta
    # absolute but not resolved: a symlink inside the dataset that leads out of it is then refused
    paths = [os.path.dirname(os.path.abspath(r.path)) for r in meta.images(meta.ids(IMAGES)).values()]
    return Path(os.path.commonpath(paths)) if paths else Path.cwd()


def decode_image(data: bytes, max_pixels: int, what: str = "the upload") -> Image.Image:
    """Upload bytes → the RGB image indexing would make of the same file (one decoder for both), as 4xx errors."""
    try:
        return decode_image_bytes(data, what, max_pixels)
    except ImageTooLarge as exc:
        raise HTTPException(413, str(exc)) from None
    except DataError:
        raise HTTPException(
            400, f"{what} is not an image that can be decoded (PNG, JPEG, WebP, ...)"
        ) from None


def create_app(searcher: Searcher, config: ServiceConfig | None = None) -> FastAPI:
    """The FastAPI app serving `searcher`: JSON API under /api, /health, /stats, the page at /, docs at /docs."""
    config = config or ServiceConfig()
    worker = ModelWorker(config.queue_size)
    index = searcher.index
    image_root = (config.image_root or default_image_root(searcher)).resolve()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        worker.close()

    app = FastAPI(
        title="aladin",
        description="Cross-modal image/text search: kNN over ALADIN's matching vectors, re-ranked by its alignment head.",
        lifespan=lifespan,
    )
    app.state.worker = worker
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.exception_handler(AladinError)
    async def user_error(_: Request, exc: AladinError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(ServiceBusy)
    async def busy(_: Request, exc: ServiceBusy) -> JSONResponse:
        detail = f"busy: {config.queue_size} searches are already queued; retry shortly"
        return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": "1"})

    app.add_middleware(UploadGuard, max_bytes=config.max_upload_bytes)

    def _query(q: str) -> str:
        if not q.strip():
            raise HTTPException(400, "empty query: give some words to search for")
        if len(q) > config.max_query_chars:
            raise HTTPException(400, f"query of {len(q)} characters; the limit is {config.max_query_chars}")
        return q

    def _live(item_id: int) -> None:
        if index.meta.missing(IMAGES, [item_id]):
            raise HTTPException(404, f"no image with id {item_id}")

    K = Annotated[int, Query(ge=1, le=config.max_k, description="results to return")]
    Rerank = Annotated[
        int | None,
        Query(
            ge=0,
            le=config.max_rerank,
            description="kNN candidates re-ranked by the alignment head (0: none; absent: the model's "
            "setting chosen on validation)",
        ),
    ]

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Content-Security-Policy": _PAGE_POLICY})

    @app.get("/health")
    def health() -> dict[str, str]:
        """Liveness: answers without touching the model."""
        return {"status": "ok"}

    @app.get("/stats")
    def stats() -> dict[str, Any]:
        """What is served, the queue's state and the limits."""
        return {
            "images": len(index),
            "captions": index.meta.count(TEXTS) if index.has_texts else None,
            "generation": index.generation,
            "model": index.manifest["model"]["fingerprint"],
            "queue": {
                "size": worker.size,
                "pending": worker.pending,
                "completed": worker.completed,
                "rejected": worker.rejected,
            },
            "limits": {
                "max_upload_bytes": config.max_upload_bytes,
                "max_pixels": config.max_pixels,
                "max_k": config.max_k,
                "max_rerank": config.max_rerank,
            },
        }

    @app.get("/api/search")
    async def search_text(
        q: Annotated[str, Query(description="the text to find images for")], k: K = 10, rerank: Rerank = None
    ) -> SearchOut:
        """Text → images."""
        depth = searcher.rerank_depth(rerank)
        hits = await worker.run(searcher.search_text, _query(q), k, depth)
        return SearchOut(query=q, target=IMAGES, rerank=depth, hits=[_hit_out(h) for h in hits])

    @app.post("/api/search/image")
    async def search_image(
        file: Annotated[UploadFile, File(description="the query image")],
        target: Literal["images", "texts"] = "images",
        k: K = 10,
        rerank: Rerank = None,
    ) -> SearchOut:
        """Image → similar images, or image → captions (target=texts, re-ranked like text search)."""
        if target == TEXTS and not index.has_texts:
            raise HTTPException(400, "this index holds no captions (build it with --with-texts)")
        data = await file.read(config.max_upload_bytes + 1)
        if len(data) > config.max_upload_bytes:
            raise HTTPException(413, too_big(len(data), config.max_upload_bytes))
        if not data:
            raise HTTPException(400, "the upload is empty")

        depth = searcher.rerank_depth(rerank)

        def run() -> list[Hit]:
            return searcher.search_image(decode_image(data, config.max_pixels), k, depth, target=target)

        hits = await worker.run(run)
        name = file.filename or "upload"
        return SearchOut(
            query=name,
            target=target,
            rerank=depth if target == TEXTS else 0,
            hits=[_hit_out(h) for h in hits],
        )

    @app.get("/api/items/{item_id}")
    def item(item_id: int) -> ItemOut:
        """An indexed image's details: its external id, file name and captions."""
        _live(item_id)
        record = index.meta.images([item_id])[item_id]
        return ItemOut(
            id=item_id,
            external_id=record.external_id,
            name=Path(record.path).name,
            captions=list(record.captions),
            thumbnail=thumbnail_url(item_id),
        )

    @lru_cache(maxsize=512)
    def thumbnail_bytes(item_id: int, size: int) -> bytes:
        path = Path(index.meta.images([item_id])[item_id].path).resolve()
        if not path.is_relative_to(image_root):
            raise HTTPException(403, f"the file of image {item_id} is outside the served image folder")
        if not path.is_file():
            raise HTTPException(404, f"the file of image {item_id} is missing")
        try:
            img = decode_image(path.read_bytes(), config.max_pixels, f"the file of image {item_id}")
        except HTTPException as exc:
            raise HTTPException(404, exc.detail) from None
        img.thumbnail((size, size))
        out = io.BytesIO()
        img.save(out, format="JPEG", quality=85)
        return out.getvalue()

    # Decoding a large photo takes memory: a few at a time, the rest wait briefly, then get 503.
    thumbnail_slots = threading.BoundedSemaphore(THUMBNAIL_WORKERS)

    @app.get("/api/items/{item_id}/thumbnail", response_class=Response)
    def thumbnail(item_id: int, size: Annotated[int, Query(ge=16, le=THUMBNAIL_SIZES[-1])] = 256) -> Response:
        """A JPEG of an indexed image, at most `size` pixels a side (rounded up to one of a few sizes, so the
        cache stays bounded); only by id, never by path."""
        _live(item_id)
        size = next(allowed for allowed in THUMBNAIL_SIZES if allowed >= size)
        if not thumbnail_slots.acquire(timeout=THUMBNAIL_WAIT_S):
            raise HTTPException(503, "busy making thumbnails; try again", headers={"Retry-After": "1"})
        try:
            data = thumbnail_bytes(item_id, size)
        finally:
            thumbnail_slots.release()
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/api/explain")
    async def explain(q: str, item_id: Annotated[int, Query(alias="id")]) -> ExplainOut:
        """Why image `id` matches text `q`: each content word's and the whole text's cosine with each region."""
        text = _query(q)
        _live(item_id)
        found = await worker.run(searcher.explain, text, item_id)
        return ExplainOut(
            item_id=item_id,
            text=text,
            words=found.words,
            similarity=found.similarity.round(4).tolist(),
            query_similarity=found.query_similarity.round(4).tolist(),
            boxes=None if found.boxes is None else found.boxes[:, :4].round(4).tolist(),
            score=found.score,
            thumbnail=thumbnail_url(item_id),
        )

    return app
