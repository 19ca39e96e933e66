"""Admission control (service/engine/admission.py): the continuous batcher and the work queues, with
real models where a model runs, driven by asyncio without a server."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from loadtest.payloads import digits
from service.engine.admission import CLIENT_LEFT, ContinuousBatcher, Lane
from service.errors import ClientGone, Overloaded
from service.model.inference import ModelRegistry
from service.settings import Settings
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def pool() -> np.ndarray:
    return np.array([d.pixels for d in digits()], dtype=np.float32)


@pytest.fixture(scope="module")
def registry() -> ModelRegistry:
    return ModelRegistry.load(Settings.from_env({"RNNSERVE_MODEL_DIR": str(ROOT / "models")}))


def recording(predict: object, calls: list[int]) -> object:
    def run(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        return predict(batch)  # type: ignore[operator]

    return run


def test_concurrent_requests_are_merged_and_kept_apart(
    registry: ModelRegistry, pool: np.ndarray
) -> None:
    """48 concurrent requests of 1-3 images each come back with their own answers, identical
    to one direct call each, in fewer model calls than requests, none over max_rows."""
    model = registry.digits["mnist-rnn"]
    requests = [pool[i % 60 : i % 60 + 1 + i % 3] for i in range(48)]
    expected = [model.predict(r) for r in requests]
    calls: list[int] = []

    async def run() -> list[np.ndarray]:
        batcher = ContinuousBatcher("t", recording(model.predict, calls), 16, 1024, 10.0)  # type: ignore[arg-type]
        return await asyncio.gather(*(batcher.predict(r) for r in requests))

    answers = asyncio.run(run())
    for got, want in zip(answers, expected, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)
    assert sum(calls) == sum(len(r) for r in requests)
    assert len(calls) < len(requests) and max(calls) <= 16


def slow_identity(calls: list[int], seconds: float = 0.05) -> object:
    def run(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        time.sleep(seconds)
        return batch[:, 0, :10]

    return run


def test_a_full_queue_refuses_at_once_and_the_rest_are_served() -> None:
    """8 images may wait: of 12 one-image requests arriving together, 8 queue (and go in one
    model call) and 4 are refused before any model work; each accepted one gets its own rows."""
    calls: list[int] = []

    async def run() -> list[object]:
        batcher = ContinuousBatcher("t", slow_identity(calls), 64, 8, 10.0)  # type: ignore[arg-type]
        requests = [np.full((1, 28, 28), i, np.float32) for i in range(12)]
        return await asyncio.gather(*(batcher.predict(r) for r in requests), return_exceptions=True)

    results = asyncio.run(run())
    refused = [r for r in results if isinstance(r, Overloaded)]
    served = [(i, r) for i, r in enumerate(results) if isinstance(r, np.ndarray)]
    assert len(refused) == 4 and "RNNSERVE_MAX_QUEUED_IMAGES=8" in str(refused[0])
    assert len(served) == 8 and all((r == i).all() for i, r in served)
    assert calls == [8]


def test_a_request_that_waited_too_long_is_refused_not_run_late() -> None:
    calls: list[int] = []

    async def run() -> list[object]:
        batcher = ContinuousBatcher("t", slow_identity(calls, 0.2), 1, 64, 0.1)  # type: ignore[arg-type]
        requests = [np.zeros((1, 28, 28), np.float32) for _ in range(3)]
        return await asyncio.gather(*(batcher.predict(r) for r in requests), return_exceptions=True)

    first, *late = asyncio.run(run())
    assert isinstance(first, np.ndarray)
    assert all(isinstance(r, Overloaded) and "RNNSERVE_MAX_QUEUE_WAIT_MS" in str(r) for r in late)
    assert calls == [1]  # the late ones never reached the model


def test_a_cancelled_request_leaves_the_queue_and_never_reaches_the_model() -> None:
    calls: list[int] = []

    async def run() -> tuple[int, np.ndarray]:
        batcher = ContinuousBatcher("t", slow_identity(calls, 0.1), 64, 64, 10.0)  # type: ignore[arg-type]
        first = asyncio.create_task(batcher.predict(np.zeros((1, 28, 28), np.float32)))
        await asyncio.sleep(0.01)  # the first is in the model now
        gone = asyncio.create_task(batcher.predict(np.ones((5, 28, 28), np.float32)))
        await asyncio.sleep(0.01)
        queued_before = batcher.queued_rows
        gone.cancel()  # its client disconnected
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert batcher.queued_rows == 0
        third = await batcher.predict(np.full((2, 28, 28), 2, np.float32))
        await first
        return queued_before, third

    queued_before, third = asyncio.run(run())
    assert queued_before == 5 and (third == 2).all()
    assert calls == [1, 2]  # the cancelled 5 images were never computed


def test_a_model_failure_fails_its_own_batch_only() -> None:
    def flaky(batch: np.ndarray) -> np.ndarray:
        if (batch == 7).any():
            raise RuntimeError("bad batch")
        time.sleep(0.02)
        return batch[:, 0, :10]

    async def run() -> list[object]:
        batcher = ContinuousBatcher("t", flaky, 1, 64, 10.0)  # one request per model call
        values = [0, 7, 3]
        return await asyncio.gather(
            *(batcher.predict(np.full((1, 28, 28), v, np.float32)) for v in values),
            return_exceptions=True,
        )

    ok, failed, later = asyncio.run(run())
    assert isinstance(failed, RuntimeError)
    assert isinstance(ok, np.ndarray) and isinstance(later, np.ndarray) and (later == 3).all()


def test_work_queue_runs_on_its_own_threads_and_refuses_beyond_capacity() -> None:
    names: list[str] = []

    def work(seconds: float) -> str:
        names.append(threading.current_thread().name)
        time.sleep(seconds)
        return "done"

    async def run() -> list[object]:
        lane = Lane("lane", threads=1, max_waiting=2, setting="RNNSERVE_X")
        results: list[object] = await asyncio.gather(
            *(lane.run(work, 0.05) for _ in range(5)), return_exceptions=True
        )
        await asyncio.sleep(0.01)
        assert lane.pending == 0  # every slot given back
        return results

    results = asyncio.run(run())
    assert results.count("done") == 3
    refused = [r for r in results if isinstance(r, Overloaded)]
    assert len(refused) == 2 and "RNNSERVE_X=2" in str(refused[0])
    assert all(name.startswith("lane-lane") for name in names)


def test_work_queue_never_starts_work_whose_request_was_cancelled() -> None:
    started: list[int] = []

    def work(i: int) -> int:
        started.append(i)
        time.sleep(0.1)
        return i

    async def run() -> int:
        lane = Lane("lane", threads=1, max_waiting=4, setting="RNNSERVE_X")
        first = asyncio.create_task(lane.run(work, 1))
        await asyncio.sleep(0.01)
        second = asyncio.create_task(lane.run(work, 2))
        await asyncio.sleep(0.01)
        second.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second
        result = await first
        await asyncio.sleep(0.01)
        assert lane.pending == 0
        return result

    assert asyncio.run(run()) == 1
    assert started == [1]


def test_work_of_a_departed_client_is_dropped_when_its_turn_comes() -> None:
    """The protocol layer sets CLIENT_LEFT per request; the batcher and the lanes consult it
    when a request's turn comes, so a departed client's work never reaches the model."""
    calls: list[int] = []
    started: list[str] = []
    gone = {"a": False, "b": False}

    async def request(batcher: ContinuousBatcher, who: str, value: float) -> object:
        CLIENT_LEFT.set(lambda: gone[who])  # in this request's own task context
        try:
            return await batcher.predict(np.full((1, 28, 28), value, np.float32))
        except ClientGone as exc:
            return exc

    async def lane_request(lane: Lane, who: str) -> object:
        CLIENT_LEFT.set(lambda: gone[who])
        try:
            return await lane.run(started.append, who)
        except ClientGone as exc:
            return exc

    async def run() -> tuple[list[object], list[object]]:
        batcher = ContinuousBatcher("t", slow_identity(calls, 0.05), 1, 64, 10.0)  # type: ignore[arg-type]
        first = asyncio.create_task(batcher.predict(np.zeros((1, 28, 28), np.float32)))
        await asyncio.sleep(0.01)  # the model is busy with the first
        queued = [asyncio.create_task(request(batcher, w, v)) for w, v in (("a", 1), ("b", 2))]
        await asyncio.sleep(0.01)
        gone["a"] = True  # a's client leaves while a waits
        results = await asyncio.gather(*queued)
        await first
        lane = Lane("lane", threads=1, max_waiting=4, setting="RNNSERVE_X")
        blocker = asyncio.create_task(lane.run(time.sleep, 0.05))
        await asyncio.sleep(0.01)
        waiting = [asyncio.create_task(lane_request(lane, w)) for w in ("a", "b")]
        lane_results = await asyncio.gather(*waiting)
        await blocker
        return results, lane_results

    results, lane_results = asyncio.run(run())
    assert isinstance(results[0], ClientGone)
    assert isinstance(results[1], np.ndarray) and (results[1] == 2).all()
    assert calls == [1, 1]  # the first and b's: a's image never reached the model
    assert isinstance(lane_results[0], ClientGone) and started == ["b"]
