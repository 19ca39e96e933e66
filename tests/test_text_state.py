"""Carried text states: the format and its checks, answers with a state equal to whole-text
answers, next_char batched across requests (mixed lengths and states in one call equal each
request alone), the routes, and a state that continues on another worker.

In-process on the committed char model (the pipeline and the ASGI app) except the two-worker
test, which needs real processes.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import random
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from loadtest.servers import Server, start_server, worker_processes
from service.engine.carried_state import (
    MAX_STATE_CHARS,
    PREFIX,
    TAG_BYTES,
    ModelIdentity,
    StateCodec,
    StateError,
)
from service.engine.pipeline import NextChars, Pipelines, identity_of
from service.errors import BadInput
from service.model.inference import ModelRegistry
from service.settings import Settings
from tests.conftest import FIXTURES, ROOT

if TYPE_CHECKING:
    from starlette.testclient import TestClient

CORPUS = (FIXTURES / "text" / "tinyshakespeare.txt").read_text()
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def registry() -> ModelRegistry:
    return ModelRegistry.load(Settings.from_env({"RNNSERVE_MODEL_DIR": str(ROOT / "models")}))


@pytest.fixture(scope="module")
def pipelines(registry: ModelRegistry) -> Pipelines:
    return Pipelines(registry, Settings.from_env({"RNNSERVE_MODEL_DIR": str(ROOT / "models")}))


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def assert_same(a: NextChars | dict[str, Any], b: NextChars | dict[str, Any]) -> None:
    """Same candidates in the same order, probabilities within TOLERANCE."""
    first, second = (_pairs(x) for x in (a, b))
    assert [c for c, _ in first] == [c for c, _ in second], (first, second)
    assert max(abs(p - q) for (_, p), (_, q) in zip(first, second, strict=True)) <= TOLERANCE


def _pairs(answer: NextChars | dict[str, Any]) -> list[tuple[str, float]]:
    if isinstance(answer, NextChars):
        return answer.candidates
    return [(c["char"], c["probability"]) for c in answer["candidates"]]


def pieces(text: str, cuts: int, rng: random.Random) -> list[str]:
    points = sorted(rng.sample(range(1, len(text)), min(cuts, len(text) - 1)))
    return [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]


# ----------------------------------------------------------------------- the format


def codec_for(registry: ModelRegistry, keys: tuple[str, ...] = (), **change: Any) -> StateCodec:
    assert registry.char is not None
    identity = identity_of(registry.char)
    fields = {**identity.__dict__, **change}
    return StateCodec(ModelIdentity(**fields), keys)


def a_state(codec: StateCodec, seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    rng = np.random.default_rng(seed)
    m = codec.model
    state = rng.uniform(-1, 1, (m.rows, m.hidden)).astype(np.float32)
    logits = rng.normal(0, 3, m.vocab).astype(np.float32)
    return state, logits, codec.encode(state, logits, 1234)


def test_a_state_round_trips_exactly_and_has_the_size_it_announces(
    registry: ModelRegistry,
) -> None:
    codec = codec_for(registry)
    state, logits, token = a_state(codec)
    assert token.startswith(PREFIX) and len(token) == codec.chars
    carried = codec.decode(token)
    assert carried.chars == 1234
    np.testing.assert_array_equal(carried.state, state)
    np.testing.assert_array_equal(carried.logits, logits)
    assert token.isascii() and "=" not in token and "+" not in token and "/" not in token


def refusal(codec: StateCodec, token: object) -> str:
    with pytest.raises(StateError) as caught:
        codec.decode(token)
    assert isinstance(caught.value, BadInput)  # a 400 on every route
    return caught.value.message


def test_every_bad_state_family_is_refused_with_a_message_that_says_why(
    registry: ModelRegistry,
) -> None:
    codec = codec_for(registry)
    _, _, token = a_state(codec)
    cases: dict[str, tuple[object, str]] = {
        "a number": (12, "must be a string"),
        "a list": ([token], "must be a string"),
        "empty": ("", "not a state from this service"),
        "another format version": ("rs2." + token[4:], "format version '2'"),
        "not ours": ("hello world", "not a state from this service"),
        "too long": (token + "A" * MAX_STATE_CHARS, "over the limit"),
        "not ASCII": (token[:-3] + "é" + token[-2:], "not base64url"),
        "not base64": (token[:100] + "!*" + token[102:], "not valid base64url"),
        "a lone base64 character": (token[:-1] + "=" * 5, "not valid base64url"),
        "truncated": (token[: len(token) // 2], "integrity check"),
        "truncated to the header": (token[:30], "truncated"),
        "extended": (token + "AAAA", "integrity check"),
    }
    for name, (value, expected) in cases.items():
        assert expected in refusal(codec, value), name


def test_a_changed_byte_anywhere_is_caught(registry: ModelRegistry) -> None:
    codec = codec_for(registry)
    _, _, token = a_state(codec)
    raw = bytearray(base64.urlsafe_b64decode(token[len(PREFIX) :] + "=" * (-len(token) % 4)))
    rng = random.Random(0)
    positions = [0, 4, 5, 6, 10, 20, len(raw) - 1, len(raw) - TAG_BYTES, len(raw) - TAG_BYTES - 1]
    positions += rng.sample(range(len(raw)), 40)
    for position in positions:
        changed = bytearray(raw)
        changed[position] ^= 1 << rng.randrange(8)
        forged = PREFIX + base64.urlsafe_b64encode(bytes(changed)).rstrip(b"=").decode()
        message = refusal(codec, forged)
        assert any(
            part in message for part in ("integrity check", "truncated", "format version")
        ), (position, message)


def test_a_state_names_its_model_and_version(registry: ModelRegistry) -> None:
    ours = codec_for(registry)
    for change in ({"name": "other-lm"}, {"version": "2.0.0"}, {"fingerprint": b"\0" * 8}):
        _, _, token = a_state(codec_for(registry, **change))
        message = refusal(ours, token)
        assert "this state belongs to" in message and "send the whole text again" in message
        assert ours.model.describe() in message
    _, _, token = a_state(codec_for(registry, hidden=128))
    assert "shape" in refusal(ours, token)


def test_values_must_be_finite_and_in_range(registry: ModelRegistry) -> None:
    codec = codec_for(registry)
    state, logits, _ = a_state(codec)
    for bad in (np.nan, np.inf, -np.inf, 1e7):
        broken = state.copy()
        broken[1, 7] = bad
        assert "not finite or out of range" in refusal(codec, codec.encode(broken, logits, 3))
        broken_logits = logits.copy()
        broken_logits[0] = bad
        assert "not finite" in refusal(codec, codec.encode(state, broken_logits, 3))


def test_signed_states_refuse_forgeries_and_rotate_keys(registry: ModelRegistry) -> None:
    unsigned = codec_for(registry)
    signed = codec_for(registry, ("key-one",))
    rotated = codec_for(registry, ("key-two", "key-one"))  # signs with two, still reads one
    other = codec_for(registry, ("key-three",))
    _, _, by_one = a_state(signed)
    _, _, plain = a_state(unsigned)
    assert rotated.decode(by_one).chars == 1234
    _, _, by_two = a_state(rotated)
    assert "integrity check" in refusal(signed, by_two)  # key two is unknown to `signed`
    assert "integrity check" in refusal(other, by_one)
    assert "accepts signed states only" in refusal(signed, plain)
    assert "no RNNSERVE_STATE_KEYS" in refusal(unsigned, by_one)
    # a client who knows the format but not the key: the checksum it can compute is refused
    raw = base64.urlsafe_b64decode(plain[len(PREFIX) :] + "=" * (-len(plain) % 4))
    body = bytearray(raw[:-TAG_BYTES])
    body[5] = 1  # claims to be signed, tagged with plain SHA-256
    import hashlib

    forged = bytes(body) + hashlib.sha256(bytes(body)).digest()
    token = PREFIX + base64.urlsafe_b64encode(forged).rstrip(b"=").decode()
    assert "integrity check" in refusal(signed, token)


# ----------------------------------------------------------------------- the pipeline


def test_state_chains_equal_the_whole_text_at_several_lengths(pipelines: Pipelines) -> None:
    rng = random.Random(1)

    async def check() -> None:
        for length in (1, 2, 9, 120, 777, 2000):
            start = rng.randrange(len(CORPUS) - length)
            text = CORPUS[start : start + length]
            whole = await pipelines.next_chars(text, 10, 1.0)
            assert whole.context_chars == length
            for cuts in (1, 3, 12):
                state = None
                for piece in pieces(text, cuts, rng) if length > 1 else [text]:
                    answer = await pipelines.next_chars(piece, 10, 1.0, state)
                    state = answer.state
                assert answer.context_chars == length
                assert_same(answer, whole)
            nothing_new = await pipelines.next_chars("", 10, 0.7, whole.state)
            assert_same(nothing_new, await pipelines.next_chars(text, 10, 0.7))
            assert nothing_new.context_chars == length

    run(check())


def test_a_text_longer_than_one_request_continues_with_states(pipelines: Pipelines) -> None:
    """Beyond RNNSERVE_MAX_TEXT_CHARS a text goes in pieces, each with the last state: the
    model's whole context is the state, whatever the length of the text."""
    text = CORPUS[:5000]

    async def check() -> tuple[NextChars, NextChars]:
        state = None
        for at in range(0, 5000, 2000):
            answer = await pipelines.next_chars(text[at : at + 2000], 5, 1.0, state)
            state = answer.state
        stepped: NextChars | None = None
        for at in range(0, 5000, 1000):
            stepped = await pipelines.next_chars(
                text[at : at + 1000], 5, 1.0, stepped.state if stepped else None
            )
        assert stepped is not None
        return answer, stepped

    by_2000, by_1000 = run(check())
    assert by_2000.context_chars == 5000
    assert_same(by_2000, by_1000)


