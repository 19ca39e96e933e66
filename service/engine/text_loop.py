"""Text as one workload: every read and every generation step of a character model in one loop.

One loop per character model runs on a thread of its own, and two kinds of work share its
model calls:

- Reads: text to take in (a next_char request, a V2 request, a generation's prompt), each row
  from its own state (fresh, or one a client carried back). Every row being read advances in
  the same call, m characters at a time, m being the shortest remainder among them (capped by
  READ_BUDGET so that one call stays short): rows of different lengths share calls, exactly, with
  no padding (a row's state is carried from call to call); a row leaves when it has read its
  text and a new one joins at the next call. Rows with one character left join the step call.
- Generation steps: every active sequence samples its next character and all of them step
  together, one model call per step, each row with its own state, settings and random draws
  (sampling is row-wise, so the same seed gives the same text whatever else is in the batch).
  A sequence ends after the step that reads its last character, so its state covers the text
  it generated, ready to be carried on.

The loop's Python work per step does not grow with the batch: sampling, counting and the random
draws are numpy over whole arrays (a sequence's draws are made when it joins); text is built
from ids only when it is posted (every STREAM_EVERY_S for streams, once at the end for
one-shot answers), and departed clients are looked for every CHECK_EVERY_S. Results reach
each request's event loop in one `call_soon_threadsafe` per loop iteration.

Bounds: at most `max_queued` reads wait (Overloaded beyond, unless none waits), a read that
waited over `max_wait_s` when its turn comes is refused, at most `max_rows` rows are read at
once; at most `max_active` sequences generate, `max_waiting` more wait, and `joins_per_step`
join between two steps.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.engine.admission import CLIENT_LEFT
from service.engine.carried_state import Carried
from service.errors import ClientGone, Overloaded
from service.metrics import (
    GENERATION_ACTIVE,
    GENERATION_BATCH,
    GENERATION_FIRST_CHAR,
    GENERATION_STEPS,
    QUEUE_DROPPED,
    QUEUE_REFUSED,
    QUEUE_WAITING,
    TEXT_READ_ROWS,
    declare_queue,
)
from service.model.inference import CharModel, sample

# Row-steps one read call may take (rows x characters): a lone text is read 512 characters a
# call, many rows in shorter chunks, which on a CPU is also faster (the gates of a long chunk
# of many rows no longer fit the caches: loadtest/bench_text_batching.py).
READ_BUDGET = 512
MIN_CHUNK = 8
# How often departed clients are looked for (their rows leave the batch then), and how long
# streamed characters wait in the loop before going to the event loop together: every post
# wakes each stream and costs it a write, so a stream gets one event per STREAM_EVERY_S (its
# first character goes at once).
CHECK_EVERY_S = 0.005
STREAM_EVERY_S = 0.02
# ...and with many streams, the events of all of them together stay under this rate (each one
# holds the GIL on the event loop a little, which the loop's own Python work then waits for):
# 64 streams get an event every 64 ms each.
STREAM_EVENTS_PER_S = 1000
METRICS_EVERY_S = 0.1
GONE = "the client disconnected before its text was read; its work was dropped"


@dataclass(frozen=True)
class ReadResult:
    last: np.ndarray  # (rows, vocab): the logits after each row's last character
    state: np.ndarray  # (state_rows, rows, hidden): the state after it
    logits: np.ndarray | None  # (rows, steps, vocab) when every position was asked for


@dataclass(frozen=True)
class GenerationRequest:
    prompt_ids: np.ndarray  # (T,) int64; may be empty when `start` is given
    length: int
    temperature: float
    top_k: int | None
    seed: int
    start: Carried | None = None  # None: a fresh state (then the prompt is not empty)
    streaming: bool = True  # False: the text is posted once, at the end


@dataclass(frozen=True)
class Finished:
    """A generation's end: the state after its prompt and all of its text."""

    state: np.ndarray  # (state_rows, hidden)
    logits: np.ndarray  # (vocab,)


