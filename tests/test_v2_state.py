"""The character model's carried state over V2 (`carried_state` in, `carried_state_out` out), on
the service in this process: a text read in pieces, each request sending back the previous
answer's state, gives the logits of the whole text; the string is the one /next_char answers
as `state`, so a text continues across interfaces; a bad state is a 400 naming the problem.
Requests are built and answers read by tritonclient's own encoder and decoder (JSON and binary
tensor data, BYTES included), so the wire format is the one its clients send."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import serialize_byte_tensor

from service.engine.pipeline import CharSteps, Pipelines
from service.http.v2_app import infer_chars
from service.http.v2_protocol import parse_infer_request
from service.model.inference import ModelRegistry
from service.settings import Settings
from tests.conftest import ROOT

if TYPE_CHECKING:
    from starlette.testclient import TestClient

INFER = "/v2/models/char-rnn/infer"
TEXT = "ROMEO:\nWhat light through yonder window breaks? It is the east"
CUTS = (17, 40)  # three pieces


@pytest.fixture(scope="module")
def vocab(app_client: TestClient) -> list[str]:
    return list(app_client.get("/v1/metadata").json()["vocabulary"])


def ids_of(vocab: list[str], *texts: str) -> np.ndarray:
    return np.array([[vocab.index(c) for c in text] for text in texts], dtype=np.int64)


def infer(
    client: TestClient,
    ids: np.ndarray,
    carried: list[Any] | None = None,
    binary: bool = False,
    outputs: list[str] | None = None,
) -> triton.InferResult:
    """One V2 request as tritonclient writes it, answered as tritonclient reads it. Naming
    no outputs, tritonclient asks for binary ones: JSON answers need them named."""
    if outputs is None and not binary:
        outputs = ["logits", "state_out", "carried_state_out"]
    inputs = [triton.InferInput("ids", list(ids.shape), "INT64")]
    inputs[0].set_data_from_numpy(ids, binary_data=binary)
    if carried is not None:
        inputs.append(triton.InferInput("carried_state", [len(carried)], "BYTES"))
        inputs[1].set_data_from_numpy(np.array(carried, dtype=object), binary_data=binary)
    wanted = [triton.InferRequestedOutput(n, binary_data=binary) for n in outputs or []]
    body, json_size = triton.InferenceServerClient.generate_request_body(inputs, wanted or None)
    headers = {"content-type": "application/json"}
    if json_size is not None:
        headers = {
            "content-type": "application/octet-stream",
            "inference-header-content-length": str(json_size),
        }
    r = client.post(INFER, content=body, headers=headers)
    assert r.status_code == 200, r.text
    length = r.headers.get("inference-header-content-length")
    return triton.InferenceServerClient.parse_response_body(
        r.content, header_length=int(length) if length else None
    )


def pieces(text: str) -> list[str]:
    bounds = [0, *CUTS, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


def text_of(state: str | bytes) -> str:
    """A state as JSON carries it (tritonclient's as_numpy gives bytes from binary data)."""
    return state.decode() if isinstance(state, bytes) else state


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits.astype(np.float64) - logits.max())
    return e / e.sum()


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_a_text_read_in_pieces_with_carried_state_equals_the_whole(
    app_client: TestClient, vocab: list[str], binary: bool
) -> None:
    whole = infer(app_client, ids_of(vocab, TEXT), binary=binary)
    expected = whole.as_numpy("logits")
    carried: list[Any] | None = None
    at = 0
    for piece in pieces(TEXT):
        result = infer(app_client, ids_of(vocab, piece), carried, binary)
        logits = result.as_numpy("logits")
        np.testing.assert_allclose(logits[0], expected[0, at : at + len(piece)], atol=1e-4)
        out = result.as_numpy("carried_state_out")
        assert out.shape == (1,) and out.dtype == object
        # JSON gives str, binary data bytes (tritonclient's as_numpy): either goes back as is
        assert isinstance(out[0], bytes if binary else str)
        carried = list(out)
        at += len(piece)
    np.testing.assert_allclose(logits[0, -1], expected[0, -1], atol=1e-4)
    np.testing.assert_allclose(result.as_numpy("state_out"), whole.as_numpy("state_out"), atol=1e-4)


def test_the_carried_state_is_the_one_next_char_answers(
    app_client: TestClient, vocab: list[str]
) -> None:
    """One text, its pieces read alternately by /next_char and V2, each taking the state the
    other answered: the end is the whole text's logits, and /next_char's candidates after the
    V2 state are the softmax of V2's last logits."""
    first, second, third = pieces(TEXT)
    expected = infer(app_client, ids_of(vocab, TEXT)).as_numpy("logits")[0, -1]
    native = app_client.post("/next_char", json={"text": first, "k": 1}).json()
    result = infer(app_client, ids_of(vocab, second), [native["state"]])
    native = app_client.post(
        "/next_char",
        json={"text": third, "k": 3, "state": text_of(result.as_numpy("carried_state_out")[0])},
    ).json()
    assert native["context_chars"] == len(TEXT)
    chain = infer(app_client, ids_of(vocab, third), list(result.as_numpy("carried_state_out")))
    np.testing.assert_allclose(chain.as_numpy("logits")[0, -1], expected, atol=1e-4)
    probs = softmax(expected)
    for candidate in native["candidates"]:
        assert candidate["probability"] == pytest.approx(
            probs[vocab.index(candidate["char"])], abs=1e-4
        )
    # and V2's final state, sent to /next_char with no new text, says the same
    after = app_client.post(
        "/next_char",
        json={"text": "", "k": 3, "state": text_of(chain.as_numpy("carried_state_out")[0])},
    ).json()
    assert after["context_chars"] == len(TEXT)
    assert [c["char"] for c in after["candidates"]] == [c["char"] for c in native["candidates"]]
    for ours, theirs in zip(after["candidates"], native["candidates"], strict=True):
        assert ours["probability"] == pytest.approx(theirs["probability"], abs=1e-4)