def test_mixed_lengths_and_states_in_one_batch_equal_each_request_alone(
    pipelines: Pipelines,
) -> None:
    """32 concurrent requests, texts of 0 to 600 characters, half of them after a state, while
    generations run: the text loop reads them together (metrics count the shared calls), and
    every answer equals the same request alone."""
    rng = random.Random(2)
    cases: list[tuple[str, str | None]] = []

    async def prepare() -> list[NextChars]:
        for i in range(32):
            start = rng.randrange(len(CORPUS) - 700)
            length = rng.choice([0, 1, 1, 2, 5, 40, 400, 600]) if i % 2 else rng.randint(1, 600)
            head = CORPUS[start : start + rng.randint(1, 300)] if i % 2 else ""
            state = (await pipelines.next_chars(head, 8, 1.0)).state if head else None
            text = CORPUS[start + len(head) : start + len(head) + length]
            if state is None and not text:
                text = "A"
            cases.append((text, state))
        return [await pipelines.next_chars(t, 8, 1.0, s) for t, s in cases]

    lone = run(prepare())
    before = calls_of(pipelines)

    async def together() -> list[NextChars]:
        generations = [
            asyncio.ensure_future(pipelines.generate("ROMEO:\n", 300, 0.8, None, seed))
            for seed in range(4)
        ]
        answers = await asyncio.gather(*(pipelines.next_chars(t, 8, 1.0, s) for t, s in cases))
        await asyncio.gather(*generations)
        return list(answers)

    batched = run(together())
    for alone, shared in zip(lone, batched, strict=True):
        assert_same(shared, alone)
        assert shared.context_chars == alone.context_chars
    rows, reads = calls_of(pipelines)[0] - before[0], calls_of(pipelines)[1] - before[1]
    assert reads < rows, f"{rows} rows in {reads} read calls: nothing was shared"


