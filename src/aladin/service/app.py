"""The HTTP service: a JSON API over a `Searcher` plus the search page, safe to expose on a shared machine.

Every model call goes through one worker thread behind a bounded queue, concurrent searches batched together
(`aladin.service.worker`); requests are checked for their Host and upload size first (`aladin.service.guard`);
the index follows new versions on disk and answers 503 rather than read a damaged file (`aladin.service.live`). Files are served only by item id,
resolved through the index metadata and checked to lie inside the image root. The endpoints live in one
router per concern under `aladin.service.routes`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from aladin.errors import AladinError
from aladin.search.searcher import Searcher
from aladin.service.config import ServiceConfig
from aladin.service.guard import RequestGuard, busy_response
from aladin.service.live import IndexUnavailable, LiveIndex, default_image_root
from aladin.service.routes import explain, health, items, pages, search
from aladin.service.routes.pages import STATIC_DIR
from aladin.service.state import ServiceState
from aladin.service.worker import ModelWorker, ServiceBusy

__all__ = ["create_app", "default_image_root"]


def _error_handlers(app: FastAPI, config: ServiceConfig) -> None:
    """User errors are 400; a full queue and an unreadable index are 503 with a Retry-After."""

    @app.exception_handler(AladinError)
    async def user_error(_: Request, exc: AladinError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(ServiceBusy)
    async def busy(_: Request, exc: ServiceBusy) -> JSONResponse:
        return busy_response(config.queue_size)

    @app.exception_handler(IndexUnavailable)
    async def unavailable(_: Request, exc: IndexUnavailable) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "5"})


def create_app(searcher: Searcher, config: ServiceConfig | None = None) -> FastAPI:
    """The FastAPI app serving `searcher`'s index folder: JSON API under /api, /health, /stats, the page at /,
    the endpoint list at /docs (offline)."""
    config = config or ServiceConfig()
    state = ServiceState(
        config,
        ModelWorker(config.queue_size, config.max_batch, config.max_wait_ms),
        LiveIndex(searcher, config),
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        state.worker.close()

    app = FastAPI(
        title="aladin",
        description="Cross-modal image/text search: kNN over ALADIN's matching vectors, re-ranked by its alignment head.",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's pages load Swagger UI / ReDoc from a CDN: pages.router serves a local one
        redoc_url=None,
    )
    app.state.worker = state.worker
    app.state.service = state
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    _error_handlers(app, config)
    app.add_middleware(
        RequestGuard,
        max_bytes=config.max_upload_bytes,
        host_names=config.host_names(),
        turn_away=state.worker.turn_away,
        busy=busy_response(config.queue_size),
    )
    for router in (search.router(state), items.router(state), explain.router(state), health.router(state)):
        app.include_router(router)
    app.include_router(pages.router())
    return app
