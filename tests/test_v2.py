"""Open Inference Protocol (KServe V2) REST, checked with both official clients (Triton's
`tritonclient[http]` and KServe's own `InferenceRESTClient`) against a real `bentoml serve`
process, and the wire format's error paths over plain HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from loadtest.payloads import digits
from loadtest.servers import Server
from service.model.repository import discover_cards
from tests.conftest import ROOT

if TYPE_CHECKING:
    from starlette.testclient import TestClient

pytestmark = pytest.mark.slow
MODELS = ROOT / "models"
DIGIT_MODELS = ("mnist-rnn", "mnist-birnn", "mnist-bigru")


@pytest.fixture(scope="module")
def client(default_server: Server) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(default_server.url.removeprefix("http://"), network_timeout=60)
    yield c
    c.close()


@pytest.fixture(scope="module")
def batch() -> tuple[np.ndarray, np.ndarray]:
    pool = digits()
    images = np.array([d.pixels for d in pool], dtype=np.float32)
    return images, np.array([d.label for d in pool])


def test_server_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "rnnserve" and "binary_tensor_data" in meta["extensions"]


def test_every_model_is_listed_ready_and_described(client: triton.InferenceServerClient) -> None:
    for card in discover_cards(MODELS):
        version = str(card.data["version"])
        assert client.is_model_ready(card.name)
        assert client.is_model_ready(card.name, model_version=version)
        assert not client.is_model_ready(card.name, model_version="999")
        meta = client.get_model_metadata(card.name, model_version=version)
        assert meta["name"] == card.name and meta["versions"] == [version]
        assert meta["platform"] == "onnxruntime_onnx"
    pixels = client.get_model_metadata("mnist-bigru")["inputs"]
    assert pixels == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 28, 28]}]
    assert not client.is_model_ready("no-such-model")


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("size", [1, 64])
def test_digit_inference_matches_the_native_endpoint(
    client: triton.InferenceServerClient,
    default_server: Server,
    batch: tuple[np.ndarray, np.ndarray],
    size: int,
    binary: bool,
) -> None:
    images, labels = batch[0][:size], batch[1][:size]
    assert len(images) == size
    for model in DIGIT_MODELS:
        tensor = triton.InferInput("pixels", list(images.shape), "FP32")
        tensor.set_data_from_numpy(images, binary_data=binary)
        outputs = [
            triton.InferRequestedOutput("probabilities", binary_data=binary),
            triton.InferRequestedOutput("digit", binary_data=binary),
        ]
        result = client.infer(model, [tensor], outputs=outputs, request_id=f"req-{model}")
        assert result.get_response()["id"] == f"req-{model}"
        assert result.get_response()["model_name"] == model
        probabilities = result.as_numpy("probabilities")
        assert probabilities.shape == (size, 10) and probabilities.dtype == np.float32
        np.testing.assert_array_equal(result.as_numpy("digit"), labels)
        native = httpx.post(
            f"{default_server.url}/classify_pixels",
            json={"images": [{"pixels": img.tolist(), "model": model} for img in images]},
            timeout=60,
        ).json()
        assert [a["digit"] for a in native] == labels.tolist()
        np.testing.assert_allclose(
            probabilities, [a["probabilities"] for a in native], atol=2e-6
        )  # the native endpoint rounds to 6 decimals


def test_uint8_pixels_give_the_same_answer(
    client: triton.InferenceServerClient, batch: tuple[np.ndarray, np.ndarray]
) -> None:
    images = batch[0][:8]
    answers = []
    for dtype, name in ((np.float32, "FP32"), (np.uint8, "UINT8")):
        tensor = triton.InferInput("pixels", list(images.shape), name)
        tensor.set_data_from_numpy(images.astype(dtype))
        answers.append(client.infer("mnist-rnn", [tensor]).as_numpy("probabilities"))
    np.testing.assert_array_equal(answers[0], answers[1])


def test_char_model_state_carries_across_calls(
    client: triton.InferenceServerClient, default_server: Server
) -> None:
    vocab = httpx.get(f"{default_server.url}/v1/metadata").json()["vocabulary"]
    text = "ROMEO:\nWhat light through yonder window bre"
    ids = np.array([[vocab.index(c) for c in text]], dtype=np.int64)

    def run(piece: np.ndarray, state: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        inputs = [triton.InferInput("ids", list(piece.shape), "INT64")]
        inputs[0].set_data_from_numpy(piece)
        if state is not None:
            inputs.append(triton.InferInput("state", list(state.shape), "FP32"))
            inputs[1].set_data_from_numpy(state)
        result = client.infer("char-rnn", inputs)
        return result.as_numpy("logits"), result.as_numpy("state_out")

    whole, _ = run(ids, None)
    first, state = run(ids[:, :20], None)
    rest, _ = run(ids[:, 20:], state)
    assert whole.shape == (1, len(text), len(vocab))
    np.testing.assert_allclose(whole[:, :20], first, atol=1e-5)
    np.testing.assert_allclose(whole[:, 20:], rest, atol=1e-4)  # same as reading it in one go
    native = httpx.post(f"{default_server.url}/next_char", json={"text": text, "k": 1}).json()
    assert vocab[int(whole[0, -1].argmax())] == native["candidates"][0]["char"]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_char_model_carried_state_continues_a_text_with_tritonclient(
    client: triton.InferenceServerClient, default_server: Server, binary: bool
) -> None:
    """`carried_state` BYTES [rows] in, `carried_state_out` out, as Triton's client sends and
    reads BYTES: a text read in three requests, each sending back the previous answer's
    state, ends at the whole text's logits; the string continues on /next_char too."""
    meta = client.get_model_metadata("char-rnn")
    assert {"name": "carried_state", "datatype": "BYTES", "shape": [-1]} in meta["inputs"]
    assert {"name": "carried_state_out", "datatype": "BYTES", "shape": [-1]} in meta["outputs"]
    vocab = httpx.get(f"{default_server.url}/v1/metadata").json()["vocabulary"]
    text = "ROMEO:\nWhat light through yonder window breaks?"
    ids = np.array([[vocab.index(c) for c in text]], dtype=np.int64)

    def run(piece: np.ndarray, carried: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        inputs = [triton.InferInput("ids", list(piece.shape), "INT64")]
        inputs[0].set_data_from_numpy(piece, binary_data=binary)
        if carried is not None:
            inputs.append(triton.InferInput("carried_state", [1], "BYTES"))
            inputs[1].set_data_from_numpy(carried, binary_data=binary)
        outputs = [
            triton.InferRequestedOutput(name, binary_data=binary)
            for name in ("logits", "carried_state_out")
        ]
        result = client.infer("char-rnn", inputs, outputs=outputs)
        assert result.as_numpy("state_out") is None  # not asked for
        return result.as_numpy("logits"), result.as_numpy("carried_state_out")

    whole, _ = run(ids, None)
    carried = None
    for piece in (ids[:, :15], ids[:, 15:31], ids[:, 31:]):
        logits, carried = run(piece, carried)
    assert carried is not None and carried.shape == (1,)
    np.testing.assert_allclose(logits[0, -1], whole[0, -1], atol=1e-4)
    state = carried[0].decode() if isinstance(carried[0], bytes) else carried[0]
    native = httpx.post(
        f"{default_server.url}/next_char", json={"text": "", "k": 1, "state": state}
    ).json()
    assert native["context_chars"] == len(text)
    assert native["candidates"][0]["char"] == vocab[int(whole[0, -1].argmax())]
    at = len(state) // 2
    changed = state[:at] + ("A" if state[at] != "A" else "B") + state[at + 1 :]
    with pytest.raises(
        InferenceServerException,
        match=r"\[400\] carried_state\[0\]: this state failed its integrity check",
    ):
        run(ids[:, :1], np.array([changed], dtype=object))


def test_errors_are_400_or_404_with_a_message(
    client: triton.InferenceServerClient, default_server: Server
) -> None:
    tensor = triton.InferInput("pixels", [1, 27, 28], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 27, 28), np.float32))
    with pytest.raises(
        InferenceServerException, match=r"\[400\] input 'pixels': .*28x28.*got shape \[1, 27, 28\]"
    ):
        client.infer("mnist-rnn", [tensor])
    with pytest.raises(InferenceServerException, match=r"\[404\].*unknown model"):
        client.infer("nope", [tensor])
    with pytest.raises(InferenceServerException, match=r"\[404\].*no version"):
        client.infer("mnist-rnn", [tensor], model_version="7")
    # readiness is a status code only
    assert httpx.get(f"{default_server.url}/v2/health/ready").status_code == 200
    assert client.is_server_live()  # and the server still serves


