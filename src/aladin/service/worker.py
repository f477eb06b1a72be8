"""The model thread: every model call runs on one worker thread behind a bounded queue, so concurrent requests
never run the model at the same time and a flood gets 503 at once instead of piling up."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

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

    def stats(self) -> dict[str, int]:
        return {
            "size": self.size,
            "pending": self.pending,
            "completed": self.completed,
            "rejected": self.rejected,
        }

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
