"""Liveness and what is served: both answer without the model thread."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from aladin.index.metadata import TEXTS
from aladin.service.state import ServiceState


def router(state: ServiceState) -> APIRouter:
    api = APIRouter(tags=["health"])
    config = state.config

    @api.get("/health")
    def health() -> dict[str, str]:
        """Liveness: answers without touching the model or the index."""
        return {"status": "ok"}

    @api.get("/stats")
    def stats() -> dict[str, Any]:
        """What is served (503 while the index is damaged), the queue's state and the limits."""
        searcher = state.live.current().searcher
        index = searcher.index
        return {
            "images": len(index),
            "collapse": searcher.duplicates is not None,  # a near-duplicate threshold is known for the model
            "captions": index.meta.count(TEXTS) if index.has_texts else None,
            "generation": index.generation,
            "model": index.manifest["model"]["fingerprint"],
            "queue": state.worker.stats(),
            "limits": {
                "max_upload_bytes": config.max_upload_bytes,
                "max_pixels": config.max_pixels,
                "max_k": config.max_k,
                "max_rerank": config.max_rerank,
            },
        }

    return api