def calls_of(pipelines: Pipelines) -> tuple[float, float]:
    """(rows read, read calls) of the text loop so far, from its own stats."""
    assert pipelines.text_loop is not None
    stats = pipelines.text_loop.stats
    return float(stats.rows_read), float(stats.read_calls)


def test_generation_continues_from_a_state_as_from_the_whole_prompt(
    pipelines: Pipelines, registry: ModelRegistry
) -> None:
    assert registry.char is not None
    head, tail = "ROMEO:\nWhat light through yonder ", "window breaks?\n"

    async def check() -> None:
        first = await pipelines.next_chars(head, 5, 1.0)
        for temperature, top_k, seed in ((0.0, None, 1), (0.8, None, 7), (1.2, 5, 99)):
            generation, text = await pipelines.generate(
                tail, 80, temperature, top_k, seed, first.state
            )
            expected = registry.char.generate(head + tail, 80, temperature, top_k, seed)  # type: ignore[union-attr]
            assert text == expected
            assert generation.context_chars == len(head + tail) + 80
            # the state covers the generated text too: the next candidates are the whole text's
            after = await pipelines.next_chars("", 5, 1.0, generation.state())
            assert_same(after, await pipelines.next_chars(head + tail + text, 5, 1.0))
            # and a generation may continue with no new characters at all
            _, more = await pipelines.generate("", 40, 0.0, None, 3, generation.state())
            again = registry.char.generate(head + tail + text, 40, 0.0, None, 3)  # type: ignore[union-attr]
            assert more == again

    run(check())