def test_malformed_inference_requests_are_400_with_a_message(app_client: TestClient) -> None:
    """The protocol's JSON errors, on the service in this process (no socket needed)."""
    bad = [
        (b"{nope", "not valid JSON"),
        (
            json.dumps(
                {
                    "inputs": [
                        {
                            "name": "pixels",
                            "datatype": "FP32",
                            "shape": [1, 28, 28],
                            "data": [0.0] * 5,
                        }
                    ]
                }
            ).encode(),
            "needs 784 values",
        ),
        (
            json.dumps(
                {"inputs": [{"name": "pixels", "datatype": "STRING", "shape": [1], "data": ["x"]}]}
            ).encode(),
            "not supported",
        ),
        (
            json.dumps(
                {
                    "inputs": [
                        {
                            "name": "pixels",
                            "datatype": "FP32",
                            "shape": [1, 28, 28],
                            "data": [300.0] * 784,
                        }
                    ]
                }
            ).encode(),
            "0..255",
        ),
        (
            json.dumps(
                {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1], "data": [1.0]}]}
            ).encode(),
            "unknown input",
        ),
        (json.dumps({"inputs": []}).encode(), "missing input"),
    ]
    for body, message in bad:
        r = app_client.post(
            "/v2/models/mnist-rnn/infer", content=body, headers={"content-type": "application/json"}
        )
        assert r.status_code == 400, r.text
        assert set(r.json()) == {"error"} and message in r.json()["error"], r.text
    assert app_client.get("/v2/models/nope").json() == {
        "error": "unknown model 'nope'; this server has "
        "['char-rnn', 'mnist-bigru', 'mnist-birnn', 'mnist-rnn']"
    }


def test_kserve_client_reads_health_readiness_and_infers(
    default_server: Server, batch: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    """KServe's client reads the health bodies ({"live": true}, {"ready": true}): an empty 200
    made is_server_live/is_server_ready crash. JSON and binary tensors both round-trip. (In a
    process of its own: KServe and tritonclient.grpc cannot share one, tests/clients.)"""
    images, labels = batch
    np.save(tmp_path / "images.npy", images[:16])
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.clients.kserve_check",
            default_server.url,
            str(tmp_path / "images.npy"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    found = json.loads(run.stdout)
    assert found["live"] is True and found["ready"] is True and found["model ready"] is True
    for binary in (False, True):
        assert found[f"digits binary={binary}"] == labels[:16].tolist()
        assert found[f"rows binary={binary}"] == [16, 10]
    assert found["logits"][:2] == [1, 6]
