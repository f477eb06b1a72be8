"""The model thread: every model call runs on one worker thread behind a bounded queue, so concurrent requests
never run the model at the same time and a flood gets 503 at once instead of piling up.

Searches that can share a batch (same batch key: kind, k, re-rank setting) are taken off the queue together, up
to `max_batch` of them, waiting at most `max_wait_ms` for more to arrive, and run as one call: one encoder
pass, one kNN call, one re-rank pass, far cheaper per query than one at a time. Other calls (explanations) run
alone. A batch that fails is run again one request at a time, so a bad request fails alone.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")
#: Runs a batch of request items; returns one result, or the exception to raise, per item, in order.
BatchFn = Callable[[Sequence[Any]], Sequence[Any]]


class ServiceBusy(Exception):
    """The model queue is full: the request is refused now rather than left waiting."""


@dataclass
class _Job:
    future: Future
    key: Hashable | None  # None: runs alone
    run: BatchFn
    item: Any


class ModelWorker:
    """Runs model calls on a single thread; at most `size` calls wait or run, others are refused.

    `max_batch` 1 turns batching off: every request runs alone, in arrival order. The wait for more requests
    is skipped when there is no sign of load (the last call ran one request and none is queued).
    """

    def __init__(self, size: int, max_batch: int = 1, max_wait_ms: float = 0.0):
        self.size = size
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.pending = 0
        self.completed = 0
        self.rejected = 0
        self.batches = 0  # model calls made (a batch of one included)
        self.batched = 0  # requests answered as part of a batch of two or more
        self.largest_batch = 0
        self._last_size = 0
        self._queue: deque[_Job] = deque()
        self._ready = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="aladin-model", daemon=True)
        self._thread.start()

    # ---- submitting -----------------------------------------------------------------------------
    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Queue `fn(*args)` on the model thread, alone, and await it; raises ServiceBusy when the queue is full."""
        return await asyncio.wrap_future(self.submit(fn, *args))

    async def run_batched(self, key: Hashable, run: BatchFn, item: Any) -> Any:
        """Queue `item` to be run by `run([item, ...])` together with other items of the same `key`, and await
        its own result; raises ServiceBusy when the queue is full."""
        return await asyncio.wrap_future(self.submit_batched(key, run, item))

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Queue `fn(*args)` on the model thread, or raise ServiceBusy at once when the queue is full."""
        return self.submit_batched(None, lambda _: [fn(*args)], None)

    def turn_away(self) -> bool:
        """Whether a new call would be refused now (the queue is full), counted as a refusal when it would: lets
        the HTTP layer answer 503 before parsing a request, without waiting for the lock the model thread takes."""
        if self.pending < self.size and not self._closed:
            return False
        self.rejected += 1
        return True

    def submit_batched(self, key: Hashable | None, run: BatchFn, item: Any) -> Future:
        """Queue `item` for `run` in a batch of its `key` (None: alone), or raise ServiceBusy when full."""
        future: Future = Future()
        with self._ready:
            if self._closed or self.pending >= self.size:
                self.rejected += 1
                raise ServiceBusy
            self.pending += 1
            self._queue.append(_Job(future, key, run, item))
            self._ready.notify()
        # A request whose client went away is cancelled while queued: it leaves the count at once and is
        # skipped when its turn comes, without touching the batch it would have joined.
        future.add_done_callback(self._finished)
        return future

    def _finished(self, future: Future) -> None:
        with self._ready:
            self.pending -= 1
            if not future.cancelled():
                self.completed += 1

    # ---- the model thread -----------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._run(batch)

    def _next_batch(self) -> list[_Job] | None:
        """The oldest live job and, when it can be batched, every queued job of its key (waiting up to
        `max_wait` for more) up to `max_batch`; None once closed."""
        with self._ready:
            while True:
                while not self._queue and not self._closed:
                    self._ready.wait()
                if self._closed:
                    return None
                first = self._queue.popleft()
                if first.future.set_running_or_notify_cancel():
                    break
            batch = [first]
            if first.key is None or self.max_batch == 1:
                return batch
            # Waiting for company pays only under load: a lone client (the last call ran one request and
            # nothing else is queued) is answered at once.
            wait = self.max_wait if self._queue or self._last_size > 1 else 0.0
            deadline = time.monotonic() + wait
            while True:
                self._take_matching(batch)
                left = deadline - time.monotonic()
                if len(batch) >= self.max_batch or left <= 0 or self._closed:
                    return batch
                self._ready.wait(left)

    def _take_matching(self, batch: list[_Job]) -> None:
        """Move queued jobs with the batch's key into it (oldest first), skipping cancelled ones; others keep
        their place in the queue."""
        kept: deque[_Job] = deque()
        while self._queue:
            job = self._queue.popleft()
            if len(batch) < self.max_batch and job.key == batch[0].key:
                if job.future.set_running_or_notify_cancel():
                    batch.append(job)
            else:
                kept.append(job)
        self._queue = kept

    def _run(self, batch: list[_Job]) -> None:
        self.batches += 1
        self._last_size = len(batch)
        self.largest_batch = max(self.largest_batch, len(batch))
        if len(batch) > 1:
            self.batched += len(batch)
        try:
            outcomes = list(batch[0].run([job.item for job in batch]))
            if len(outcomes) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} gave {len(outcomes)} answers")
        except Exception as exc:  # handed to the request(s) that caused it
            if len(batch) == 1:
                outcomes = [exc]
            else:  # one bad request must not cost the others their answer: each runs alone
                outcomes = [_alone(job) for job in batch]
        for job, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, Exception):
                job.future.set_exception(outcome)
            else:
                job.future.set_result(outcome)

    def stats(self) -> dict[str, int]:
        return {
            "size": self.size,
            "pending": self.pending,
            "completed": self.completed,
            "rejected": self.rejected,
            "max_batch": self.max_batch,
            "batches": self.batches,
            "batched_requests": self.batched,
            "largest_batch": self.largest_batch,
        }

    def close(self) -> None:
        """Stop the thread after the call it is running; queued calls are cancelled."""
        with self._ready:
            self._closed = True
            queued, self._queue = list(self._queue), deque()
            self._ready.notify_all()
        for job in queued:
            job.future.cancel()


def _alone(job: _Job) -> Any:
    """The outcome of `job` run as a batch of one: its result or its exception."""
    try:
        return job.run([job.item])[0]
    except Exception as exc:
        return exc
