"""Every limit and queue setting at a non-default value, end to end on real servers.

The in-process tests (`app_client`) run with the default settings, so a limit hard-coded to its
default would pass them. Here two real `bentoml serve` processes run with other values:

- `limits_server`: batching off and every size or count limit small (bytes, images per request,
  image pixels, side and aspect, text, V2 character rows and ids, generated characters, top-k).
  Each limit is probed on both sides (N accepted, N+1 refused), on every route that enforces
  it, and the refusal must name the value (and the setting where the service names it).
- `queues_server`: admission control with small queues and waits and a 2 s `timeout_s`; real
  concurrent requests provoke each 503 (queue full, waited too long, too many bodies held, with
  Retry-After) and the 504 (no response started within `timeout_s`); the server must be ready
  and answer correctly afterwards.

Invalid `Content-Length` headers go over a raw socket (whatever layer refuses them must answer
4xx and keep serving). The not-ready branch of the mounted apps (503 while the worker still loads
its models) is tested in this process: a server only reports ready once it has passed it.

Two service bugs these servers found are fixed and kept fixed here: the routes' defaults above
a lowered limit (k=5, length=200 were refused when the client had sent neither), and a
generation that timed out keeping its place in the generation queue.
"""

from __future__ import annotations

import asyncio
import io
import socket
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import httpx
import numpy as np
import orjson
import pytest
from PIL import Image
from starlette.types import Message, Receive, Scope, Send

from loadtest.payloads import PROMPTS, Digit, digits
from loadtest.servers import Server, start_server
from service.engine.pipeline import ServingState
from service.http.meta_app import meta_app
from service.http.middleware import BodyLimitMiddleware
from service.http.v2_app import v2_app
from tests.conftest import ROOT, metric_value

MODELS = ROOT / "models"
MAX_REQUEST_BYTES = 50_000
MAX_IMAGES = 3
MAX_PIXELS = 10_000
MAX_SIDE = 300
MAX_ASPECT = 3
MAX_TEXT = 50
MAX_ROWS = 3
MAX_IDS = 40
MAX_GENERATE = 30
MAX_TOP_K = 4
LIMITS = {
    "batching": "off",
    "max_request_bytes": str(MAX_REQUEST_BYTES),
    "max_images_per_request": str(MAX_IMAGES),
    "max_image_pixels": str(MAX_PIXELS),
    "max_image_side": str(MAX_SIDE),
    "max_image_aspect": str(MAX_ASPECT),
    "max_text_chars": str(MAX_TEXT),
    "max_char_rows": str(MAX_ROWS),
    "max_char_ids": str(MAX_IDS),
    "max_generate_chars": str(MAX_GENERATE),
    "max_top_k": str(MAX_TOP_K),
}
TIMEOUT_S = 2
QUEUES = {
    "timeout_s": str(TIMEOUT_S),
    "max_batch_size": "4",
    "max_queue_wait_ms": "50",
    "max_queued_images": "40",
    "max_images_per_request": "1024",  # room for one request that holds a model ~0.4 s
    "max_buffered_bytes": "2000000",
    "max_queued_text": "1",
    "max_queued_decodes": "1",
    "max_active_generations": "1",
    "max_queued_generations": "1",
    "max_generate_chars": "1000000",  # a stream that outlasts timeout_s many times over
}
PROMPT = PROMPTS[0]
OCTET = "application/octet-stream"
JSON_TYPE = {"content-type": "application/json"}


def serve(scratch: Path, settings: dict[str, str]) -> Iterator[Server]:
    server = start_server(scratch, **cast(dict[str, Any], {"model_dir": str(MODELS), **settings}))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def limits_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serve(tmp_path_factory.mktemp("limits"), LIMITS)


@pytest.fixture(scope="module")
def queues_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serve(tmp_path_factory.mktemp("queues"), QUEUES)


@pytest.fixture(scope="module")
def pool() -> tuple[Digit, ...]:
    """Real MNIST test digits every committed classifier gets right."""
    return digits()


# --------------------------------------------------------------------------- helpers


def uint8(chosen: tuple[Digit, ...] | list[Digit]) -> np.ndarray:
    return np.array([d.pixels for d in chosen], dtype=np.uint8)


