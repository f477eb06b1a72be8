"""The service's limits, apart from the app so that the CLI can show their defaults without importing FastAPI."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aladin.errors import AladinError


@dataclass(frozen=True)
class ServiceConfig:
    """Limits of the service. `image_root` defaults to the deepest folder holding every indexed image."""

    queue_size: int = 32  # model calls waiting or running; more are refused with 503
    max_upload_bytes: int = 10 * 2**20
    max_pixels: int = 40_000_000
    max_k: int = 100
    max_rerank: int = 1000
    max_query_chars: int = 1000
    image_root: Path | None = None

    def __post_init__(self) -> None:
        for name in ("queue_size", "max_upload_bytes", "max_pixels", "max_k", "max_query_chars"):
            if getattr(self, name) < 1:
                raise AladinError(f"service setting {name} must be >= 1, got {getattr(self, name)}")
        if self.max_rerank < 0:
            raise AladinError(f"service setting max_rerank must be >= 0, got {self.max_rerank}")