def test_each_row_continues_from_its_own_state(app_client: TestClient, vocab: list[str]) -> None:
    texts = ("ROMEO:\nWhat light through yonder", "JULIET:\nO Romeo, Romeo! wherefor")
    assert len(texts[0]) == len(texts[1])
    whole = infer(app_client, ids_of(vocab, *texts), binary=True).as_numpy("logits")
    head = infer(app_client, ids_of(vocab, *(t[:12] for t in texts)), binary=True)
    states = list(head.as_numpy("carried_state_out"))
    assert len(states) == 2 and states[0] != states[1]
    rest = ids_of(vocab, *(t[12:] for t in texts))
    tail = infer(app_client, rest, states, binary=True).as_numpy("logits")
    np.testing.assert_allclose(tail, whole[:, 12:], atol=1e-4)
    swapped = infer(app_client, rest, states[::-1], binary=True).as_numpy("logits")
    assert not np.allclose(swapped, whole[:, 12:], atol=1e-2)  # row i reads state i


def test_naming_outputs_without_carried_state_out_leaves_it_out(
    app_client: TestClient, vocab: list[str]
) -> None:
    result = infer(app_client, ids_of(vocab, "ROMEO"), outputs=["logits"])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["logits"]
    result = infer(app_client, ids_of(vocab, "ROMEO"), outputs=["carried_state_out"])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["carried_state_out"]


class RecordingPipelines(Pipelines):
    """The real pipelines on the committed models, recording what the V2 route asked for."""

    def __init__(self) -> None:
        settings = Settings.from_env({"RNNSERVE_MODEL_DIR": str(ROOT / "models")})
        super().__init__(ModelRegistry.load(settings), settings)
        self.calls: list[dict[str, Any]] = []

    async def char_logits(
        self,
        ids: np.ndarray,
        state: np.ndarray | None,
        carried: list[object] | None = None,
        carried_out: bool = True,
        version: int | None = None,
    ) -> CharSteps:
        self.calls.append({"carried": carried, "carried_out": carried_out})
        return await super().char_logits(ids, state, carried, carried_out, version)


def test_carried_states_are_computed_only_when_wanted() -> None:
    """Encoding a state per row costs a hash and base64 of ~8 kB: a client that names its
    outputs without `carried_state_out` does not pay for it."""
    pipelines = RecordingPipelines()
    state = asyncio.run(pipelines.next_chars("To be", 5, 1.0)).state
    for outputs, computed in (
        (None, True),
        (["logits"], False),
        (["logits", "state_out"], False),
        (["state_out", "carried_state_out"], True),
    ):
        header: dict[str, Any] = {
            "inputs": [
                {"name": "ids", "datatype": "INT64", "shape": [2, 1], "data": [1, 2]},
                {"name": "carried_state", "datatype": "BYTES", "shape": [2], "data": [state] * 2},
            ]
        }
        if outputs is not None:
            header["outputs"] = [{"name": n} for n in outputs]
        pipelines.calls.clear()
        request = parse_infer_request(json.dumps(header).encode(), None)
        answer = asyncio.run(infer_chars(pipelines, pipelines.char_model(), request))
        assert pipelines.calls == [{"carried": [state, state], "carried_out": computed}]
        assert ("carried_state_out" in answer) is computed, outputs


