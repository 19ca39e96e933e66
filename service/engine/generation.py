"""Text generation as one workload: continuous batching of every sequence of a character model.

One decode loop per character model runs on a thread of its own and steps every active
sequence together: one model call per step for the whole batch, each row carrying its own
recurrent state. A new sequence joins between two steps (its prompt is read first, alone, then
it steps with the rest); a finished, cancelled or abandoned one leaves at once. Each sequence
samples with its own settings (temperature, top-k) and its own random generator, and the
sampling is row-wise, so the same seed gives the same text whatever else is in the batch.

Characters reach the requests' event loop once per step (one `call_soon_threadsafe` for the
whole batch), where each sequence's queue collects them: a streaming client gets whatever has
accumulated since its last write, a one-shot request waits for the end.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import numpy as np

from service.errors import ClientGone, Overloaded
from service.metrics import (
    GENERATION_ACTIVE,
    GENERATION_BATCH,
    GENERATION_FIRST_CHAR,
    GENERATION_STEPS,
)
from service.model.inference import CharModel, sample

# How long characters may wait in the decode thread before going to the event loop together.
POST_EVERY_S = 0.005
METRICS_EVERY_S = 0.1
Delivery = tuple["Sequence", str | BaseException | None]


@dataclass(frozen=True)
class GenerationRequest:
    prompt_ids: np.ndarray  # (T,) int64
    length: int
    temperature: float
    top_k: int | None
    seed: int


@dataclass
class Sequence:
    """One request's generation, shared by the decode thread and the request's event loop."""

    request: GenerationRequest
    client_left: Callable[[], bool]
    chunks: asyncio.Queue[str | BaseException | None] = field(default_factory=asyncio.Queue)
    submitted: float = field(default_factory=time.perf_counter)
    first_char_s: float | None = None
    produced: int = 0
    abandoned: bool = False  # set on the event loop when the consumer stops reading

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.request.seed)

    async def text(self) -> AsyncIterator[str]:
        """The characters as they come, in chunks of whatever accumulated."""
        while True:
            item = await self.chunks.get()
            parts: list[str] = []
            end = False
            while True:
                if item is None:
                    end = True
                    break
                if isinstance(item, BaseException):
                    raise item
                parts.append(item)
                if self.chunks.empty():
                    break
                item = self.chunks.get_nowait()
            if parts:
                yield "".join(parts)
            if end:
                return


class LoopStats:
    """The decode loop's metrics, gathered per step and written out at most every
    METRICS_EVERY_S (each write to the multiprocess registry costs a file-backed update and a
    pid check: at a thousand steps a second, writing every step is a cost the loop notices)."""

    def __init__(self, model: str) -> None:
        self.active = GENERATION_ACTIVE.labels(model=model)
        self.steps = GENERATION_STEPS.labels(model=model)
        self.batch = GENERATION_BATCH.labels(model=model)
        self.first_char = GENERATION_FIRST_CHAR.labels(model=model)
        self.batch_sizes: list[int] = []
        self.first_chars: list[float] = []
        self.written_at = 0.0

    def step(self, batch: int, now: float) -> None:
        if batch:
            self.batch_sizes.append(batch)
        if not batch or now - self.written_at >= METRICS_EVERY_S:
            self.write(batch, now)

    def write(self, batch: int, now: float) -> None:
        self.active.set(batch)
        if self.batch_sizes:
            self.steps.inc(len(self.batch_sizes))
            for size in self.batch_sizes:
                self.batch.observe(size)
        for seconds in self.first_chars:
            self.first_char.observe(seconds)
        self.batch_sizes, self.first_chars, self.written_at = [], [], now


class DecodeLoop:
    """The continuous-batching decode loop of one character model (see the module docstring).

    Bounds: at most `max_active` sequences step together and `max_waiting` more may wait to
    join (Overloaded beyond); at most `joins_per_step` prompts are read between two steps, so
    joiners cannot stall the sequences already running for long.
    """

    def __init__(
        self, model: CharModel, max_active: int, max_waiting: int, joins_per_step: int
    ) -> None:
        self.model = model
        self.max_active = max_active
        self.max_waiting = max_waiting
        self.joins_per_step = joins_per_step
        self.pending: collections.deque[Sequence] = collections.deque()
        # taken by both threads around every change to `pending` (appends, pops, the pruning
        # of departed waiters), held only for those few deque operations
        self.pending_lock = threading.Lock()
        self.active: list[Sequence] = []
        self.joining = 0  # taken from `pending`, prompts being read: not yet in `active`
        self.wakeup = threading.Event()
        self.thread: threading.Thread | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.outbox: list[Delivery] = []
        self.posted_at = 0.0
        self.stats = LoopStats(model.name)

    # ------------------------------------------------------------------ event-loop side

    def submit(self, request: GenerationRequest, client_left: Callable[[], bool]) -> Sequence:
        limit = self.max_active + self.max_waiting
        with self.pending_lock:
            running = len(self.active) + self.joining
            if len(self.pending) + running >= limit:
                self._drop_departed()  # a waiter whose client gave up holds no place
            waiting = len(self.pending)
            if waiting + running >= limit:
                raise Overloaded(
                    f"{len(self.active)} generations are running and {waiting} waiting "
                    f"(limits RNNSERVE_MAX_ACTIVE_GENERATIONS={self.max_active}, "
                    f"RNNSERVE_MAX_QUEUED_GENERATIONS={self.max_waiting}); retry shortly"
                )
            sequence = Sequence(request, client_left)
            self.pending.append(sequence)
        if self.thread is None:
            self.loop = asyncio.get_running_loop()
            self.thread = threading.Thread(
                target=self._run, name=f"decode-{self.model.name}", daemon=True
            )
            self.thread.start()
        self.wakeup.set()
        return sequence

    def _drop_departed(self) -> None:
        """Take waiters whose client timed out or left out of `pending` (lock held, on the
        event loop): otherwise they keep their places until the decode thread reaches them,
        which it does not while every active place is taken by long generations."""
        staying: collections.deque[Sequence] = collections.deque()
        told: list[Delivery] = []
        for sequence in self.pending:
            if sequence.abandoned:
                continue  # nobody reads it any more
            if sequence.client_left():
                told.append((sequence, ClientGone("the client left before its turn")))
                continue
            staying.append(sequence)
        self.pending = staying
        self._deliver(told)

    async def chunks_of(self, sequence: Sequence) -> AsyncIterator[str]:
        """A submitted sequence's text in chunks until it ends; stopping early (a closed
        stream, a cancelled task) takes the sequence out of the batch at the next step."""
        try:
            async for chunk in sequence.text():
                yield chunk
        finally:
            sequence.abandoned = True

    def _deliver(self, batch: list[Delivery]) -> None:
        for sequence, item in batch:
            sequence.chunks.put_nowait(item)

    # ------------------------------------------------------------------ decode thread

    def _post(self, batch: list[Delivery]) -> None:
        if batch and self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._deliver, batch)

    def _post_soon(self, batch: list[Delivery], urgent: bool) -> None:
        """Characters wait (at most POST_EVERY_S) to go to the event loop together: every wake-up
        of the loop costs it time it shares with the streams. A first character, an end or an
        error goes at once."""
        self.outbox += batch
        now = time.perf_counter()
        if urgent or now - self.posted_at >= POST_EVERY_S or not self.active:
            self._post(self.outbox)
            self.outbox = []
            self.posted_at = now

    def _join(self) -> tuple[list[Sequence], list[np.ndarray], list[np.ndarray]]:
        """Read the prompts of up to joins_per_step waiting sequences: one model call per
        prompt length (prompts of equal length are read together, exactly as alone)."""
        taken: list[Sequence] = []
        failed: list[Delivery] = []
        with self.pending_lock:
            while (
                self.pending
                and len(taken) < self.joins_per_step
                and len(self.active) + len(taken) < self.max_active
            ):
                sequence = self.pending.popleft()
                if sequence.abandoned or sequence.client_left():
                    if not sequence.abandoned:
                        failed.append((sequence, ClientGone("the client left before its turn")))
                    continue
                taken.append(sequence)
            self.joining = len(taken)  # counted by admission until they are active
        by_length: dict[int, list[Sequence]] = {}
        for sequence in taken:
            by_length.setdefault(len(sequence.request.prompt_ids), []).append(sequence)
        joined: list[Sequence] = []
        logits: list[np.ndarray] = []
        states: list[np.ndarray] = []
        for group in by_length.values():
            ids = np.stack([s.request.prompt_ids for s in group])
            try:
                last, state = self.model.step(ids, self.model.fresh_state(len(group)))
            except Exception as exc:  # a failure fails its own sequences only
                failed += [(s, exc) for s in group]
                continue
            joined += group
            logits.append(last)
            states.append(state)
        self._post(failed)
        return joined, logits, states

    def _run(self) -> None:
        vocab = self.model.vocab
        logits = np.zeros((0, len(vocab)), np.float32)  # (B, V): each row's next-step logits
        state = self.model.fresh_state(0)  # (rows, B, H)
        temperature = np.zeros(0)
        top_k = np.zeros(0, np.int64)
        while True:
            if not self.active and not self.pending:
                self.wakeup.wait()
                self.wakeup.clear()
                continue
            joined, new_logits, new_states = self._join()
            if joined:
                self.active += joined
                logits = np.concatenate([logits, *new_logits])
                state = np.concatenate([state, *new_states], axis=1)
                temperature = np.array([s.request.temperature for s in self.active])
                top_k = np.array([s.request.top_k or len(vocab) for s in self.active])
            self.joining = 0  # after `active` counts them (or they failed or left)
            if not self.active:
                continue
            uniform = np.array([s.rng.random() for s in self.active])
            ids = sample(logits, temperature, top_k, uniform)
            now = time.perf_counter()
            out: list[Delivery] = []
            urgent = False
            keep = np.ones(len(self.active), dtype=bool)
            for row, (sequence, char_id) in enumerate(zip(self.active, ids.tolist(), strict=True)):
                if sequence.abandoned or sequence.client_left():
                    keep[row] = False
                    if not sequence.abandoned:  # its request still waits: end it
                        out.append((sequence, ClientGone("the client disconnected")))
                        urgent = True
                    continue
                out.append((sequence, vocab[char_id]))
                sequence.produced += 1
                if sequence.first_char_s is None:
                    urgent = True
                    sequence.first_char_s = now - sequence.submitted
                    self.stats.first_chars.append(sequence.first_char_s)
                if sequence.produced >= sequence.request.length:
                    out.append((sequence, None))
                    urgent = True
                    keep[row] = False
            if not keep.all():
                self.active = [s for s, k in zip(self.active, keep, strict=True) if k]
                state, temperature, top_k = state[:, keep], temperature[keep], top_k[keep]
                ids = ids[keep]
            self._post_soon(out, urgent)
            self.stats.step(len(self.active), now)
            if not self.active:
                logits = logits[:0]
                continue
            try:
                logits, state = self.model.step(ids[:, None].astype(np.int64), state)
            except Exception as exc:  # the whole batch failed: tell every sequence
                self._post([(s, exc) for s in self.active])
                self.active = []
                logits, state = logits[:0], self.model.fresh_state(0)
