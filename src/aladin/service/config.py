"""The service's limits, apart from the app so that the CLI can show their defaults without importing FastAPI."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aladin.errors import AladinError

#: Host names a browser on this machine uses for a loopback server; always accepted.
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


@dataclass(frozen=True)
class ServiceConfig:
    """Limits of the service. `image_root` defaults to the deepest folder holding every indexed image.

    Requests whose Host header names neither a loopback name, nor `host` (the bound address), nor one of
    `allowed_hosts` are refused, so a web page cannot reach the service through a DNS name rebound to it.
    """

    queue_size: int = 32  # model calls waiting or running; more are refused with 503
    # Searches run together in one model call: at most max_batch (1: batching off), the model thread waiting
    # up to max_wait_ms for more once it has one under load. The defaults are what `benchmarks/load.py --sweep`
    # chose (max batch 8/16/32 × max wait 1/2/5 ms at 32 clients, benchmarks/results/load_sweep.md): 32 had
    # the best throughput and the lowest p95 on a quiet machine (171 searches/s, p95 222 ms).
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_upload_bytes: int = 10 * 2**20
    max_pixels: int = 40_000_000
    max_k: int = 100
    max_rerank: int = 1000
    max_query_chars: int = 1000
    image_root: Path | None = None
    host: str = "127.0.0.1"
    allowed_hosts: tuple[str, ...] = ()  # extra Host names (no port); "*" accepts any
    reload_check_ms: int = 500  # how often the index folder is checked for a new version, at most

    def __post_init__(self) -> None:
        for name in ("queue_size", "max_batch", "max_upload_bytes", "max_pixels", "max_k", "max_query_chars"):
            if getattr(self, name) < 1:
                raise AladinError(f"service setting {name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_rerank", "reload_check_ms", "max_wait_ms"):
            if getattr(self, name) < 0:
                raise AladinError(f"service setting {name} must be >= 0, got {getattr(self, name)}")
        for name in self.allowed_hosts:
            if not name or any(c in name for c in "/ ") or (":" in name and not name.startswith("[")):
                raise AladinError(
                    f"service setting allowed_hosts: {name!r} is not a host name (no scheme, port or path; "
                    "IPv6 in brackets)"
                )

    def host_names(self) -> frozenset[str] | None:
        """The accepted Host header names (lower case, without port); None when any is accepted."""
        if "*" in self.allowed_hosts:
            return None
        bound = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return frozenset(name.lower() for name in (*LOOPBACK_NAMES, bound, *self.allowed_hosts))