def test_a_bad_state_fails_its_own_request_only(pipelines: Pipelines) -> None:
    async def check() -> list[object]:
        good = await pipelines.next_chars("To be, or not", 5, 1.0)
        bad = good.state[:-8] + ("A" * 8 if not good.state.endswith("A" * 8) else "B" * 8)
        requests = []
        for i in range(24):
            state = bad if i % 3 == 0 else good.state
            requests.append(pipelines.next_chars(" to be", 5, 1.0, state))
        return list(await asyncio.gather(*requests, return_exceptions=True))

    results = run(check())
    for i, result in enumerate(results):
        if i % 3 == 0:
            assert isinstance(result, StateError) and "integrity" in result.message
        else:
            assert isinstance(result, NextChars) and result.context_chars == len(
                "To be, or not to be"
            )


def test_empty_text_needs_a_state(pipelines: Pipelines) -> None:
    with pytest.raises(BadInput, match="must not be empty"):
        run(pipelines.next_chars("", 5, 1.0))
    with pytest.raises(BadInput, match="must not be empty"):
        pipelines.generation("", 10, 0.8, None, 1)


# ----------------------------------------------------------------------- the routes


def test_the_routes_carry_the_state(app_client: TestClient) -> None:
    text = CORPUS[3000:3300]
    whole = app_client.post("/next_char", json={"text": text, "k": 5}).json()
    assert whole["state"].startswith(PREFIX) and whole["context_chars"] == 300
    state = None
    for piece in (text[:150], text[150:299], text[299:]):
        answer = app_client.post("/next_char", json={"text": piece, "k": 5, "state": state}).json()
        state = answer["state"]
    assert answer["text"] == text[299:] and answer["context_chars"] == 300
    assert_same(answer, whole)

    generated = app_client.post(
        "/generate", json={"prompt": "", "length": 30, "seed": 5, "state": state}
    ).json()
    assert generated["context_chars"] == 330
    following = app_client.post("/next_char", json={"text": "", "state": generated["state"]})
    assert_same(
        following.json(),
        app_client.post("/next_char", json={"text": text + generated["text"]}).json(),
    )

    with app_client.stream(
        "POST", "/v1/generate/stream", json={"prompt": "", "length": 30, "seed": 5, "state": state}
    ) as response:
        body = "".join(response.iter_text())
    end = json.loads(body.split("event: end\ndata: ", 1)[1].split("\n", 1)[0])
    streamed = "".join(
        json.loads(line[6:])["text"]
        for line in body.splitlines()
        if line.startswith("data: ") and '"text"' in line[:16]
    )
    assert streamed == generated["text"] and end["context_chars"] == 330
    assert end["state"] == generated["state"]  # the same loop, the same floats: the same bytes