@dataclass(eq=False)
class Sequence:
    """One request's generation, shared by the loop thread and the request's event loop."""

    request: GenerationRequest
    client_left: Callable[[], bool]
    loop: asyncio.AbstractEventLoop
    chunks: asyncio.Queue[str | Finished | BaseException] = field(default_factory=asyncio.Queue)
    submitted: float = field(default_factory=time.perf_counter)
    abandoned: bool = False  # set on the event loop when the consumer stops reading
    finished: Finished | None = None  # set on the event loop when the end arrives

    async def text(self) -> AsyncIterator[str]:
        """The characters as they come, in chunks of whatever accumulated; at the end,
        `finished` holds the state."""
        while True:
            item = await self.chunks.get()
            parts: list[str] = []
            while True:
                if isinstance(item, Finished):
                    self.finished = item
                    break
                if isinstance(item, BaseException):
                    raise item
                parts.append(item)
                if self.chunks.empty():
                    break
                item = self.chunks.get_nowait()
            if parts:
                yield "".join(parts)
            if self.finished is not None:
                return


@dataclass(eq=False)
class Read:
    """Text being read: rows of ids from their states (a request's, or a generation's prompt)."""

    ids: np.ndarray  # (rows, steps) int64
    state: np.ndarray  # (state_rows, rows, hidden): after the first `pos` characters
    every_position: bool  # keep the logits of every position (V2), not only the last
    client_left: Callable[[], bool]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[ReadResult] | None = None  # None for a generation's prompt
    sequence: Sequence | None = None  # the generation whose prompt this is
    pos: int = 0
    last: np.ndarray | None = None
    parts: list[np.ndarray] = field(default_factory=list)
    since: float = field(default_factory=time.perf_counter)
    cancelled: bool = False  # set on the event loop: nobody waits for it any more

    @property
    def rows(self) -> int:
        return int(self.ids.shape[0])

    @property
    def remaining(self) -> int:
        return int(self.ids.shape[1]) - self.pos

    def gone(self) -> bool:
        if self.sequence is not None:
            return self.sequence.abandoned or self.sequence.client_left()
        return self.cancelled or self.client_left()

    def advanced(self, logits: np.ndarray, state: np.ndarray, steps: int) -> None:
        self.state, self.pos = state, self.pos + steps
        self.last = logits[:, -1]
        if self.every_position:
            self.parts.append(logits)

    def result(self) -> ReadResult:
        assert self.last is not None
        everything = np.concatenate(self.parts, axis=1) if self.every_position else None
        return ReadResult(self.last, self.state, everything)


