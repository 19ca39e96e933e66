"""The text loop's admission, in-process on the real committed char model: the rules of the
digit routes (a bounded queue refused at once, a bound on the wait, departed clients and
cancelled requests dropped before they reach the model), and reads joining the generation
step. A long real read (64 rows of 2,000 characters) keeps the loop busy while the others
queue."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from service.engine.admission import CLIENT_LEFT
from service.engine.text_loop import GenerationRequest, ReadResult, TextLoop
from service.errors import ClientGone, Overloaded
from service.model.inference import CharModel, ModelRegistry
from service.settings import Settings
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def model() -> CharModel:
    registry = ModelRegistry.load(Settings.from_env({"RNNSERVE_MODEL_DIR": str(ROOT / "models")}))
    assert registry.char is not None
    return registry.char


class RecordingLoop(TextLoop):
    """The real loop, recording which reads it took from the queue."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.admitted: list[tuple[int, ...]] = []
        self.rode_steps = 0  # reads answered by a generation step's call

    def _step(self, ones: list[Any]) -> None:
        if len(self.generating):
            self.rode_steps += len(ones)
        super()._step(ones)

    def _admit(self) -> None:
        before = {id(r) for r in self.reading}
        super()._admit()
        self.admitted += [r.ids.shape for r in self.reading if id(r) not in before]


def text_loop(model: CharModel, max_queued: int = 4, max_wait_s: float = 120.0) -> RecordingLoop:
    """The loop with a queue of `max_queued` reads; the wait bound is far beyond what the heavy
    read takes even on a loaded machine (a CI run saw it take over 5 s), unless a test is
    about that bound."""
    return RecordingLoop(model, 64, max_queued, max_wait_s, 8, 8, 4)


def heavy(model: CharModel) -> tuple[np.ndarray, np.ndarray]:
    """64 rows of 2,000 ids: the loop is busy with it for a good fraction of a second."""
    ids = np.random.default_rng(0).integers(0, len(model.vocab), (64, 2000))
    return ids, model.fresh_state(64)


def small(model: CharModel, text: str = "To be, or not") -> tuple[np.ndarray, np.ndarray]:
    return model.encode(text)[None, :], model.fresh_state(1)


async def read_as(
    loop: TextLoop, args: tuple[np.ndarray, np.ndarray], left: Callable[[], bool]
) -> ReadResult:
    CLIENT_LEFT.set(left)  # as the front-end sets it per request, in the request's task
    return await loop.read(*args)


async def busy(loop: TextLoop, model: CharModel) -> asyncio.Task[Any]:
    task = asyncio.ensure_future(loop.read(*heavy(model)))
    while not loop.reading:  # the heavy read has the loop
        await asyncio.sleep(0.001)
    return task


def test_a_full_text_queue_refuses_at_once_and_the_rest_are_served(model: CharModel) -> None:
    async def run() -> list[object]:
        loop = text_loop(model, max_queued=2)
        first = await busy(loop, model)
        waiting = [asyncio.ensure_future(loop.read(*small(model))) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="RNNSERVE_MAX_QUEUED_TEXT=2"):
            await loop.read(*small(model))
        return list(await asyncio.gather(first, *waiting))

    results = asyncio.run(run())
    assert all(isinstance(r, ReadResult) for r in results)


def test_a_request_that_waited_too_long_is_refused_when_its_turn_comes(model: CharModel) -> None:
    async def run() -> tuple[list[tuple[int, ...]], BaseException | None]:
        loop = text_loop(model)
        first = await busy(loop, model)
        loop.max_wait_s = 0.0  # from now on any wait is too long: no race with the heavy read
        try:
            await loop.read(*small(model))
            error = None
        except Overloaded as exc:
            error = exc
        await first
        return loop.admitted, error

    admitted, error = asyncio.run(run())
    assert isinstance(error, Overloaded) and "RNNSERVE_MAX_QUEUE_WAIT_MS" in str(error)
    assert admitted == [(64, 2000)]  # the late one was never read


def test_departed_and_cancelled_requests_never_reach_the_model(model: CharModel) -> None:
    """A waiter whose client left gets ClientGone at its turn; a cancelled one is dropped; only
    the heavy read and the one live waiter are read."""
    gone = {"left": False}

    async def run() -> tuple[type[BaseException] | None, list[tuple[int, ...]], int]:
        loop = text_loop(model)
        first = await busy(loop, model)
        departed = asyncio.ensure_future(read_as(loop, small(model), lambda: gone["left"]))
        cancelled = asyncio.ensure_future(loop.read(*small(model)))
        live = asyncio.ensure_future(loop.read(*small(model)))
        await asyncio.sleep(0)  # all three are queued behind the heavy read
        gone["left"] = True
        cancelled.cancel()
        outcome: type[BaseException] | None = None
        try:
            await departed
        except ClientGone:
            outcome = ClientGone
        await asyncio.gather(first, live)
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        return outcome, loop.admitted, len(loop.queued_reads)

    outcome, admitted, queued = asyncio.run(run())
    assert outcome is ClientGone
    assert queued == 0
    assert admitted == [(64, 2000), (1, 13)]  # the heavy read and the live waiter only


def test_a_keystroke_joins_the_generation_step(model: CharModel) -> None:
    """While generations run, a one-character read rides the generation step's model call
    instead of waiting for one of its own."""

    async def run() -> tuple[int, int]:
        loop = text_loop(model)
        sequences = [
            loop.submit(
                GenerationRequest(model.encode("ROMEO:\n"), 20_000, 0.8, None, seed),
                lambda: False,
            )
            for seed in range(8)
        ]
        readers = [asyncio.ensure_future(_drain(loop, s)) for s in sequences]
        while len(loop.generating) < 8:
            await asyncio.sleep(0.001)
        steps_before = loop.stats.read_calls
        for _ in range(20):
            await loop.read(*small(model, "A"))
        calls = loop.stats.read_calls - steps_before
        for reader in readers:  # the consumers stop: their rows leave the batch
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        while len(loop.generating):
            await asyncio.sleep(0.005)
        return loop.rode_steps, calls

    rode, calls = asyncio.run(run())
    assert calls == 20  # each keystroke in one call: the generation step it joined
    assert rode == 20  # every one of them in a step's call, none in a call of its own


async def _drain(loop: TextLoop, sequence: Any) -> None:
    async for _ in loop.chunks_of(sequence):
        pass
