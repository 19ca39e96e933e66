"""The lean digit route POST /v1/digits: every input form against the native endpoint and its
errors (in this process), the continuous batcher's bookkeeping under 200 concurrent clients (a
real server)."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

from loadtest.payloads import digits
from loadtest.servers import Server
from tests.conftest import metric_value


@pytest.fixture(scope="module")
def pool() -> tuple[np.ndarray, np.ndarray]:
    real = digits()
    return np.array([d.pixels for d in real], dtype=np.float32), np.array([d.label for d in real])


@pytest.mark.parametrize("model", ["rnn", "birnn", "mnist-bigru"])
def test_every_input_form_gives_the_native_answer(
    app_client: httpx.Client, pool: tuple[np.ndarray, np.ndarray], model: str
) -> None:
    images, labels = pool[0][:16], pool[1][:16]
    native = app_client.post(
        "/classify_pixels",
        json={"images": [{"pixels": img.tolist(), "model": model} for img in images]},
    ).json()
    url = "/v1/digits"
    post = app_client.post
    answers = {
        "json floats": post(url, json={"pixels": images.tolist(), "model": model}),
        "json uint8": post(url, json={"pixels": images.astype(np.uint8).tolist(), "model": model}),
        "json 0-1": post(
            url, json={"pixels": (images / 255).tolist(), "model": model, "scale": "0-1"}
        ),
        "binary uint8": post(
            f"{url}?model={model}",
            content=images.astype(np.uint8).tobytes(),
            headers={"content-type": "application/octet-stream", "x-tensor-shape": "16,28,28"},
        ),
        "binary fp32": post(
            f"{url}?model={model}",
            content=images.astype("<f4").tobytes(),
            headers={
                "content-type": "application/octet-stream",
                "x-tensor-shape": "16,28,28",
                "x-tensor-datatype": "FP32",
            },
        ),
    }
    for form, r in answers.items():
        assert r.status_code == 200, (form, r.text)
        body = r.json()
        assert body["digits"] == labels.tolist() == [a["digit"] for a in native], form
        assert body["model"] == native[0]["model"] and body["provider"] == native[0]["provider"]
        np.testing.assert_allclose(
            body["probabilities"], [a["probabilities"] for a in native], atol=1e-5, err_msg=form
        )
    one = post(url, json={"pixels": images[0].tolist()}).json()  # a single 28x28 image
    assert one["digits"] == [labels[0]] and one["model"] == "mnist-bigru"  # the default model


@pytest.mark.slow
def test_concurrent_clients_each_get_their_own_answer(
    default_server: Server, pool: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = pool
    server = default_server
    ok = 'route="/v1/digits",status="200"'
    answered_before = metric_value(server.url, "rnnserve_lean_requests_total", ok)
    timed_before = metric_value(server.url, "rnnserve_lean_request_seconds_count")

    async def run() -> list[list[int]]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:

            async def one(i: int) -> list[int]:
                picked = images[i % 64 : i % 64 + 1 + i % 4]
                r = await client.post(
                    "/v1/digits", json={"pixels": picked.tolist(), "model": "rnn"}
                )
                assert r.status_code == 200, r.text
                return list(r.json()["digits"])

            return await asyncio.gather(*(one(i) for i in range(200)))

    for i, got in enumerate(asyncio.run(run())):
        assert got == labels[i % 64 : i % 64 + 1 + i % 4].tolist()
    # every request counted and timed once, by route and status
    assert metric_value(server.url, "rnnserve_lean_requests_total", ok) == answered_before + 200
    assert metric_value(server.url, "rnnserve_lean_request_seconds_count") == timed_before + 200


ZERO = [[0] * 28] * 28
BAD = [
    (
        "not json",
        {"content": b"{pixels", "headers": {"content-type": "application/json"}},
        400,
        "not valid JSON",
    ),
    ("no pixels", {"json": {"image": ZERO}}, 400, "send {"),
    ("extra field", {"json": {"pixels": ZERO, "colour": 1}}, 400, "unknown field"),
    ("ragged", {"json": {"pixels": [[0] * 28] * 27 + [[0] * 5]}}, 400, "ragged"),
    ("wrong shape", {"json": {"pixels": [[0] * 27] * 28}}, 400, "28x28 or Nx28x28"),
    ("text", {"json": {"pixels": [["a"] * 28] * 28}}, 400, "numbers only"),
    ("booleans", {"json": {"pixels": [[True] * 28] * 28}}, 400, "numbers only"),
    ("out of range", {"json": {"pixels": [[300] * 28] * 28}}, 400, "0..255"),
    ("0-1 out of range", {"json": {"pixels": [[2] * 28] * 28, "scale": "0-1"}}, 400, "0..1"),
    ("bad scale", {"json": {"pixels": ZERO, "scale": "0-9"}}, 400, "'scale'"),
    ("unknown model", {"json": {"pixels": ZERO, "model": "cnn"}}, 400, "unknown model"),
    ("too many", {"json": {"pixels": [ZERO] * 257}}, 400, "over the limit of 256"),
    ("empty batch", {"json": {"pixels": []}}, 400, "28x28 or Nx28x28"),
    (
        "binary size",
        {
            "content": b"\0" * 700,
            "headers": {"content-type": "application/octet-stream", "x-tensor-shape": "1,28,28"},
        },
        400,
        "needs 784",
    ),
    (
        "binary shape header",
        {
            "content": b"\0" * 784,
            "headers": {"content-type": "application/octet-stream", "x-tensor-shape": "one"},
        },
        400,
        "X-Tensor-Shape",
    ),
    (
        "binary shape of 65 dimensions",
        {
            "content": b"\0",
            "headers": {
                "content-type": "application/octet-stream",
                "x-tensor-shape": "1," * 64 + "1",
            },
        },
        400,
        "1 to 8 comma-separated sizes",
    ),
    (
        "binary shape beyond int64",
        {
            "content": b"",
            "headers": {
                "content-type": "application/octet-stream",
                "x-tensor-shape": "0,9223372036854775808",
            },
        },
        400,
        "0..2^31",
    ),
    (
        "binary datatype",
        {
            "content": b"\0" * 784,
            "headers": {
                "content-type": "application/octet-stream",
                "x-tensor-shape": "1,28,28",
                "x-tensor-datatype": "INT4",
            },
        },
        400,
        "X-Tensor-Datatype",
    ),
    (
        "binary NaN",
        {
            "content": np.full(784, np.nan, "<f4").tobytes(),
            "headers": {
                "content-type": "application/octet-stream",
                "x-tensor-shape": "28,28",
                "x-tensor-datatype": "FP32",
            },
        },
        400,
        "finite",
    ),
    ("form upload", {"files": {"image": ("a.png", b"x", "image/png")}}, 415, "Content-Type"),
]


@pytest.mark.parametrize(
    ("kwargs", "status", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_bad_input_gets_a_clear_4xx(
    app_client: httpx.Client, kwargs: dict, status: int, message: str
) -> None:
    r = app_client.post("/v1/digits", **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "detail"} and message in body["error"], body
    assert app_client.post("/v1/digits", json={"pixels": ZERO}).status_code == 200