class Generating:
    """The active sequences as arrays (row i is sequences[i]), so that a step is numpy work
    over whole arrays whatever their number."""

    def __init__(self, model: CharModel) -> None:
        self.vocab = np.array(model.vocab, dtype=object)
        self.sequences: list[Sequence] = []
        self.state = model.fresh_state(0)  # (R, D, H)
        self.logits = np.zeros((0, len(model.vocab)), np.float32)  # (D, V): next-step scores
        self.temperature = np.zeros(0)
        self.top_k = np.zeros(0, np.int64)
        self.length = np.zeros(0, np.int64)
        self.produced = np.zeros(0, np.int64)
        self.sent = np.zeros(0, np.int64)  # characters already posted
        self.streaming = np.zeros(0, bool)
        self.uniform = np.zeros((0, 0))  # (D, W): each row's draws, made when it joined
        self.ids = np.zeros((0, 0), np.int64)  # (D, W): the ids it produced

    def __len__(self) -> int:
        return len(self.sequences)

    def add(self, sequences: list[Sequence], logits: np.ndarray, state: np.ndarray) -> None:
        requests = [s.request for s in sequences]
        width = max([self.uniform.shape[1], *(r.length for r in requests)])
        draws = np.zeros((len(requests), width))
        for i, r in enumerate(requests):  # the same draws, in order, as the lone reference
            draws[i, : r.length] = np.random.default_rng(r.seed).random(r.length)
        vocab = len(self.vocab)
        self.sequences += sequences
        self.state = np.concatenate([self.state, state], axis=1)
        self.logits = np.concatenate([self.logits, logits])
        self.temperature = np.concatenate([self.temperature, [r.temperature for r in requests]])
        self.top_k = np.concatenate([self.top_k, [r.top_k or vocab for r in requests]])
        self.length = np.concatenate([self.length, [r.length for r in requests]])
        self.produced = np.concatenate([self.produced, np.zeros(len(requests), np.int64)])
        self.sent = np.concatenate([self.sent, np.zeros(len(requests), np.int64)])
        self.streaming = np.concatenate([self.streaming, [r.streaming for r in requests]])
        self.uniform = np.concatenate([_widen(self.uniform, width), draws])
        self.ids = np.concatenate(
            [_widen(self.ids, width), np.zeros((len(requests), width), np.int64)]
        )

    def keep(self, rows: np.ndarray) -> None:
        """Keep only the rows where `rows` is true."""
        self.sequences = [s for s, k in zip(self.sequences, rows.tolist(), strict=True) if k]
        self.state = self.state[:, rows]
        for name in (
            "logits",
            "temperature",
            "top_k",
            "length",
            "produced",
            "sent",
            "streaming",
            "uniform",
            "ids",
        ):
            setattr(self, name, getattr(self, name)[rows])

    def sample(self) -> np.ndarray:
        """Every row's next id, recorded; (D,)."""
        at = np.arange(len(self.sequences))
        ids = sample(self.logits, self.temperature, self.top_k, self.uniform[at, self.produced])
        self.ids[at, self.produced] = ids
        self.produced += 1
        return ids

    def text(self, row: int, start: int, end: int) -> str:
        return "".join(self.vocab[self.ids[row, start:end]].tolist())


def _widen(array: np.ndarray, width: int) -> np.ndarray:
    if array.shape[1] >= width:
        return array
    return np.pad(array, ((0, 0), (0, width - array.shape[1])))


class LoopStats:
    """The loop's metrics, gathered per call and written at most every METRICS_EVERY_S (each
    write to the multiprocess registry costs a file-backed update: at a thousand steps a
    second, writing every step is a cost the loop notices)."""

    def __init__(self, model: str) -> None:
        self.active = GENERATION_ACTIVE.labels(model=model)
        self.steps = GENERATION_STEPS.labels(model=model)
        self.batch = GENERATION_BATCH.labels(model=model)
        self.first_char = GENERATION_FIRST_CHAR.labels(model=model)
        self.read_rows = TEXT_READ_ROWS.labels(model=model)
        self.waiting = QUEUE_WAITING.labels(queue="text")
        declare_queue("text")
        self.batch_sizes: list[int] = []
        self.read_sizes: list[int] = []
        self.first_chars: list[float] = []
        self.written_at = 0.0
        self.rows_read = 0  # since start: rows read and the calls they took (tests, benchmarks)
        self.read_calls = 0

    def read(self, rows: int) -> None:
        self.read_sizes.append(rows)
        self.rows_read += rows
        self.read_calls += 1

    def write(self, active: int, waiting: int, now: float, force: bool = False) -> None:
        if not force and now - self.written_at < METRICS_EVERY_S:
            return
        self.active.set(active)
        self.waiting.set(waiting)
        if self.batch_sizes:
            self.steps.inc(len(self.batch_sizes))
        for size in self.batch_sizes:
            self.batch.observe(size)
        for size in self.read_sizes:
            self.read_rows.observe(size)
        for seconds in self.first_chars:
            self.first_char.observe(seconds)
        self.batch_sizes, self.read_sizes, self.first_chars = [], [], []
        self.written_at = now


# (the event loop of the request, (a function to call there, its arguments...))
Delivery = tuple[asyncio.AbstractEventLoop, tuple[Any, ...]]