def binary_digits(images: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """A /v1/digits raw tensor body (UINT8) and its headers."""
    shape = ",".join(str(n) for n in images.shape)
    return images.tobytes(), {"content-type": OCTET, "x-tensor-shape": shape}


def refusal(r: httpx.Response, status: int, *fragments: str) -> str:
    """The message of a refusal in our error shape, checked: status, shape, the fragments it
    must contain, and Retry-After on a 503."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "detail"} and isinstance(body["error"], str), body
    for fragment in fragments:
        assert fragment in body["error"], body["error"]
    if status == 503:
        assert r.headers.get("retry-after") == "1", r.headers
    return str(body["error"])


def v2_refusal(r: httpx.Response, status: int, *fragments: str) -> str:
    """The same for the Open Inference Protocol's shape, `{"error": str}`."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}, body
    for fragment in fragments:
        assert fragment in body["error"], body["error"]
    if status == 503:
        assert r.headers.get("retry-after") == "1", r.headers
    return str(body["error"])


def v2_output(r: httpx.Response, name: str) -> dict[str, Any]:
    assert r.status_code == 200, r.text
    outputs = {out["name"]: out for out in r.json()["outputs"]}
    return dict(outputs[name])


def assert_still_serving(server: Server, digit: Digit) -> None:
    """Ready, and a real digit still comes back right."""
    assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200
    body, headers = binary_digits(uint8([digit]))
    r = httpx.post(f"{server.url}/v1/digits", content=body, headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["digits"] == [digit.label]


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


def connect(url: str, timeout: float = 10.0) -> socket.socket:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return socket.create_connection((parts.hostname, parts.port), timeout=timeout)


def read_response(sock: socket.socket) -> RawResponse:
    """One HTTP/1.1 response off a raw socket (its body sized by Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return RawResponse(int(status_line.split()[1]), headers, body)


def raw_exchange(url: str, request: bytes) -> RawResponse:
    with connect(url) as sock:
        sock.sendall(request)
        return read_response(sock)


def post_head(path: str, *headers: bytes) -> bytes:
    """The head of a raw POST (the caller adds the body, or not)."""
    lines = [f"POST {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", *headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def fresh_burst(
    url: str, requests: list[tuple[str, bytes, dict[str, str]]]
) -> list[httpx.Response]:
    """The requests all at once, each on a new connection: they reach the server in one clump
    (over kept-alive connections they trickle in one by one and rarely meet in a queue)."""
    limits = httpx.Limits(max_connections=len(requests), max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        return list(
            await asyncio.gather(
                *(
                    client.post(path, content=body, headers=headers)
                    for path, body, headers in requests
                )
            )
        )


def model_calls(url: str, model: str) -> dict[str, float]:
    """The digit model's call histogram: calls, rows, and calls of at most 1, 4, 256 rows."""
    labels = f'model="{model}"'
    values = {
        "calls": metric_value(url, "rnnserve_inference_batch_size_count", labels),
        "rows": metric_value(url, "rnnserve_inference_batch_size_sum", labels),
    }
    for le in ("1.0", "4.0", "256.0"):
        values[le] = metric_value(
            url, "rnnserve_inference_batch_size_bucket", f'le="{le}",{labels}'
        )
    return values


def calls_since(url: str, model: str, before: dict[str, float]) -> dict[str, float]:
    return {key: value - before[key] for key, value in model_calls(url, model).items()}


def digit_png(digit: Digit, width: int, height: int) -> bytes:
    """The digit (white on black, as MNIST) scaled to fill the shorter side, centred on a black
    width x height canvas."""
    side = min(width, height)
    glyph = Image.fromarray(uint8([digit])[0]).resize((side, side), Image.Resampling.BILINEAR)
    canvas = Image.new("L", (width, height), 0)
    canvas.paste(glyph, ((width - side) // 2, (height - side) // 2))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


def upload(server: Server, png: bytes) -> httpx.Response:
    files = {"image": ("digit.png", png, "image/png")}
    return httpx.post(f"{server.url}/classify_image", files=files, timeout=30)


# --------------------------------------------------------------------------- not ready yet


def _test_client(app: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # starlette suggests httpx2 for its TestClient
        from starlette.testclient import TestClient
    return TestClient(app)


NOT_READY = "the server is not ready yet (loading models); retry shortly"


def test_meta_app_answers_503_until_the_models_are_loaded() -> None:
    """Before the worker has loaded its models, the mounted /v1 app refuses every route with
    503, Retry-After and a message saying to retry, in our error shape (never a 500 from a
    missing pipeline)."""
    client = _test_client(meta_app(ServingState()))
    digit = {"pixels": [[0] * 28] * 28}
    for r in (
        client.get("/metadata"),
        client.post("/digits", json=digit),
        client.post("/generate/stream", json={"prompt": PROMPT, "length": 5}),
    ):
        assert refusal(r, 503) == NOT_READY


def test_v2_app_answers_503_until_the_models_are_loaded() -> None:
    """The V2 app says not ready (health and model routes) in its own shape, and stays live."""
    client = _test_client(v2_app(ServingState()))
    assert client.get("/health/live").status_code == 200
    ready = client.get("/health/ready")
    assert ready.status_code == 503 and ready.json() == {"ready": False}
    infer = {
        "inputs": [{"name": "pixels", "shape": [1, 28, 28], "datatype": "UINT8", "data": [0] * 784}]
    }
    for r in (
        client.post("/models/mnist-rnn/infer", json=infer),
        client.get("/models/mnist-rnn"),
        client.get("/models/mnist-rnn/ready"),
    ):
        v2_refusal(r, 503, NOT_READY)


@pytest.mark.parametrize("declared", [b"abc", b"-1", b"1e3", b"", b"5, 6"])
def test_body_limit_middleware_refuses_an_invalid_declared_length(declared: bytes) -> None:
    """The middleware's own check, for ASGI servers that pass such a header through (uvicorn's
    parser refuses them first: see test_invalid_content_length_is_refused)."""
    reached = False

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal reached
        reached = True

    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    middleware = BodyLimitMiddleware(
        app, max_bytes=100, max_buffered=1000, timeout_s=10.0, min_rate=16 * 1024
    )
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/digits",
        "headers": [(b"content-length", declared)],
    }
    asyncio.run(middleware(scope, receive, send))
    assert not reached and sent[0]["status"] == 400
    assert orjson.loads(sent[1]["body"]) == {
        "error": "invalid Content-Length header",
        "detail": None,
    }


# --------------------------------------------------------------------------- size limits


@pytest.mark.slow
def test_request_bytes_limit_declared_and_chunked(
    limits_server: Server, pool: tuple[Digit, ...]
) -> None:
    """A body of exactly RNNSERVE_MAX_REQUEST_BYTES is served, one byte more is refused with
    413, whether its size is declared (Content-Length) or not (chunked); a declared size over
    the limit is refused before the body is sent."""
    digit = pool[0]
    body = orjson.dumps(
        {"pixels": uint8([digit])[0], "model": "bigru"}, option=orjson.OPT_SERIALIZE_NUMPY
    )
    at_limit = body + b" " * (MAX_REQUEST_BYTES - len(body))  # JSON allows trailing spaces
    url = f"{limits_server.url}/v1/digits"

    def chunked(data: bytes) -> Iterator[bytes]:
        half = len(data) // 2
        yield data[:half]
        yield data[half:]

    for content in (at_limit, at_limit + b" "):
        declared = httpx.post(url, content=content, headers=JSON_TYPE, timeout=30)
        streamed = httpx.post(url, content=chunked(content), headers=JSON_TYPE, timeout=30)
        assert "content-length" in declared.request.headers
        assert streamed.request.headers.get("transfer-encoding") == "chunked"
        assert "content-length" not in streamed.request.headers
        for r in (declared, streamed):
            if len(content) == MAX_REQUEST_BYTES:
                assert r.status_code == 200, r.text
                assert r.json()["digits"] == [digit.label]
            else:
                refusal(
                    r,
                    413,
                    f"over the limit of {MAX_REQUEST_BYTES} bytes",
                    "RNNSERVE_MAX_REQUEST_BYTES",
                )

    # only the head: the refusal must not wait for a body that never comes
    head = post_head(
        "/v1/digits",
        b"Content-Type: application/json",
        f"Content-Length: {MAX_REQUEST_BYTES + 1}".encode(),
    )
    answer = raw_exchange(limits_server.url, head)
    assert answer.status == 413, answer
    assert b"RNNSERVE_MAX_REQUEST_BYTES" in answer.body


INVALID_LENGTHS = [
    b"Content-Length: abc",
    b"Content-Length: -1",
    b"Content-Length: +2",
    b"Content-Length: 0x2",
    b"Content-Length: 2, 3",
    b"Content-Length: 2\r\nContent-Length: 3",  # two that disagree
    b"Content-Length: 99999999999999999999999",
]


@pytest.mark.slow
def test_invalid_content_length_is_refused(limits_server: Server, pool: tuple[Digit, ...]) -> None:
    """Malformed or conflicting Content-Length headers get a 4xx (from whichever layer sees them
    first) and the connection ends; the server stays ready and keeps answering right."""
    for header in INVALID_LENGTHS:
        request = post_head("/v1/digits", b"Content-Type: application/json", header) + b"{}"
        answer = raw_exchange(limits_server.url, request)
        assert 400 <= answer.status < 500, (header, answer)
    assert_still_serving(limits_server, pool[1])


@pytest.mark.slow
def test_images_per_request_limit_on_every_pixel_route(
    limits_server: Server, pool: tuple[Digit, ...]
) -> None:
    """RNNSERVE_MAX_IMAGES_PER_REQUEST images are classified right on each pixel route (BentoML
    API, lean JSON and binary, V2); one more is refused with 400 naming the limit."""
    url = limits_server.url
    for count in (MAX_IMAGES, MAX_IMAGES + 1):
        chosen = pool[:count]
        labels = [d.label for d in chosen]
        images = uint8(chosen)
        rows = images.tolist()
        api = httpx.post(
            f"{url}/classify_pixels",
            json={"images": [{"pixels": p, "model": "bigru"} for p in rows]},
            timeout=30,
        )
        lean = httpx.post(f"{url}/v1/digits", json={"pixels": rows, "model": "bigru"}, timeout=30)
        body, headers = binary_digits(images)
        lean_binary = httpx.post(
            f"{url}/v1/digits?model=bigru", content=body, headers=headers, timeout=30
        )
        tensor = {
            "name": "pixels",
            "shape": list(images.shape),
            "datatype": "UINT8",
            "data": images.ravel().tolist(),
        }
        v2 = httpx.post(f"{url}/v2/models/mnist-bigru/infer", json={"inputs": [tensor]}, timeout=30)
        if count == MAX_IMAGES:
            assert api.status_code == 200, api.text
            assert [answer["digit"] for answer in api.json()] == labels
            for r in (lean, lean_binary):
                assert r.status_code == 200, r.text
                assert r.json()["digits"] == labels
            assert v2_output(v2, "digit")["data"] == labels
        else:
            limit = (
                f"{count} images in one request, over the limit of {MAX_IMAGES} "
                "(RNNSERVE_MAX_IMAGES_PER_REQUEST)"
            )
            refusal(api, 400, limit)  # the same words on every pixel route
            refusal(lean, 400, limit)
            refusal(lean_binary, 400, limit)
            v2_refusal(v2, 400, "input 'pixels'", limit)


@pytest.mark.slow
def test_image_pixels_limit(limits_server: Server, pool: tuple[Digit, ...]) -> None:
    """An upload of exactly RNNSERVE_MAX_IMAGE_PIXELS pixels is read; one row more is 413."""
    digit = pool[0]
    r = upload(limits_server, digit_png(digit, 100, MAX_PIXELS // 100))
    assert r.status_code == 200, r.text
    assert r.json()["digit"] == digit.label
    r = upload(limits_server, digit_png(digit, 100, MAX_PIXELS // 100 + 1))
    refusal(r, 413, f"over the limit of {MAX_PIXELS}", "RNNSERVE_MAX_IMAGE_PIXELS")


@pytest.mark.slow
def test_image_side_limit(limits_server: Server, pool: tuple[Digit, ...]) -> None:
    """A side over RNNSERVE_MAX_IMAGE_SIDE is refused from the header, before the pixel limit
    (which this picture also breaks) is looked at."""
    r = upload(limits_server, digit_png(pool[0], MAX_SIDE + 1, 120))
    refusal(
        r, 413, f"{MAX_SIDE + 1}x120", f"over the limit of {MAX_SIDE}", "RNNSERVE_MAX_IMAGE_SIDE"
    )


@pytest.mark.slow
def test_image_aspect_limit(limits_server: Server, pool: tuple[Digit, ...]) -> None:
    """Sides exactly RNNSERVE_MAX_IMAGE_ASPECT times apart are read; a longer strip is 413
    (both are within the pixel and side limits)."""
    digit = pool[0]
    r = upload(limits_server, digit_png(digit, 25 * MAX_ASPECT, 25))
    assert r.status_code == 200, r.text
    assert r.json()["digit"] == digit.label
    r = upload(limits_server, digit_png(digit, 25 * MAX_ASPECT + 1, 25))
    refusal(r, 413, f"more than {MAX_ASPECT} times apart", "RNNSERVE_MAX_IMAGE_ASPECT")


# --------------------------------------------------------------------------- text limits


@pytest.mark.slow
def test_text_limit_on_prediction_and_generation(limits_server: Server) -> None:
    """RNNSERVE_MAX_TEXT_CHARS characters are taken as text and prompt; one more is refused on
    /next_char, /generate and the stream."""
    url = limits_server.url
    text = (PROMPT * 3)[:MAX_TEXT]
    r = httpx.post(f"{url}/next_char", json={"text": text, "k": 2}, timeout=30)
    assert r.status_code == 200 and r.json()["text"] == text, r.text
    r = httpx.post(f"{url}/generate", json={"prompt": text, "length": 3, "seed": 1}, timeout=30)
    assert r.status_code == 200 and len(r.json()["text"]) == 3, r.text

    longer = (PROMPT * 3)[: MAX_TEXT + 1]
    refusal(
        httpx.post(f"{url}/next_char", json={"text": longer}, timeout=30),
        400,
        f"text is over the limit of {MAX_TEXT} characters (RNNSERVE_MAX_TEXT_CHARS)",
    )
    r = httpx.post(f"{url}/generate", json={"prompt": longer, "length": 3}, timeout=30)
    refusal(r, 400, f"prompt is over the limit of {MAX_TEXT} characters (RNNSERVE_MAX_TEXT_CHARS)")
    r = httpx.post(f"{url}/v1/generate/stream", json={"prompt": longer, "length": 3}, timeout=30)
    refusal(
        r, 400, f"{MAX_TEXT + 1} characters, over the limit of {MAX_TEXT} (RNNSERVE_MAX_TEXT_CHARS)"
    )


@pytest.mark.slow
def test_generate_chars_limit(limits_server: Server) -> None:
    """A generation of RNNSERVE_MAX_GENERATE_CHARS characters is made whole; one more is refused
    on /generate and the stream."""
    url = limits_server.url
    r = httpx.post(
        f"{url}/generate", json={"prompt": PROMPT, "length": MAX_GENERATE, "seed": 3}, timeout=30
    )
    assert r.status_code == 200, r.text
    assert len(r.json()["text"]) == MAX_GENERATE
    too_long = {"prompt": PROMPT, "length": MAX_GENERATE + 1}
    refusal(
        httpx.post(f"{url}/generate", json=too_long, timeout=30),
        400,
        f"length must lie in 1..{MAX_GENERATE} (RNNSERVE_MAX_GENERATE_CHARS)",
    )
    r = httpx.post(f"{url}/v1/generate/stream", json=too_long, timeout=30)
    refusal(r, 400, f"length must lie in 1..{MAX_GENERATE} (RNNSERVE_MAX_GENERATE_CHARS)")


@pytest.mark.slow
def test_top_k_limit(limits_server: Server) -> None:
    """k = RNNSERVE_MAX_TOP_K gives that many candidates and samples; k + 1 is refused on
    /next_char, /generate and the stream."""
    url = limits_server.url
    r = httpx.post(f"{url}/next_char", json={"text": PROMPT, "k": MAX_TOP_K}, timeout=30)
    assert r.status_code == 200, r.text
    assert len(r.json()["candidates"]) == MAX_TOP_K
    r = httpx.post(
        f"{url}/generate", json={"prompt": PROMPT, "length": 5, "top_k": MAX_TOP_K}, timeout=30
    )
    assert r.status_code == 200 and r.json()["top_k"] == MAX_TOP_K, r.text

    over = MAX_TOP_K + 1
    refusal(
        httpx.post(f"{url}/next_char", json={"text": PROMPT, "k": over}, timeout=30),
        400,
        f"k must lie in 1..{MAX_TOP_K} (RNNSERVE_MAX_TOP_K)",
    )
    bound = f"top_k must lie in 1..{MAX_TOP_K} (RNNSERVE_MAX_TOP_K)"
    r = httpx.post(
        f"{url}/generate", json={"prompt": PROMPT, "length": 5, "top_k": over}, timeout=30
    )
    refusal(r, 400, bound)
    r = httpx.post(
        f"{url}/v1/generate/stream", json={"prompt": PROMPT, "length": 5, "top_k": over}, timeout=30
    )
    refusal(r, 400, f"top_k must lie in 1..{MAX_TOP_K} (RNNSERVE_MAX_TOP_K)")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/next_char", {"text": PROMPT}),
        ("/generate", {"prompt": PROMPT}),
        ("/v1/generate/stream", {"prompt": PROMPT}),
    ],
)
def test_defaults_stay_within_lowered_limits(
    limits_server: Server, path: str, body: dict[str, Any]
) -> None:
    """A request that sends only the text must be served whatever the limits are set to."""
    r = httpx.post(f"{limits_server.url}{path}", json=body, timeout=30)
    assert r.status_code == 200, r.text


@pytest.mark.slow
def test_metadata_tells_clients_the_lowered_limits(limits_server: Server) -> None:
    """The demo page sizes its inputs from these: they must be the server's own values."""
    limits = httpx.get(f"{limits_server.url}/v1/metadata", timeout=30).json()["limits"]
    assert limits == {
        "max_images_per_request": MAX_IMAGES,
        "max_text_chars": MAX_TEXT,
        "max_generate_chars": MAX_GENERATE,
        "max_top_k": MAX_TOP_K,
        "max_request_bytes": MAX_REQUEST_BYTES,
    }


def char_request(rows: int, steps: int) -> dict[str, Any]:
    ids = {"name": "ids", "shape": [rows, steps], "datatype": "INT64", "data": [1] * (rows * steps)}
    return {"inputs": [ids], "outputs": [{"name": "state_out"}]}


@pytest.mark.slow
def test_v2_character_limits(limits_server: Server) -> None:
    """The V2 character route takes RNNSERVE_MAX_CHAR_ROWS sequences and RNNSERVE_MAX_CHAR_IDS
    ids, and sequences of RNNSERVE_MAX_TEXT_CHARS steps; each one over is refused, naming its
    setting (each refused request breaks that limit only, or breaks it first)."""
    url = f"{limits_server.url}/v2/models/char-rnn/infer"
    accepted = httpx.post(url, json=char_request(MAX_ROWS, MAX_IDS // MAX_ROWS), timeout=30)
    assert v2_output(accepted, "state_out")["shape"][1] == MAX_ROWS
    accepted = httpx.post(url, json=char_request(2, MAX_IDS // 2), timeout=30)  # exactly MAX_IDS
    assert v2_output(accepted, "state_out")["shape"][1] == 2

    r = httpx.post(url, json=char_request(MAX_ROWS + 1, 2), timeout=30)
    v2_refusal(
        r,
        400,
        f"{MAX_ROWS + 1} sequences in one request, over the limit of {MAX_ROWS} "
        "(RNNSERVE_MAX_CHAR_ROWS)",
    )
    steps = MAX_IDS // MAX_ROWS + 1
    r = httpx.post(url, json=char_request(MAX_ROWS, steps), timeout=30)
    v2_refusal(
        r,
        400,
        f"= {MAX_ROWS * steps} ids in one request, over the limit of {MAX_IDS} "
        "(RNNSERVE_MAX_CHAR_IDS)",
    )
    # one sequence a step too long: also over the ids limit, but the step limit is checked first
    r = httpx.post(url, json=char_request(1, MAX_TEXT + 1), timeout=30)
    v2_refusal(
        r, 400, f"{MAX_TEXT + 1} steps, over the limit of {MAX_TEXT} (RNNSERVE_MAX_TEXT_CHARS)"
    )


# --------------------------------------------------------------------------- batching


def single_digit_burst(
    pool: tuple[Digit, ...], count: int
) -> list[tuple[str, bytes, dict[str, str]]]:
    requests = []
    for i in range(count):
        body, headers = binary_digits(uint8([pool[i % len(pool)]]))
        requests.append(("/v1/digits?model=bigru", body, headers))
    return requests


@pytest.mark.slow
def test_batching_off_makes_one_model_call_per_request(
    limits_server: Server, pool: tuple[Digit, ...]
) -> None:
    """RNNSERVE_BATCHING=off: a clump of concurrent one-digit requests is answered right, in one
    model call of one row per request (with batching on, the same clump is merged: see
    test_batching_on_merges_up_to_max_batch_size)."""
    count = 24
    before = model_calls(limits_server.url, "mnist-bigru")
    answers = asyncio.run(fresh_burst(limits_server.url, single_digit_burst(pool, count)))
    for i, r in enumerate(answers):
        assert r.status_code == 200, r.text
        assert r.json()["digits"] == [pool[i % len(pool)].label]
    calls = calls_since(limits_server.url, "mnist-bigru", before)
    assert calls["calls"] == count and calls["rows"] == count, calls
    assert calls["1.0"] == count, calls  # no call had more than one row


@pytest.mark.slow
def test_batching_on_merges_up_to_max_batch_size(
    queues_server: Server, pool: tuple[Digit, ...]
) -> None:
    """With batching on, the same clump of one-digit requests is merged into fewer model calls,
    none over RNNSERVE_MAX_BATCH_SIZE=4 rows (a clump of 24 reaches several times that). On a
    machine busy enough to deliver a clump one request at a time, none meet in the queue: the
    burst is sent again (up to 5 times) until one does; no call may ever pass 4 rows."""
    count = 24
    merged = []
    for _ in range(5):
        before = model_calls(queues_server.url, "mnist-bigru")
        answers = asyncio.run(fresh_burst(queues_server.url, single_digit_burst(pool, count)))
        served = 0
        for i, r in enumerate(answers):
            if r.status_code == 503:  # waited over max_queue_wait_ms on a busy machine: allowed
                refusal(r, 503, "RNNSERVE_MAX_QUEUE_WAIT_MS")
                continue
            assert r.status_code == 200, r.text
            assert r.json()["digits"] == [pool[i % len(pool)].label]
            served += 1
        calls = calls_since(queues_server.url, "mnist-bigru", before)
        assert calls["rows"] == served and calls["4.0"] == calls["calls"], calls  # none over 4
        merged.append(calls)
        if calls["calls"] < served:  # merged
            return
    raise AssertionError(f"no burst of {count} was merged in 5 tries: {merged}")


# --------------------------------------------------------------------------- queues


@pytest.mark.slow
def test_digit_queue_refuses_when_full_or_waited_too_long(
    queues_server: Server, pool: tuple[Digit, ...]
) -> None:
    """Behind a request that holds the model (1,024 digits, ~0.4 s), the next request waits and
    is refused when its turn comes (it waited over RNNSERVE_MAX_QUEUE_WAIT_MS=50), and the ones
    after it at once (their images would pass RNNSERVE_MAX_QUEUED_IMAGES=40): all 503 with
    Retry-After, counted by reason; the model is free and right afterwards."""
    url = queues_server.url
    refused = "rnnserve_queue_refused_total"
    labels = {reason: f'queue="mnist-bigru/1",reason="{reason}"' for reason in ("full", "waited")}
    before = {reason: metric_value(url, refused, label) for reason, label in labels.items()}
    heavy, heavy_headers = binary_digits(
        np.repeat(uint8(pool), -(-1024 // len(pool)), axis=0)[:1024]
    )
    body, headers = binary_digits(uint8(pool[:30]))

    async def round_trip() -> tuple[httpx.Response, list[httpx.Response]]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            holder = asyncio.ensure_future(
                client.post("/v1/digits?model=bigru", content=heavy, headers=heavy_headers)
            )
            await asyncio.sleep(0.02)  # let it reach the model first (checked below: 200)
            queued = await asyncio.gather(
                *(
                    client.post("/v1/digits?model=bigru", content=body, headers=headers)
                    for _ in range(3)
                )
            )
            return await holder, list(queued)

    messages: list[str] = []
    waited: list[str] = []
    full: list[str] = []
    for _ in range(3):  # the order of arrival is the network's: a round may not queue as meant
        holder, queued = asyncio.run(round_trip())
        assert holder.status_code == 200, holder.text
        messages += [refusal(r, 503) for r in queued if r.status_code == 503]
        waited = [m for m in messages if "waited" in m]
        full = [m for m in messages if "images are waiting" in m]
        if waited and full:
            break
    assert waited and full, messages
    assert all("waited over 50 ms (RNNSERVE_MAX_QUEUE_WAIT_MS)" in m for m in waited)
    assert all("images are waiting (limit RNNSERVE_MAX_QUEUED_IMAGES=40)" in m for m in full)
    for reason, label in labels.items():
        assert metric_value(url, refused, label) - before[reason] == sum(
            1 for m in messages if ("waited" in m) == (reason == "waited")
        )
    assert_still_serving(queues_server, pool[2])


@pytest.mark.slow
def test_text_queue_refuses_beyond_its_limit(queues_server: Server) -> None:
    """V2 character requests (~0.2 s each) beyond one running and RNNSERVE_MAX_QUEUED_TEXT=1
    waiting are refused at once with 503; the running one is served, the waiting one is served
    or, as a digit request would be, refused when its turn comes after more than
    RNNSERVE_MAX_QUEUE_WAIT_MS=50 (the text loop follows the digit routes' admission rules)."""
    heavy = ("/v2/models/char-rnn/infer", orjson.dumps(char_request(64, 128)), JSON_TYPE)
    answers = asyncio.run(fresh_burst(queues_server.url, [heavy] * 6))
    served = [r for r in answers if r.status_code == 200]
    refused = [r for r in answers if r.status_code != 200]
    assert served and refused, [r.text[:200] for r in answers]
    for r in served:
        assert v2_output(r, "state_out")["shape"][1] == 64
    full = [r for r in refused if "queue is full" in r.text]
    assert len(full) >= len(answers) - 2, [r.text[:200] for r in refused]  # refused at once
    for r in full:
        v2_refusal(r, 503, "the text queue is full", "limit RNNSERVE_MAX_QUEUED_TEXT=1")
    for r in refused:
        if r not in full:
            v2_refusal(r, 503, "waited over", "RNNSERVE_MAX_QUEUE_WAIT_MS")
    r = httpx.post(f"{queues_server.url}/next_char", json={"text": PROMPT}, timeout=30)
    assert r.status_code == 200, r.text


@pytest.mark.slow
def test_decoding_queue_refuses_beyond_its_limit(
    queues_server: Server, pool: tuple[Digit, ...]
) -> None:
    """16-megapixel uploads beyond one decoding and RNNSERVE_MAX_QUEUED_DECODES=1 waiting are
    refused at once with 503; the decoded ones are read right."""
    digit = pool[0]
    picture = Image.new("L", (4000, 4000), 255)
    picture.paste(Image.fromarray(255 - uint8([digit])[0]).resize((1200, 1200)), (1400, 1400))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    files = {"image": ("big.png", buffer.getvalue(), "image/png")}
    request = httpx.Request("POST", "http://x/classify_image", files=files)
    body = request.read()
    headers = {"content-type": request.headers["content-type"]}
    answers = asyncio.run(fresh_burst(queues_server.url, [("/classify_image", body, headers)] * 8))
    served = [r for r in answers if r.status_code == 200]
    refused = [r for r in answers if r.status_code != 200]
    assert served and refused, [r.text[:200] for r in answers]
    assert all(r.json()["digit"] == digit.label for r in served)
    for r in refused:
        refusal(r, 503, "the decoding queue is full", "limit RNNSERVE_MAX_QUEUED_DECODES=1 waiting")


@pytest.mark.slow
def test_buffered_bodies_limit_and_timeout_of_a_stalled_body(
    queues_server: Server, pool: tuple[Digit, ...]
) -> None:
    """RNNSERVE_MAX_BUFFERED_BYTES (2 MB) counts the bytes bodies have sent, not what they
    declare: a request that declares 1.9 MB and stalls after 1,000 bytes holds 1,000 bytes, and a
    200 KB request is served meanwhile. One that has sent 1.85 MB before it stalls holds that
    much: a 200 KB request meanwhile is refused with 503 before its body is read. The stalled one
    gets 504 once its response has not started within RNNSERVE_TIMEOUT_S=2; that frees its
    share, and the 200 KB request is then served right."""
    chosen = [pool[i % len(pool)] for i in range(255)]
    body, headers = binary_digits(uint8(chosen))
    assert len(body) + 1_850_000 > 2_000_000
    url = f"{queues_server.url}/v1/digits?model=rnn"
    stalled_head = post_head(
        "/v1/digits",
        f"Content-Type: {OCTET}".encode(),
        b"X-Tensor-Shape: 1,28,28",
        b"Content-Length: 1900000",
    )
    with connect(queues_server.url) as declared_only:
        declared_only.sendall(stalled_head + b"\0" * 1000)
        time.sleep(0.3)
        r = httpx.post(url, content=body, headers=headers, timeout=30)
        assert r.status_code == 200, r.text
    with connect(queues_server.url) as stalled:
        started = time.monotonic()
        stalled.sendall(stalled_head + b"\0" * 1_850_000)
        deadline = started + 1.0
        while True:  # the stalled request's bytes reach the middleware in a moment
            r = httpx.post(url, content=body, headers=headers, timeout=30)
            if r.status_code != 200 or time.monotonic() > deadline:
                break
        refusal(
            r,
            503,
            "the server holds too many request bodies",
            "RNNSERVE_MAX_BUFFERED_BYTES=2000000",
        )
        answer = read_response(stalled)
        elapsed = time.monotonic() - started
    assert answer.status == 504, answer
    assert orjson.loads(answer.body) == {
        "error": f"Not able to process the request in {TIMEOUT_S} seconds",
        "detail": None,
    }
    assert TIMEOUT_S - 0.1 <= elapsed < TIMEOUT_S + 3, elapsed
    r = httpx.post(url, content=body, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["digits"] == [d.label for d in chosen]


async def first_event(stream: httpx.Response) -> AsyncIterator[bytes]:
    chunks = stream.aiter_bytes()
    first = await anext(chunks)
    assert first.startswith(b"data: "), first
    return chunks


@pytest.mark.slow
def test_generation_queue_503_and_timeout_504(queues_server: Server) -> None:
    """With a long stream holding the one RNNSERVE_MAX_ACTIVE_GENERATIONS place, of two more
    generations one waits (RNNSERVE_MAX_QUEUED_GENERATIONS=1) and the other is refused at once
    (503, Retry-After); the waiting one gets 504 when its response has not started within
    RNNSERVE_TIMEOUT_S=2, while the stream goes on. Once the stream is closed, generations are
    served again."""
    request = {"prompt": PROMPT, "length": 5, "seed": 11}

    async def run() -> tuple[list[tuple[httpx.Response, float]], httpx.Response]:
        async with httpx.AsyncClient(base_url=queues_server.url, timeout=30) as client:
            stream_request = {"prompt": PROMPT, "length": 1_000_000, "seed": 1}
            async with client.stream("POST", "/v1/generate/stream", json=stream_request) as stream:
                assert stream.status_code == 200
                chunks = await first_event(stream)
                started = time.monotonic()

                async def timed() -> tuple[httpx.Response, float]:
                    r = await client.post("/generate", json=request)
                    return r, time.monotonic() - started

                answers = await asyncio.gather(timed(), timed())
                assert b"event: end" not in await anext(chunks)  # the stream still runs
            deadline = time.monotonic() + 10
            while True:  # the closed stream leaves the decode loop at its next step
                after = await client.post("/generate", json=request)
                if after.status_code != 503 or time.monotonic() > deadline:
                    return list(answers), after
                await asyncio.sleep(0.05)

    answers, after = asyncio.run(run())
    answers.sort(key=lambda pair: pair[0].status_code)
    (refused, refused_s), (late, late_s) = answers
    refusal(
        refused,
        503,
        "limits RNNSERVE_MAX_ACTIVE_GENERATIONS=1, RNNSERVE_MAX_QUEUED_GENERATIONS=1",
    )
    assert refused_s < TIMEOUT_S - 0.5, refused_s  # at once, not after waiting
    message = refusal(late, 504)
    assert message == f"Not able to process the request in {TIMEOUT_S} seconds"
    assert TIMEOUT_S - 0.1 <= late_s < TIMEOUT_S + 3, late_s
    assert after.status_code == 200, after.text
    assert len(after.json()["text"]) == 5
    assert httpx.get(f"{queues_server.url}/readyz", timeout=10).status_code == 200


@pytest.mark.slow
def test_a_timed_out_generation_gives_back_its_place(queues_server: Server) -> None:
    """After the waiting generation got its 504, nobody waits: a new one must be admitted (and
    served once the stream ends), not refused with "1 waiting"."""
    request = {"prompt": PROMPT, "length": 5, "seed": 12}

    async def run() -> httpx.Response:
        async with httpx.AsyncClient(base_url=queues_server.url, timeout=30) as client:
            stream_request = {"prompt": PROMPT, "length": 1_000_000, "seed": 2}
            async with client.stream("POST", "/v1/generate/stream", json=stream_request) as stream:
                chunks = await first_event(stream)  # (dropping it would close the stream)
                late = await client.post("/generate", json=request)
                assert late.status_code == 504, late.text
                assert b"event: end" not in await anext(chunks)
                admitted = asyncio.ensure_future(client.post("/generate", json=request))
                done, _ = await asyncio.wait({admitted}, timeout=0.5)
                if done:  # answered at once while the stream runs: refused
                    return admitted.result()
            return await admitted  # joins once the stream has left

    r = asyncio.run(run())
    assert r.status_code == 200, r.text