def post_json(client: TestClient, inputs: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
    r = client.post(INFER, json={"inputs": inputs})
    return r.status_code, r.json()


def post_binary(
    client: TestClient, inputs: list[dict[str, Any]], blob: bytes
) -> tuple[int, dict[str, Any]]:
    head = json.dumps({"inputs": inputs}).encode()
    r = client.post(
        INFER,
        content=head + blob,
        headers={
            "content-type": "application/octet-stream",
            "inference-header-content-length": str(len(head)),
        },
    )
    return r.status_code, r.json()


def ids_input(ids: np.ndarray) -> dict[str, Any]:
    return {
        "name": "ids",
        "datatype": "INT64",
        "shape": list(ids.shape),
        "data": ids.ravel().tolist(),
    }


def carried_input(*states: str, shape: list[int] | None = None) -> dict[str, Any]:
    return {
        "name": "carried_state",
        "datatype": "BYTES",
        "shape": shape or [len(states)],
        "data": list(states),
    }


@pytest.fixture(scope="module")
def good_state(app_client: TestClient, vocab: list[str]) -> str:
    out = infer(app_client, ids_of(vocab, "ROMEO:\n")).as_numpy("carried_state_out")[0]
    assert isinstance(out, str) and out.startswith("rs1.")
    return out


def changed(state: str) -> str:
    at = len(state) // 2
    return state[:at] + ("A" if state[at] != "A" else "B") + state[at + 1 :]


def fp32(name: str, shape: list[int], value: float = 0.0) -> dict[str, Any]:
    return {"name": name, "datatype": "FP32", "shape": shape, "data": [value] * int(np.prod(shape))}


# (rows of text, the inputs after `ids` made from a good state, what the error must say)
BAD_STATES: dict[str, tuple[tuple[str, ...], Callable[[str], list[dict[str, Any]]], str]] = {
    "changed-character": (
        ("x",),
        lambda s: [carried_input(changed(s))],
        "carried_state[0]: this state failed its integrity check",
    ),
    "truncated-a-little": (
        ("x",),
        lambda s: [carried_input(s[:-8])],
        "carried_state[0]: this state failed its integrity check",
    ),
    "truncated-to-200-chars": (
        ("x",),
        lambda s: [carried_input(s[:200])],
        "carried_state[0]: this state failed its integrity check",
    ),
    "second-row-changed": (
        ("x", "y"),
        lambda s: [carried_input(s, changed(s))],
        "carried_state[1]: this state failed its integrity check",
    ),
    "not-a-state": (
        ("x",),
        lambda s: [carried_input("hello")],
        "carried_state[0]: this is not a state from this service",
    ),
    "more-states-than-rows": (
        ("x",),
        lambda s: [carried_input(s, s)],
        "'carried_state' has 2 state(s) for 1 row(s) of ids",
    ),
    "fewer-states-than-rows": (
        ("x", "y"),
        lambda s: [carried_input(s)],
        "'carried_state' has 1 state(s) for 2 row(s) of ids",
    ),
    "two-dimensional": (
        ("x",),
        lambda s: [carried_input(s, shape=[1, 1])],
        "input 'carried_state': shape must be [rows]",
    ),
    "fp32-data-under-bytes": (
        ("x",),
        lambda s: [{**fp32("carried_state", [1], 1.5), "datatype": "BYTES"}],
        "input 'carried_state': BYTES 'data' must be a list of strings; element 0 is a number",
    ),
    "fp32-datatype": (
        ("x",),
        lambda s: [fp32("carried_state", [1], 1.5)],
        "input 'carried_state': datatype must be BYTES",
    ),
    "state-and-carried-state": (
        ("x",),
        lambda s: [carried_input(s), fp32("state", [4, 1, 256])],
        "send either 'state' (raw FP32) or 'carried_state' (BYTES), not both",
    ),
}


@pytest.mark.parametrize("case", list(BAD_STATES))
def test_a_bad_carried_state_is_a_400_naming_the_problem(
    app_client: TestClient, vocab: list[str], good_state: str, case: str
) -> None:
    texts, make, message = BAD_STATES[case]
    status, body = post_json(app_client, [ids_input(ids_of(vocab, *texts)), *make(good_state)])
    assert status == 400 and set(body) == {"error"}, body
    assert message in body["error"], body


def test_a_bad_binary_carried_state_is_a_400_naming_the_problem(
    app_client: TestClient, vocab: list[str], good_state: str
) -> None:
    ids = ids_of(vocab, "x")
    ids_in = {
        "name": "ids",
        "datatype": "INT64",
        "shape": [1, 1],
        "parameters": {"binary_data_size": ids.nbytes},
    }

    def serialized(element: bytes) -> bytes:
        return bytes(serialize_byte_tensor(np.array([element], dtype=object)).item())

    cases = [
        # FP32 values where BYTES belong: read as a length, 1.5 runs far past the data
        (np.array([1.5], np.float32).tobytes(), "element 0 has length 1069547520, past the end"),
        (serialized(b"rs1.\xff\xfe"), "carried_state[0]: a carried state is ASCII text"),
        (serialized(changed(good_state).encode()), "carried_state[0]: this state failed"),
    ]
    for blob, message in cases:
        carried = {
            "name": "carried_state",
            "datatype": "BYTES",
            "shape": [1],
            "parameters": {"binary_data_size": len(blob)},
        }
        status, body = post_binary(app_client, [ids_in, carried], ids.tobytes() + blob)
        assert status == 400 and set(body) == {"error"}, body
        assert message in body["error"], body
    # and the good state, as tritonclient sends it in binary, is served
    result = infer(app_client, ids, [good_state.encode()], binary=True)
    assert result.as_numpy("logits").shape[:2] == (1, 1)


def test_metadata_describes_carried_state(app_client: TestClient) -> None:
    meta = app_client.get("/v2/models/char-rnn").json()
    assert {"name": "carried_state", "datatype": "BYTES", "shape": [-1]} in meta["inputs"]
    assert {"name": "carried_state_out", "datatype": "BYTES", "shape": [-1]} in meta["outputs"]