@pytest.mark.parametrize("route", ["/next_char", "/generate", "/v1/generate/stream"])
def test_the_routes_refuse_bad_states_with_a_clear_400(app_client: TestClient, route: str) -> None:
    good = app_client.post("/next_char", json={"text": "Hello"}).json()["state"]
    field = "text" if route == "/next_char" else "prompt"
    extra = {} if route == "/next_char" else {"length": 5}
    cases = {
        "tampered": (good[:40] + ("B" if good[40] != "B" else "C") + good[41:], "integrity"),
        "truncated": (good[:-10], "integrity"),
        "not ours": ("abc", "not a state"),
        "a number": (5, "string"),
        "too long": ("rs1." + "A" * (MAX_STATE_CHARS + 10), "characters"),
    }
    for name, (state, expected) in cases.items():
        response = app_client.post(route, json={field: "x", "state": state, **extra})
        assert response.status_code == 400, (name, response.text)
        body = response.json()
        message = json.dumps(body)
        assert "state" in message and expected in message, (name, body)
    empty = app_client.post(route, json={field: "", **extra})
    assert empty.status_code == 400 and "must not be empty" in json.dumps(empty.json())


def test_the_openapi_document_describes_the_state(app_client: TestClient) -> None:
    document = app_client.get("/docs.json").json()
    text = json.dumps(document)
    assert "carried state" in text
    stream = document["paths"]["/v1/generate/stream"]["post"]
    schema = stream["requestBody"]["content"]["application/json"]["schema"]
    assert "state" in schema["properties"]


# ----------------------------------------------------------------------- across workers


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(
        tmp_path_factory.mktemp("two-workers"),
        model_dir=str(ROOT / "models"),
        workers="2",
        state_keys="a-shared-secret",
    )
    yield server
    server.stop()


@pytest.mark.slow
def test_a_state_continues_on_another_worker(two_workers: Server) -> None:
    """Each keystroke on a new connection; which worker answered is read from the kernel's
    socket table. The chain crosses workers and still equals the whole-text answer. The
    kernel decides which worker accepts: typing goes on (at least 60 keystrokes, at most
    540) until both have answered, since one can win many accepts in a row."""
    port = int(two_workers.url.rsplit(":", 1)[1])
    workers = worker_processes(two_workers.process.pid)
    assert len(workers) == 2
    text = CORPUS[8000:8600]
    state: str | None = None
    served_by: list[int] = []
    for i, piece in enumerate([text[:60], *text[60:]]):
        if i > 60 and len(set(served_by)) == 2:
            break
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        body = json.dumps({"text": piece, "k": 5, **({"state": state} if state else {})})
        connection.request("POST", "/next_char", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        answer = json.loads(response.read())
        assert response.status == 200, answer
        local = connection.sock.getsockname()[1]
        served_by.append(_worker_of(workers, port, local))
        connection.close()
        state = answer["state"]
        assert answer["context_chars"] == (60 if i == 0 else 60 + i)
    assert len(set(served_by)) == 2, f"one worker served all {len(served_by)} requests"
    whole = _post(port, {"text": text[: answer["context_chars"]], "k": 5})
    assert_same(answer, whole)


def _worker_of(workers: list[Any], port: int, client_port: int) -> int:
    for worker in workers:
        for conn in worker.connections(kind="tcp"):
            if (
                conn.laddr
                and conn.laddr.port == port
                and conn.raddr
                and conn.raddr.port == client_port
            ):
                return int(worker.pid)
    raise AssertionError(f"no worker holds the connection from port {client_port}")


def _post(port: int, payload: dict[str, Any]) -> dict[str, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request(
        "POST", "/next_char", json.dumps(payload), {"Content-Type": "application/json"}
    )
    answer: dict[str, Any] = json.loads(connection.getresponse().read())
    connection.close()
    return answer
