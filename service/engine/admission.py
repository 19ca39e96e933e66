"""Admission control: bounded queues in front of the models, and the continuous batcher.

Two kinds of queue, both bounded, both answering `Overloaded` (503 + Retry-After) at once when
full instead of letting waits, memory and latency grow without limit:

- `ContinuousBatcher`: one per digit model. Concurrent requests are merged into one model call
  with no added delay; the queue is bounded in images, and a request that waited longer than
  allowed is refused when its turn comes.
- `Lane`: worker threads for work that cannot be merged, bounded in requests: the decoding
  lane (uploads decoded, large JSON bodies parsed). Text (next-character reads, V2 character
  steps, generations) has a loop of its own with the same rules (engine/text_loop.py).

Either way, a request whose task is cancelled while it waits (its deadline passed) leaves the
queue at once, and one whose client disconnected (`CLIENT_LEFT`, set per request by the
front-end: see service/http/bentoml_compat.py) is dropped when its turn comes: neither
reaches the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from service.errors import ClientGone, Overloaded
from service.metrics import QUEUE_DROPPED, QUEUE_REFUSED, QUEUE_WAITING, declare_queue

T = TypeVar("T")
Predict = Callable[[np.ndarray], np.ndarray]


def _never_left() -> bool:
    return False


# Has the client of the current request gone? Set per request (in its task's context) by the
# protocol layer; read when work is queued, and called when its turn comes.
CLIENT_LEFT: contextvars.ContextVar[Callable[[], bool]] = contextvars.ContextVar(
    "client_left", default=_never_left
)
GONE = "the client disconnected before its turn; its work was dropped"


@dataclass
class _Waiting:
    images: np.ndarray
    future: asyncio.Future[np.ndarray]
    client_left: Callable[[], bool]
    since: float = field(default_factory=time.perf_counter)


class ContinuousBatcher:
    """Merges concurrent requests for one model into one model call, with no added delay.

    The first request runs at once; requests that arrive while a model call is running wait
    and go together in the next call (up to `max_rows`). Under load, batches grow by
    themselves with the number of clients; alone, a request never waits for company. Model
    calls run on one thread per model, so the event loop keeps reading requests meanwhile.

    Bounds: at most `max_queued` images wait (a request that would go over is refused, unless
    the queue is empty); a request that has waited `max_wait_s` when its batch is formed is
    refused rather than run late.
    """

    def __init__(
        self,
        name: str,
        predict: Predict,
        max_rows: int,
        max_queued: int,
        max_wait_s: float,
    ) -> None:
        self.name = name
        declare_queue(name)
        self.predict_batch = predict
        self.max_rows = max_rows
        self.max_queued = max_queued
        self.max_wait_s = max_wait_s
        self.waiting: list[_Waiting] = []
        self.queued_rows = 0
        self.busy = False
        self.drainer: asyncio.Task[None] | None = None
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"batch-{name}")
        self._depth = QUEUE_WAITING.labels(queue=name)

    async def predict(self, images: np.ndarray) -> np.ndarray:
        rows = len(images)
        if self.queued_rows and self.queued_rows + rows > self.max_queued:
            QUEUE_REFUSED.labels(queue=self.name, reason="full").inc()
            raise Overloaded(
                f"model {self.name} is busy: {self.queued_rows} images are waiting (limit "
                f"RNNSERVE_MAX_QUEUED_IMAGES={self.max_queued}); retry shortly"
            )
        loop = asyncio.get_running_loop()
        entry = _Waiting(images, loop.create_future(), CLIENT_LEFT.get())
        self.waiting.append(entry)
        self._set_queued(self.queued_rows + rows)
        if not self.busy:
            self.busy = True
            # keep a reference: the event loop holds tasks only weakly
            self.drainer = loop.create_task(self._drain())
        try:
            return await entry.future
        except asyncio.CancelledError:
            # client gone or deadline passed: out of the queue now, not when its turn comes
            if entry in self.waiting:
                self.waiting.remove(entry)
                self._set_queued(self.queued_rows - rows)
                QUEUE_DROPPED.labels(queue=self.name).inc()
            raise

    def _set_queued(self, rows: int) -> None:
        self.queued_rows = rows  # the gauge follows once per batch (_drain): cheaper

    def _take(self) -> list[_Waiting]:
        """The next batch: waiting requests in arrival order, up to `max_rows` images (one
        request always goes, whatever its size); late ones are refused on the way."""
        taken: list[_Waiting] = []
        rows = 0
        now = time.perf_counter()
        while self.waiting:
            entry = self.waiting[0]
            if taken and rows + len(entry.images) > self.max_rows:
                break
            self.waiting.pop(0)
            self._set_queued(self.queued_rows - len(entry.images))
            if entry.future.done():
                continue
            if entry.client_left():
                QUEUE_DROPPED.labels(queue=self.name).inc()
                entry.future.set_exception(ClientGone(GONE))
                continue
            if now - entry.since > self.max_wait_s:
                QUEUE_REFUSED.labels(queue=self.name, reason="waited").inc()
                entry.future.set_exception(
                    Overloaded(
                        f"model {self.name} is busy: the request waited over "
                        f"{self.max_wait_s * 1000:.0f} ms (RNNSERVE_MAX_QUEUE_WAIT_MS); "
                        "retry shortly"
                    )
                )
                continue
            taken.append(entry)
            rows += len(entry.images)
        return taken

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self.waiting:
                group = self._take()
                self._depth.set(self.queued_rows)
                if not group:
                    continue
                batch = (
                    group[0].images
                    if len(group) == 1
                    else np.concatenate([g.images for g in group])
                )
                try:
                    probs = await loop.run_in_executor(self.executor, self.predict_batch, batch)
                except Exception as exc:  # a model failure fails its own batch only
                    for entry in group:
                        if not entry.future.done():
                            entry.future.set_exception(exc)
                    continue
                start = 0
                for entry in group:
                    if not entry.future.done():
                        entry.future.set_result(probs[start : start + len(entry.images)])
                    start += len(entry.images)
        finally:
            self.busy = False
            self._depth.set(self.queued_rows)


class Lane:
    """A lane of `threads` worker threads with room for `max_waiting` more requests.

    `run` refuses at once (Overloaded) when the lane is full. A request cancelled while it
    waits is never started; one cancelled while running finishes on its thread (a model call
    cannot be interrupted) but its result is dropped, and the lane counts it until it ends.
    """

    def __init__(self, name: str, threads: int, max_waiting: int, setting: str) -> None:
        self.name = name
        declare_queue(name)
        self.threads = threads
        self.capacity = threads + max_waiting
        self.setting = setting
        self.pending = 0  # waiting + running; changed on the event loop only
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix=f"lane-{name}")
        self._depth = QUEUE_WAITING.labels(queue=name)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if self.pending >= self.capacity:
            QUEUE_REFUSED.labels(queue=self.name, reason="full").inc()
            raise Overloaded(
                f"the {self.name} queue is full ({self.pending} requests; limit "
                f"{self.setting}={self.capacity - self.threads} waiting); retry shortly"
            )
        loop = asyncio.get_running_loop()
        work = self.executor.submit(self._unless_gone, CLIENT_LEFT.get(), fn, *args)
        self._count(+1)
        # released when the thread is done with it (or when it is cancelled before starting)
        work.add_done_callback(lambda _: _call_soon(loop, self._count, -1))
        try:
            return await asyncio.wrap_future(work)
        except asyncio.CancelledError:
            if work.cancelled():
                QUEUE_DROPPED.labels(queue=self.name).inc()
            raise

    def _unless_gone(self, client_left: Callable[[], bool], fn: Callable[..., T], *args: Any) -> T:
        """On the lane's thread, when the request's turn comes."""
        if client_left():
            QUEUE_DROPPED.labels(queue=self.name).inc()
            raise ClientGone(GONE)
        return fn(*args)

    def _count(self, change: int) -> None:
        self.pending += change
        self._depth.set(max(0, self.pending - self.threads))


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> None:
    with contextlib.suppress(RuntimeError):  # the loop closed (shutdown): nothing to count
        loop.call_soon_threadsafe(fn, *args)
