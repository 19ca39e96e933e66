"""Generation: the sampling rule, the text loop's continuous batching of generations (in-process,
the real committed char model) and the streaming route (a real server)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import httpx
import numpy as np
import pytest

from loadtest.servers import Server
from service.engine.text_loop import GenerationRequest, TextLoop
from service.errors import ClientGone, Overloaded
from service.model.inference import CharModel, ModelRegistry, sample
from service.settings import Settings
from tests.conftest import ROOT

if TYPE_CHECKING:
    from starlette.testclient import TestClient

PROMPTS = ["ROMEO:\n", "JULIET:\nO Romeo, Romeo", "First Citizen:\nBefore we proceed", "A"]


@pytest.fixture(scope="module")
def model() -> CharModel:
    registry = ModelRegistry.load(Settings.from_env({"RNNSERVE_MODEL_DIR": str(ROOT / "models")}))
    assert registry.char is not None
    return registry.char


def test_sampling_is_row_wise_and_honours_each_rows_settings() -> None:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((64, 65)).astype(np.float32) * 3
    temperature = rng.choice([0.0, 0.5, 1.0, 2.0], 64)
    top_k = rng.choice([1, 3, 10, 65], 64)
    uniform = rng.random(64)
    together = sample(logits, temperature, top_k, uniform)
    for row in range(64):  # a row's draw does not depend on the other rows
        alone = sample(
            logits[row : row + 1],
            temperature[row : row + 1],
            top_k[row : row + 1],
            uniform[row : row + 1],
        )
        assert alone[0] == together[row]
    for row in range(64):
        allowed = np.argsort(-logits[row])[: top_k[row]]
        assert together[row] in allowed  # samples stay in the top k
        if temperature[row] == 0 or top_k[row] == 1:
            assert together[row] == logits[row].argmax()  # greedy, and top-1 is greedy


def test_sampling_follows_the_probabilities() -> None:
    """Over many draws the frequencies match softmax(logits / T)."""
    logits = np.log(np.array([[0.5, 0.3, 0.2]], dtype=np.float32))
    draws = [
        int(sample(logits, np.array([1.0]), np.array([3]), np.array([u]))[0])
        for u in np.random.default_rng(1).random(20_000)
    ]
    freq = np.bincount(draws, minlength=3) / len(draws)
    np.testing.assert_allclose(freq, [0.5, 0.3, 0.2], atol=0.015)


def make_loop(model: CharModel, max_active: int, max_waiting: int, joins: int) -> TextLoop:
    return TextLoop(model, 64, 64, 1.0, max_active, max_waiting, joins)


def request_for(
    model: CharModel, prompt: str, length: int, temperature: float, k: int | None, seed: int
) -> GenerationRequest:
    return GenerationRequest(model.encode(prompt), length, temperature, k, seed)


def test_batched_generation_equals_the_lone_sequence_with_joins_and_leaves(
    model: CharModel,
) -> None:
    """Sequences of different lengths and settings join at different steps and some leave
    early (abandoned); every finished one equals the reference, computed alone."""
    settings = [
        (PROMPTS[i % 4], 40 + 17 * i, [0.0, 0.8, 1.3][i % 3], [None, 5, 1][i % 3], 100 + i)
        for i in range(12)
    ]

    async def run() -> tuple[list[str | None], int]:
        loop = make_loop(model, 8, 32, 2)
        texts: list[str | None] = [None] * len(settings)

        async def one(i: int) -> None:
            await asyncio.sleep(0.002 * i)  # arrive while others are mid-way
            prompt, length, temperature, k, seed = settings[i]
            sequence = loop.submit(
                request_for(model, prompt, length, temperature, k, seed), lambda: False
            )
            parts = []
            async for chunk in loop.chunks_of(sequence):
                parts.append(chunk)
                if i % 5 == 4 and sum(map(len, parts)) >= 10:
                    return  # leaves early: its row must be freed
            texts[i] = "".join(parts)

        await asyncio.gather(*(one(i) for i in range(len(settings))))
        for _ in range(100):  # the abandoned rows leave at the next step
            if loop.idle:
                break
            await asyncio.sleep(0.01)
        return texts, len(loop.generating) + len(loop.queued_generations)

    texts, left_over = asyncio.run(run())
    assert left_over == 0
    finished = 0
    for text, (prompt, length, temperature, k, seed) in zip(texts, settings, strict=True):
        if text is None:
            continue
        finished += 1
        assert text == model.generate(prompt, length, temperature, k, seed), (prompt, seed)
    assert finished == 10


def test_a_full_decode_loop_refuses_at_once(model: CharModel) -> None:
    async def run() -> list[object]:
        loop = make_loop(model, 2, 1, 1)
        results: list[object] = []
        for seed in range(4):
            try:
                results.append(
                    loop.submit(request_for(model, "A", 50, 1.0, None, seed), lambda: False)
                )
            except Overloaded as exc:
                results.append(exc)
        for item in results:
            if not isinstance(item, Overloaded):
                item.abandoned = True  # type: ignore[attr-defined]
        return results

    results = asyncio.run(run())
    assert isinstance(results[3], Overloaded) and "RNNSERVE_MAX_ACTIVE_GENERATIONS=2" in str(
        results[3]
    )
    assert not any(isinstance(r, Overloaded) for r in results[:3])


def test_waiters_that_gave_up_give_back_their_places_while_the_loop_is_full(
    model: CharModel,
) -> None:
    """One long generation holds the only active place; a waiter that timed out (abandoned)
    and one whose client left must not hold the waiting places, and must not pile up: the
    next submissions are admitted, the departed one is told, the queue holds only live ones."""
    left = {"b": False}

    async def run() -> tuple[list[object], type[BaseException] | None, int]:
        loop = make_loop(model, 1, 2, 1)
        long_one = loop.submit(request_for(model, "A", 100_000, 1.0, None, 1), lambda: False)
        while not len(loop.generating):  # the long one has taken the active place
            await asyncio.sleep(0.01)
        timed_out = loop.submit(request_for(model, "A", 5, 1.0, None, 2), lambda: False)
        departed = loop.submit(request_for(model, "A", 5, 1.0, None, 3), lambda: left["b"])
        timed_out.abandoned = True
        left["b"] = True
        admitted: list[object] = []
        for seed in (4, 5, 6):  # two places free again; the third is one too many
            try:
                admitted.append(
                    loop.submit(request_for(model, "A", 5, 1.0, None, seed), lambda: False)
                )
            except Overloaded as exc:
                admitted.append(exc)
        told: type[BaseException] | None = None
        try:
            async for _ in loop.chunks_of(departed):
                pass
        except Exception as exc:
            told = type(exc)
        waiting = len(loop.queued_generations)
        for sequence in (long_one, *admitted):
            if not isinstance(sequence, Overloaded):
                sequence.abandoned = True  # type: ignore[attr-defined]
        return admitted, told, waiting

    admitted, told, waiting = asyncio.run(run())
    assert [isinstance(a, Overloaded) for a in admitted] == [False, False, True]
    assert told is ClientGone and waiting == 2


def test_a_departed_client_ends_its_sequence(model: CharModel) -> None:
    gone = {"left": False}

    async def run() -> type[BaseException] | None:
        loop = make_loop(model, 4, 4, 1)
        sequence = loop.submit(request_for(model, "A", 1000, 1.0, None, 1), lambda: gone["left"])
        try:
            async for _ in loop.chunks_of(sequence):
                gone["left"] = True
        except Exception as exc:
            return type(exc)
        return None

    assert asyncio.run(run()) is ClientGone


# ----------------------------------------------------------------------- over HTTP


@pytest.fixture(scope="module")
def client(default_server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=default_server.url, timeout=60) as c:
        yield c


def read_events(response: httpx.Response) -> list[tuple[str, dict]]:
    events = []
    for block in response.text.split("\n\n"):
        if not block.strip():
            continue
        name, data = "message", ""
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data += line[6:]
        events.append((name, json.loads(data)))
    return events


@pytest.mark.slow
def test_the_stream_equals_the_one_shot_answer(client: httpx.Client) -> None:
    body = {"prompt": "JULIET:\n", "length": 300, "temperature": 0.9, "top_k": 10, "seed": 42}
    one_shot = client.post("/generate", json=body).json()
    r = client.post("/v1/generate/stream", json=body)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = read_events(r)
    text = "".join(e["text"] for name, e in events if name == "message")
    assert text == one_shot["text"] and len(text) == 300
    name, end = events[-1]
    assert name == "end" and end["chars"] == 300 and end["seed"] == 42
    assert end["first_char_ms"] > 0 and end["model"] == "char-rnn"


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"prompt": "ROMEO€", "length": 10}, 422, "vocabulary"),
        ({"prompt": "ROMEO", "length": 5000}, 400, "RNNSERVE_MAX_GENERATE_CHARS"),
        ({"prompt": "ROMEO", "length": 0}, 400, "RNNSERVE_MAX_GENERATE_CHARS"),
        ({"prompt": "R" * 2001}, 400, "RNNSERVE_MAX_TEXT_CHARS"),
        ({"prompt": "ROMEO", "length": True}, 400, "'length' must be a whole number"),
        ({"prompt": "ROMEO", "temperature": "hot"}, 400, "'temperature' must be a number"),
        ({"prompt": "ROMEO", "top_k": 0}, 400, "RNNSERVE_MAX_TOP_K"),
        ({"prompt": "", "length": 5}, 400, "must not be empty"),
        ({"prompt": "ROMEO", "colour": 1}, 400, "unknown field"),
        ({"prompt": 5}, 400, "'prompt' must be a string"),
    ],
)
def test_bad_parameters_are_refused_before_anything_streams(
    app_client: TestClient, body: dict, status: int, message: str
) -> None:
    """On the service in this process: a refusal is a plain answer, no socket needed."""
    r = app_client.post("/v1/generate/stream", json=body)
    assert r.status_code == status and r.headers["content-type"] == "application/json", r.text
    assert message in r.json()["error"]


def metric(client: httpx.Client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.slow
def test_a_disconnecting_stream_frees_its_row(client: httpx.Client, default_server: Server) -> None:
    """8 streams of 1,000 characters, closed after their first chunk: the decode loop lets
    them go (rnnserve_generation_active back to 0) before they are done. How many steps that
    takes depends on how soon this machine delivers the disconnect (612 steps once, in a
    loaded CI run): the bound is the 1,000 steps of generations nobody stopped, with room."""
    steps_before = metric(client, "rnnserve_generation_steps_total")

    async def scenario() -> float:
        async with httpx.AsyncClient(base_url=default_server.url, timeout=30) as aclient:

            async def leave_early(seed: int) -> None:
                body = {"prompt": "ROMEO:", "length": 1000, "seed": seed}
                async with aclient.stream("POST", "/v1/generate/stream", json=body) as r:
                    async for _ in r.aiter_bytes():
                        break  # the first chunk, then the connection closes

            started = time.perf_counter()
            await asyncio.gather(*(leave_early(s) for s in range(8)))
            return started

    started = asyncio.run(scenario())
    while metric(client, "rnnserve_generation_active") > 0 and time.perf_counter() - started < 5:
        time.sleep(0.02)
    assert metric(client, "rnnserve_generation_active") == 0
    steps = metric(client, "rnnserve_generation_steps_total") - steps_before
    assert 0 < steps < 900, steps  # the loop ran, and stopped before the 1,000 steps