class TextLoop:
    """Reads and generations of one character model (see the module docstring)."""

    def __init__(
        self,
        model: CharModel,
        max_rows: int,
        max_queued: int,
        max_wait_s: float,
        max_active: int,
        max_waiting: int,
        joins_per_step: int,
    ) -> None:
        self.model = model
        self.max_rows = max_rows
        self.max_queued = max_queued
        self.max_wait_s = max_wait_s
        self.max_active = max_active
        self.max_waiting = max_waiting
        self.joins_per_step = joins_per_step
        # taken by both threads around every change to the two queues, held only for a few
        # deque operations
        self.lock = threading.Lock()
        self.queued_reads: collections.deque[Read] = collections.deque()
        self.queued_generations: collections.deque[Sequence] = collections.deque()
        self.reading: list[Read] = []
        self.generating = Generating(model)
        self.joining = 0  # generations out of the queue whose prompts are being read
        self.wakeup = threading.Event()
        self.thread: threading.Thread | None = None
        self.outbox: list[Delivery] = []
        self.urgent = False  # something in the outbox must go now (an answer, an end, an error)
        self.checked_at = 0.0
        self.streamed_at = 0.0
        self.stats = LoopStats(model.name)
        self.retired = False  # model control unloaded this version: end once idle

    # ------------------------------------------------------------------ event-loop side

    async def read(
        self, ids: np.ndarray, state: np.ndarray, every_position: bool = False
    ) -> ReadResult:
        """Read ids (rows, steps >= 1) from state (state_rows, rows, hidden)."""
        loop = asyncio.get_running_loop()
        item = Read(ids, state, every_position, CLIENT_LEFT.get(), loop, loop.create_future())
        with self.lock:
            if self.queued_reads and len(self.queued_reads) >= self.max_queued:
                self._drop_departed_reads()
            if self.queued_reads and len(self.queued_reads) >= self.max_queued:
                QUEUE_REFUSED.labels(queue="text", reason="full").inc()
                raise Overloaded(
                    f"the text queue is full ({len(self.queued_reads)} requests waiting; "
                    f"limit RNNSERVE_MAX_QUEUED_TEXT={self.max_queued}); retry shortly"
                )
            self.queued_reads.append(item)
        self._start()
        assert item.future is not None
        try:
            return await item.future
        except asyncio.CancelledError:  # deadline passed or client gone: the loop drops it
            item.cancelled = True
            QUEUE_DROPPED.labels(queue="text").inc()
            raise

    def _drop_departed_reads(self) -> None:
        """Reads whose clients left hold no place in a full queue (lock held)."""
        staying: collections.deque[Read] = collections.deque()
        for item in self.queued_reads:
            if not item.gone():
                staying.append(item)
            elif item.future is not None:  # on the event loop: told directly
                QUEUE_DROPPED.labels(queue="text").inc()
                _settle(item.future, ClientGone(GONE))
        self.queued_reads = staying

    def submit(self, request: GenerationRequest, client_left: Callable[[], bool]) -> Sequence:
        """Queue a generation; Overloaded at once when every place is taken."""
        limit = self.max_active + self.max_waiting
        with self.lock:
            running = len(self.generating) + self.joining
            if len(self.queued_generations) + running >= limit:
                self._drop_departed_generations()
            waiting = len(self.queued_generations)
            if waiting + running >= limit:
                raise Overloaded(
                    f"{len(self.generating)} generations are running and {waiting} waiting "
                    f"(limits RNNSERVE_MAX_ACTIVE_GENERATIONS={self.max_active}, "
                    f"RNNSERVE_MAX_QUEUED_GENERATIONS={self.max_waiting}); retry shortly"
                )
            sequence = Sequence(request, client_left, asyncio.get_running_loop())
            self.queued_generations.append(sequence)
        self._start()
        return sequence

    def _drop_departed_generations(self) -> None:
        """Waiters whose client timed out or left give their places back (lock held, on the
        event loop): otherwise they keep them until the loop reaches them, which it does not
        while every active place is taken by long generations."""
        staying: collections.deque[Sequence] = collections.deque()
        for sequence in self.queued_generations:
            if sequence.abandoned:
                continue  # nobody reads it any more
            if sequence.client_left():
                sequence.chunks.put_nowait(ClientGone("the client left before its turn"))
                continue
            staying.append(sequence)
        self.queued_generations = staying

    async def chunks_of(self, sequence: Sequence) -> AsyncIterator[str]:
        """A submitted sequence's text in chunks until it ends; stopping early (a closed
        stream, a cancelled task) takes it out of the batch within CHECK_EVERY_S."""
        try:
            async for chunk in sequence.text():
                yield chunk
        finally:
            sequence.abandoned = True

    def retire(self) -> None:
        """This version is no longer served: its thread finishes the work it holds, then
        ends, and lets go of the model (work that still arrives restarts it)."""
        self.retired = True
        self.wakeup.set()

    def _start(self) -> None:
        if self.thread is None:
            self.thread = threading.Thread(
                target=self._run, name=f"text-{self.model.name}", daemon=True
            )
            self.thread.start()
        self.wakeup.set()

    @property
    def idle(self) -> bool:
        return not (
            self.reading or len(self.generating) or self.queued_reads or self.queued_generations
        )

    # ------------------------------------------------------------------ delivery

    def _fail(self, item: Read | Sequence, error: BaseException) -> None:
        self.urgent = True
        if isinstance(item, Sequence):
            self.outbox.append((item.loop, (item.chunks.put_nowait, error)))
        elif item.sequence is not None:
            self._fail(item.sequence, error)
        elif item.future is not None:
            self.outbox.append((item.loop, (_settle, item.future, error)))

    def _succeed(self, item: Read) -> None:
        assert item.future is not None
        self.urgent = True
        self.outbox.append((item.loop, (_settle, item.future, item.result())))

    def _send(self, sequence: Sequence, value: str | Finished) -> None:
        self.outbox.append((sequence.loop, (sequence.chunks.put_nowait, value)))

    def _flush(self) -> None:
        """Everything in the outbox to its event loops: one callback per loop."""
        if not self.outbox:
            return
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Any, ...]]] = {}
        for loop, call in self.outbox:
            by_loop.setdefault(loop, []).append(call)
        self.outbox, self.urgent = [], False
        for loop, calls in by_loop.items():
            if not loop.is_closed():
                with contextlib.suppress(RuntimeError):  # closed meanwhile: nobody to tell
                    loop.call_soon_threadsafe(_run_all, calls)

    # ------------------------------------------------------------------ loop thread

    def _run(self) -> None:
        while True:
            if self.idle:
                if self.retired:
                    with self.lock:  # work queued under the lock is seen here, or restarts us
                        if self.idle:
                            self.thread = None
                            return
                    continue
                self.wakeup.wait()
                self.wakeup.clear()
                continue
            if self.queued_reads or self.queued_generations:  # (the lock only when needed)
                self._admit()
            now = time.perf_counter()
            if now - self.checked_at >= CHECK_EVERY_S:  # who has left
                self.checked_at = now
                self._leave_departed()
            since = now - self.streamed_at
            if since >= STREAM_EVERY_S and since >= self._stream_interval():
                self.streamed_at = now
                self._post_streams()
                self.urgent = True
            ones = [r for r in self.reading if r.remaining == 1]
            if len(self.generating) or ones:
                self._step(ones)
                if self.outbox and self.urgent:  # first characters, ends, keystrokes: now,
                    self._flush()  # not after the read call below
            rest = [r for r in self.reading if r.remaining >= 2]
            if rest:
                self._read(rest)
            if self.outbox and self.urgent:
                self._flush()
            self.stats.write(len(self.generating), len(self.queued_reads), now, self.idle)

    def _stream_interval(self) -> float:
        streams = int(self.generating.streaming.sum()) if len(self.generating) else 0
        return max(STREAM_EVERY_S, streams / STREAM_EVENTS_PER_S)

    def _admit(self) -> None:
        """Queued reads (within max_rows, refused when they waited too long) and up to
        joins_per_step generations, whose prompts are read like any text."""
        now = time.perf_counter()
        with self.lock:
            rows = sum(r.rows for r in self.reading)
            while self.queued_reads:
                item = self.queued_reads[0]
                if self.reading and rows + item.rows > self.max_rows:
                    break
                self.queued_reads.popleft()
                if item.gone():
                    if not item.cancelled:
                        QUEUE_DROPPED.labels(queue="text").inc()
                        self._fail(item, ClientGone(GONE))
                    continue
                if now - item.since > self.max_wait_s:
                    QUEUE_REFUSED.labels(queue="text", reason="waited").inc()
                    self._fail(
                        item,
                        Overloaded(
                            f"the text model is busy: the request waited over "
                            f"{self.max_wait_s * 1000:.0f} ms (RNNSERVE_MAX_QUEUE_WAIT_MS); "
                            "retry shortly"
                        ),
                    )
                    continue
                self.reading.append(item)
                rows += item.rows
            taken: list[Sequence] = []
            while (
                self.queued_generations
                and len(taken) < self.joins_per_step
                and len(self.generating) + self.joining + len(taken) < self.max_active
            ):
                sequence = self.queued_generations.popleft()
                if sequence.abandoned or sequence.client_left():
                    if not sequence.abandoned:
                        self._fail(sequence, ClientGone("the client left before its turn"))
                    continue
                taken.append(sequence)
            self.joining += len(taken)
        ready: list[Sequence] = []
        for sequence in taken:
            request = sequence.request
            if len(request.prompt_ids) == 0:  # straight from a carried state
                ready.append(sequence)
                continue
            state = (
                self.model.fresh_state(1)
                if request.start is None
                else request.start.state[:, None, :]
            )
            self.reading.append(
                Read(
                    request.prompt_ids[None, :],
                    state,
                    False,
                    sequence.client_left,
                    sequence.loop,
                    sequence=sequence,
                )
            )
        if ready:
            self._join(
                ready,
                np.stack([s.request.start.logits for s in ready]),  # type: ignore[union-attr]
                np.stack([s.request.start.state for s in ready], axis=1),  # type: ignore[union-attr]
            )

    def _join(self, sequences: list[Sequence], logits: np.ndarray, state: np.ndarray) -> None:
        """Joining sequences become active in one step under the lock: admission, which counts
        active + joining, never sees them twice (it refused a place that was free) or not at
        all."""
        with self.lock:
            self.generating.add(sequences, logits, state)
            self.joining -= len(sequences)

    def _leave_departed(self) -> None:
        """Sequences and reads whose consumers stopped or whose clients left (every
        CHECK_EVERY_S, not every step)."""
        batch = self.generating
        if len(batch):
            keep = np.ones(len(batch), dtype=bool)
            for row, sequence in enumerate(batch.sequences):
                if sequence.abandoned or sequence.client_left():
                    keep[row] = False
                    if not sequence.abandoned:  # its request still waits: end it
                        self._fail(sequence, ClientGone("the client disconnected"))
            if not keep.all():
                batch.keep(keep)
        staying = []
        for item in self.reading:
            if item.gone():
                if item.sequence is None and not item.cancelled:
                    self._fail(item, ClientGone(GONE))
                elif item.sequence is not None:
                    self._not_joining(1)
                    if not item.sequence.abandoned:
                        self._fail(item.sequence, ClientGone("the client disconnected"))
                continue
            staying.append(item)
        self.reading = staying

    def _not_joining(self, count: int) -> None:
        """`count` generations taken from the queue are no longer waiting for their prompts
        (they joined, failed or left)."""
        with self.lock:
            self.joining -= count

    def _post_streams(self, only: np.ndarray | None = None) -> None:
        """What each streaming sequence (or each of the rows `only`) produced since its last
        post."""
        batch = self.generating
        if not len(batch):
            return
        pending = batch.streaming & (batch.produced > batch.sent)
        if only is not None:
            chosen = np.zeros(len(batch), dtype=bool)
            chosen[only] = True
            pending &= chosen
        rows = np.flatnonzero(pending)
        for row in rows.tolist():
            text = batch.text(row, int(batch.sent[row]), int(batch.produced[row]))
            self._send(batch.sequences[row], text)
        batch.sent[rows] = batch.produced[rows]

    def _step(self, ones: list[Read]) -> None:
        """One model call: a generation step for every active sequence, with the reads that
        have one character left."""
        batch = self.generating
        count = len(batch)
        feed_parts: list[np.ndarray] = []
        state_parts: list[np.ndarray] = []
        done = np.zeros(0, bool)
        if count:
            ids = batch.sample()
            now = time.perf_counter()
            first = np.flatnonzero(batch.produced == 1)
            for row in first.tolist():
                self.stats.first_chars.append(now - batch.sequences[row].submitted)
            if len(first) and batch.streaming[first].any():
                # a first character goes at once, alone: the other streams keep their pace
                # (posting them all at every join was a burst of events per join)
                self._post_streams(first)
                self.urgent = True
            done = batch.produced >= batch.length
            feed_parts.append(ids[:, None])
            state_parts.append(batch.state)
            self.stats.batch_sizes.append(count)
        for item in ones:
            feed_parts.append(item.ids[:, item.pos :])
            state_parts.append(item.state)
        if ones:
            self.stats.read(sum(r.rows for r in ones))
        feed = feed_parts[0] if len(feed_parts) == 1 else np.concatenate(feed_parts)
        state = state_parts[0] if len(state_parts) == 1 else np.concatenate(state_parts, axis=1)
        try:
            logits, new_state = self.model.run({"ids": feed, "state": state}, len(feed))
        except Exception as exc:  # the whole call failed: tell everyone in it
            for sequence in batch.sequences:
                self._fail(sequence, exc)
            batch.keep(np.zeros(count, dtype=bool))
            self._fail_reads(ones, exc)
            return
        batch.logits, batch.state = logits[:count, -1], new_state[:, :count]
        at = count
        for item in ones:
            item.advanced(logits[at : at + item.rows], new_state[:, at : at + item.rows], 1)
            at += item.rows
            self._finish_read(item)
        if done.any():
            self._end(np.flatnonzero(done))

    def _end(self, rows: np.ndarray) -> None:
        batch = self.generating
        for row in rows.tolist():
            sequence = batch.sequences[row]
            start = int(batch.sent[row]) if sequence.request.streaming else 0
            tail = batch.text(row, start, int(batch.produced[row]))
            if tail:
                self._send(sequence, tail)
            self._send(sequence, Finished(batch.state[:, row].copy(), batch.logits[row].copy()))
        keep = np.ones(len(batch), dtype=bool)
        keep[rows] = False
        batch.keep(keep)
        self.urgent = True

    def _read(self, items: list[Read]) -> None:
        """One model call advancing every row that has two or more characters left."""
        rows = sum(r.rows for r in items)
        steps = min(min(r.remaining for r in items), max(MIN_CHUNK, READ_BUDGET // rows))
        if len(items) == 1:
            item = items[0]
            feed, state = item.ids[:, item.pos : item.pos + steps], item.state
        else:
            feed = np.concatenate([r.ids[:, r.pos : r.pos + steps] for r in items])
            state = np.concatenate([r.state for r in items], axis=1)
        self.stats.read(rows)
        try:
            logits, new_state = self.model.run(
                {"ids": np.ascontiguousarray(feed), "state": state}, rows
            )
        except Exception as exc:  # a failure fails the reads in this call only
            self._fail_reads(items, exc)
            return
        at = 0
        for item in items:
            item.advanced(logits[at : at + item.rows], new_state[:, at : at + item.rows], steps)
            at += item.rows
            if item.remaining == 0:
                self._finish_read(item)

    def _finish_read(self, item: Read) -> None:
        self.reading.remove(item)
        if item.sequence is None:
            self._succeed(item)
            return
        assert item.last is not None
        self._join([item.sequence], item.last, item.state)

    def _fail_reads(self, items: list[Read], exc: BaseException) -> None:
        for item in items:
            self.reading.remove(item)
            if item.sequence is not None:
                self._not_joining(1)
            self._fail(item, exc)


def _settle(future: asyncio.Future[ReadResult], outcome: ReadResult | BaseException) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def _run_all(calls: list[tuple[Any, ...]]) -> None:
    for fn, *args in calls:
        fn(*args)
