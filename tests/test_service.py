"""The service with the committed models: most tests in this process (`app_client`: the whole
ASGI app, every middleware and mounted app), the rest against a real `bentoml serve` over real
HTTP (marked slow): its log, the TorchScript backend's own server, BentoML's HTTP client."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from loadtest.servers import Server, start_server
from service.settings import Settings
from tests.conftest import ROOT, expected_provider, metric_value
from tests.images import as_user_photo, big_blank_png, mnist_test_digits, png_bytes

MODELS = ROOT / "models"
SHAKESPEARE = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, s"


@pytest.fixture(scope="module")
def ts_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(
        tmp_path_factory.mktemp("ts"), model_dir=str(MODELS), backend="torchscript"
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(app_client: httpx.Client) -> httpx.Client:
    return app_client


@pytest.fixture(scope="module")
def provider(client: httpx.Client) -> str:
    """The provider the models must report: the one for the device the service found."""
    return expected_provider(client.get("/v1/metadata").json()["device"])


@pytest.fixture(scope="module")
def digits(mnist_root: Path) -> tuple[np.ndarray, np.ndarray]:
    return mnist_test_digits(mnist_root, 200)


def pixel_body(images: np.ndarray, **extra: object) -> dict:
    return {"images": [{"pixels": img.astype(float).tolist(), **extra} for img in images]}


def assert_still_serving(client: httpx.Client, digits: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = digits
    r = client.post("/classify_pixels", json=pixel_body(images[:1]))
    assert r.status_code == 200, r.text
    assert r.json()[0]["digit"] == labels[0]


def test_health_and_readiness(client: httpx.Client) -> None:
    """The probes say what they found, in JSON (BentoML's answer an empty line): a client that
    reads the body (as KServe's does on /v2/health/*) gets an answer, not a parse error."""
    for path, body in (("/livez", {"live": True}), ("/healthz", {"live": True})):
        r = client.get(path)
        assert r.status_code == 200 and r.json() == body, r.text
        assert r.headers["content-type"] == "application/json"
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json() == {"ready": True}, r.text
    head = client.head("/readyz")
    assert head.status_code == 200 and head.content == b""


def test_admission_series_exist_before_the_first_refusal(client: httpx.Client) -> None:
    """rnnserve_queue_refused and rnnserve_queue_dropped are on /metrics at 0 for every queue
    from the start: an alert on them reads 0, not "no data"."""
    text = client.get("/metrics").text
    queues = ["mnist-rnn/1", "mnist-birnn/1", "mnist-bigru/1", "decoding", "text"]
    for queue in queues:
        for reason in ("full", "waited"):
            assert f'rnnserve_queue_refused_total{{queue="{queue}",reason="{reason}"}}' in text
        assert f'rnnserve_queue_dropped_total{{queue="{queue}"}}' in text


@pytest.mark.slow
def test_log_has_one_honest_line_per_model(default_server: Server, provider: str) -> None:
    meta = httpx.get(f"{default_server.url}/v1/metadata", timeout=30).json()
    assert meta["torch_imported"] is False  # the ONNX serving path never imports torch
    log = default_server.log()
    device = "cpu" if provider == "CPUExecutionProvider" else "cuda"
    for name in ("mnist-rnn", "mnist-birnn", "mnist-bigru", "char-rnn"):
        lines = [line for line in log.splitlines() if f"model {name} " in line]
        assert len(lines) == 1, lines
        assert f"provider {provider}" in lines[0] and f"device {device}" in lines[0]
    if device == "cpu":
        assert "CUDAExecutionProvider" not in log  # no GPU probing noise on a CPU machine


def test_pixels_on_real_mnist_digits(
    client: httpx.Client, digits: tuple[np.ndarray, np.ndarray], provider: str
) -> None:
    """The fixture's 200 t10k digits, every classifier: 98.5-100% measured when this was
    written (tests/test_committed_models.py runs the same models in-process)."""
    images, labels = digits
    for model in ("rnn", "birnn", "mnist-birnn", "bigru"):
        r = client.post("/classify_pixels", json=pixel_body(images, model=model))
        assert r.status_code == 200, r.text
        answers = r.json()
        assert len(answers) == 200
        predicted = np.array([a["digit"] for a in answers])
        assert (predicted == labels).mean() >= 0.98, model
        assert all(abs(sum(a["probabilities"]) - 1) < 1e-3 for a in answers)
        # thresholds are calibrated on photos (pencil and tiny digits included), where the
        # models are less sure than on clean digits: most clean answers stay confident (the
        # default model's nearly all), and the confident ones are right
        confident = np.array([a["confident"] for a in answers])
        assert confident.mean() >= (0.95 if model == "bigru" else 0.8), model
        assert (predicted[confident] == labels[confident]).mean() >= 0.99, model
        assert answers[0]["model"].endswith(model.removeprefix("mnist-"))
        assert answers[0]["provider"] == provider
        # one sized body, not BentoML's chunked three pieces (WholeBodyMiddleware)
        assert r.headers["content-length"] == str(len(r.content))
        assert "transfer-encoding" not in r.headers
        assert "x-bentoml-request-id" not in r.headers  # RNNSERVE_TRACING is off by default


def test_pixels_scale_0_1_gives_the_same_answer(
    client: httpx.Client, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    images, _ = digits
    a = client.post("/classify_pixels", json=pixel_body(images[:5])).json()
    b = client.post(
        "/classify_pixels",
        json={"images": [{"pixels": (img / 255.0).tolist(), "scale": "0-1"} for img in images[:5]]},
    ).json()
    for x, y in zip(a, b, strict=True):
        assert x["digit"] == y["digit"]
        np.testing.assert_allclose(x["probabilities"], y["probabilities"], atol=1e-4)


def test_image_upload_real_digits_png_and_photo_like(
    client: httpx.Client, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = digits
    correct_png = correct_photo = 0
    for img, label in zip(images[:30], labels[:30], strict=True):
        r = client.post("/classify_image", files={"image": ("d.png", png_bytes(img), "image/png")})
        assert r.status_code == 200, r.text
        correct_png += r.json()["digit"] == label
        r = client.post(
            "/classify_image",
            data={"model": "rnn"},
            files={"image": ("d.jpg", as_user_photo(img), "image/jpeg")},
        )
        assert r.status_code == 200, r.text
        assert r.json()["model"] == "mnist-rnn"
        correct_photo += r.json()["digit"] == label
    assert correct_png >= 28 and correct_photo >= 27


def test_animated_gif_is_read_from_its_first_frame(
    client: httpx.Client, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = digits
    frames = [Image.fromarray(images[0]), Image.fromarray(images[1])]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    r = client.post("/classify_image", files={"image": ("anim.gif", buffer.getvalue())})
    assert r.status_code == 200 and r.json()["digit"] == labels[0]


def test_noise_and_a_checkerboard_are_a_422_not_a_confident_digit(client: httpx.Client) -> None:
    """Pictures with no digit at all (issue #31: a 1100x1100 colour-noise PNG was answered
    '8, confident', a 300x300 one-pixel checkerboard too): a 422 that says so."""
    noise = np.random.default_rng(4).integers(0, 256, (1100, 1100, 3), dtype=np.uint8)
    board = (np.indices((300, 300)).sum(0) % 2 * 255).astype(np.uint8)
    for name, pixels in (("noise.png", noise), ("board.png", board)):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        r = client.post("/classify_image", files={"image": (name, buffer.getvalue(), "image/png")})
        assert r.status_code == 422, (name, r.text)
        assert "digit" in r.json()["error"]


@pytest.mark.parametrize("fmt", ["BMP", "GIF", "WEBP"])
def test_image_formats(
    fmt: str, client: httpx.Client, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = digits
    r = client.post("/classify_image", files={"image": ("d", as_user_photo(images[0], fmt))})
    assert r.status_code == 200, r.text
    assert r.json()["digit"] == labels[0]


def char_model_top(text: str, k: int, temperature: float = 1.0) -> list[tuple[str, float]]:
    """The committed char model's k most probable next characters, computed here with
    onnxruntime directly (the model's quality itself: tests/test_committed_models.py)."""
    import onnxruntime as ort

    card = json.loads((MODELS / "char-rnn" / "1" / "card.json").read_text())
    session = ort.InferenceSession(str(MODELS / "char-rnn" / "1" / "model.onnx"))
    vocab = card["vocabulary"]
    rows, _, hidden = card["inputs"][1]["shape"]
    ids = np.array([[vocab.index(c) for c in text]], dtype=np.int64)
    logits, _ = session.run(None, {"ids": ids, "state": np.zeros((rows, 1, hidden), np.float32)})
    z = logits[0, -1].astype(np.float64) / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    return [(vocab[i], float(p[i])) for i in np.argsort(-p, kind="stable")[:k]]


def test_next_char_on_real_text(client: httpx.Client) -> None:
    for temperature in (1.0, 0.5):
        r = client.post(
            "/next_char", json={"text": SHAKESPEARE, "k": 5, "temperature": temperature}
        )
        assert r.status_code == 200, r.text
        got = [(c["char"], c["probability"]) for c in r.json()["candidates"]]
        expected = char_model_top(SHAKESPEARE, 5, temperature)
        assert [c for c, _ in got] == [c for c, _ in expected]
        np.testing.assert_allclose([p for _, p in got], [p for _, p in expected], atol=1e-5)


def test_generate_is_reproducible_with_a_seed(client: httpx.Client) -> None:
    body = {"prompt": "ROMEO:\n", "length": 120, "temperature": 0.8, "seed": 42}
    first = client.post("/generate", json=body).json()
    again = client.post("/generate", json=body).json()
    other = client.post("/generate", json={**body, "seed": 43}).json()
    assert first["text"] == again["text"] and len(first["text"]) == 120
    assert other["text"] != first["text"]
    greedy = client.post("/generate", json={**body, "temperature": 0, "seed": 1}).json()
    greedy2 = client.post("/generate", json={**body, "temperature": 0, "seed": 2}).json()
    assert greedy["text"] == greedy2["text"]
    unseeded = client.post("/generate", json={"prompt": "KING:", "length": 10}).json()
    assert isinstance(unseeded["seed"], int)
    replay = client.post(
        "/generate", json={"prompt": "KING:", "length": 10, "seed": unseeded["seed"]}
    ).json()
    assert replay["text"] == unseeded["text"]


def test_metadata_get_and_post(client: httpx.Client) -> None:
    got = client.get("/v1/metadata")
    posted = client.post("/metadata", json={})
    assert got.status_code == posted.status_code == 200
    meta = got.json()
    assert meta == posted.json()
    assert meta["backend"] == "onnx" and meta["device"] in ("cpu", "cuda")
    assert isinstance(meta["torch_imported"], bool)  # this process imports torch elsewhere
    names = {m["name"] for m in meta["models"]}
    assert {"mnist-rnn", "mnist-birnn", "char-rnn"} <= names
    for m in meta["models"]:
        assert m["provider"] == expected_provider(meta["device"]) and m["metrics"]
    assert meta["vocabulary"] and "rnn" in meta["digit_model_names"]
    defaults = Settings.model_fields
    assert meta["limits"] == {name: defaults[name].default for name in meta["limits"]}
    assert {"max_text_chars", "max_generate_chars", "max_top_k"} <= set(meta["limits"])


def test_metrics_count_exactly_the_requests_sent(client: httpx.Client, provider: str) -> None:
    """Counters move by exactly what was sent: 5 next_char calls are 5 char-model calls of
    one row each; 3 /v1/digits requests (one rejected) are 2 + 1 lean requests by status."""
    url = client
    model = 'model="char-rnn"'
    calls = metric_value(url, "rnnserve_inference_seconds_count", model)
    rows = metric_value(url, "rnnserve_inference_batch_size_sum", model)
    ok = metric_value(url, "rnnserve_lean_requests_total", 'status="200"')
    bad = metric_value(url, "rnnserve_lean_requests_total", 'status="400"')
    for text in ("ROMEO", "JULIET", "KING", "QUEEN", "FOOL"):
        assert client.post("/next_char", json={"text": text, "k": 1}).status_code == 200
    blank = np.zeros((1, 28, 28)).tolist()
    for body in ({"pixels": blank}, {"pixels": blank}, {"pixels": [[1, 2]]}):
        client.post("/v1/digits", json=body)
    assert metric_value(url, "rnnserve_inference_seconds_count", model) == calls + 5
    assert metric_value(url, "rnnserve_inference_batch_size_sum", model) == rows + 5
    assert metric_value(url, "rnnserve_lean_requests_total", 'status="200"') == ok + 2
    assert metric_value(url, "rnnserve_lean_requests_total", 'status="400"') == bad + 1
    text = client.get("/metrics").text
    info = [line for line in text.splitlines() if line.startswith("rnnserve_model_info{")]
    assert len(info) == 4 and all(f'provider="{provider}"' in line for line in info), info
    assert all('version="1"' in line for line in info)


def test_model_metrics_count_requests_per_model_version(client: httpx.Client) -> None:
    """rnnserve_model_requests by model, version and outcome, whatever the route."""
    labels = 'model="mnist-rnn",outcome="{}",version="1"'
    ok = metric_value(client, "rnnserve_model_requests_total", labels.format("ok"))
    bad = metric_value(client, "rnnserve_model_requests_total", labels.format("BadInput"))
    timed = metric_value(client, "rnnserve_model_request_seconds_count", 'model="mnist-rnn"')
    blank = np.zeros((1, 28, 28)).tolist()
    for body in ({"pixels": blank, "model": "rnn"}, {"pixels": blank, "model": "rnn"}):
        assert client.post("/v1/digits", json=body).status_code == 200
    v2 = {
        "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 28, 28], "data": [0] * 784}]
    }
    answer = client.post("/v2/models/mnist-rnn/infer", json=v2).json()
    assert answer["model_version"] == "1"
    v2["inputs"][0]["data"] = [1e9] * 784  # out of range: refused by the pipeline
    assert client.post("/v2/models/mnist-rnn/infer", json=v2).status_code == 400
    assert metric_value(client, "rnnserve_model_requests_total", labels.format("ok")) == ok + 3
    assert (
        metric_value(client, "rnnserve_model_requests_total", labels.format("BadInput")) == bad + 1
    )
    assert (
        metric_value(client, "rnnserve_model_request_seconds_count", 'model="mnist-rnn"')
        == timed + 3
    )


@pytest.mark.slow
def test_both_backends_agree(
    default_server: Server, ts_server: Server, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    images, _ = digits
    body = pixel_body(images[:32])
    a = httpx.post(f"{default_server.url}/classify_pixels", json=body, timeout=30).json()
    b = httpx.post(f"{ts_server.url}/classify_pixels", json=body, timeout=30).json()
    assert [x["digit"] for x in a] == [y["digit"] for y in b]
    np.testing.assert_allclose(
        [x["probabilities"] for x in a], [y["probabilities"] for y in b], atol=1e-4
    )
    assert b[0]["provider"] == "torch-cpu"
    ts_meta = httpx.get(f"{ts_server.url}/v1/metadata", timeout=30).json()
    assert ts_meta["backend"] == "torchscript" and ts_meta["torch_imported"] is True
    text = {"text": SHAKESPEARE, "k": 3}
    na = httpx.post(f"{default_server.url}/next_char", json=text, timeout=30).json()
    nb = httpx.post(f"{ts_server.url}/next_char", json=text, timeout=30).json()
    assert [c["char"] for c in na["candidates"]] == [c["char"] for c in nb["candidates"]]
    gen = {"prompt": "ROMEO:", "length": 40, "seed": 5, "temperature": 0}
    ga = httpx.post(f"{default_server.url}/generate", json=gen, timeout=30).json()
    gb = httpx.post(f"{ts_server.url}/generate", json=gen, timeout=30).json()
    assert ga["text"] == gb["text"]


@pytest.mark.slow
def test_sync_http_client_on_every_route(
    default_server: Server, digits: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    """BentoML's own client, as docs/api.md shows it, on every API of the service (it decodes
    answers by the server's schema: a null where the schema says array crashed it)."""
    import bentoml

    images, labels = digits
    picture = tmp_path / "digit.png"
    picture.write_bytes(png_bytes(images[0].astype(np.uint8)))
    with bentoml.SyncHTTPClient(default_server.url) as c:
        answer = c.classify_pixels(images=[{"pixels": images[0].astype(float).tolist()}])
        assert answer[0]["digit"] == labels[0]
        upload = c.classify_image(image=picture, model="rnn")
        assert upload["digit"] == labels[0] and "seen" not in upload
        shown = c.classify_image(image=picture, model="rnn", show_input=True)
        assert len(shown["seen"]) == 28 and len(shown["seen"][0]) == 28
        nxt = c.next_char(text="ROMEO", k=2)
        assert len(nxt["candidates"]) == 2
        more = c.next_char(text=":", k=2, state=nxt["state"])
        assert more["context_chars"] == 6
        text = c.generate(prompt="ROMEO:\n", length=20, temperature=0.8, seed=7)
        assert len(text["text"]) == 20 and text["seed"] == 7
        assert c.metadata()["service"] == "rnnserve"


# ---------------------------------------------------------------------------- errors

ZERO = [[0.0] * 28 for _ in range(28)]
BOMB_PNG = big_blank_png(6000)  # 36 megapixels declared, a few KB sent
BAD_REQUESTS = [
    ("malformed json", "/classify_pixels", {"content": b"{not json"}, 400, "Invalid JSON"),
    ("wrong type", "/classify_pixels", {"json": {"images": "abc"}}, 400, "images"),
    ("empty batch", "/classify_pixels", {"json": {"images": []}}, 400, "at least 1"),
    (
        "27 rows",
        "/classify_pixels",
        {"json": {"images": [{"pixels": ZERO[:27]}]}},
        400,
        "at least 28",
    ),
    (
        "short row",
        "/classify_pixels",
        {"json": {"images": [{"pixels": [[0.0] * 27, *ZERO[1:]]}]}},
        400,
        "row 0 has 27",
    ),
    (
        "NaN",
        "/classify_pixels",
        {"content": json.dumps({"images": [{"pixels": [[float("nan")] * 28, *ZERO[1:]]}]})},
        400,
        "finite",
    ),
    (
        "out of range",
        "/classify_pixels",
        {"json": {"images": [{"pixels": [[300.0] * 28, *ZERO[1:]]}]}},
        400,
        "0..255",
    ),
    (
        "0-1 out of range",
        "/classify_pixels",
        {"json": {"images": [{"pixels": [[2.0] * 28, *ZERO[1:]], "scale": "0-1"}]}},
        400,
        "0..1",
    ),
    (
        "unknown model",
        "/classify_pixels",
        {"json": {"images": [{"pixels": ZERO, "model": "cnn"}]}},
        400,
        "unknown model",
    ),
    (
        "huge body",
        "/classify_pixels",
        {"content": b"[" + b"0," * 3_000_000 + b"0]"},
        413,
        "over the limit",
    ),
    (
        "not an image",
        "/classify_image",
        {"files": {"image": ("x.txt", b"hello", "text/plain")}},
        415,
        "unsupported image format",
    ),
    (
        "blank image",
        "/classify_image",
        {"files": {"image": ("w.png", png_bytes(np.full((28, 28), 255, np.uint8)), "image/png")}},
        422,
        "no visible digit",
    ),
    ("empty text", "/next_char", {"json": {"text": ""}}, 400, "must not be empty"),
    (
        "unknown chars",
        "/next_char",
        {"json": {"text": "ROMEO\u20ac\u00e9"}},
        422,
        "not in the model's vocabulary",
    ),
    # a bound that follows a setting names it, in the words of the lean and stream routes
    (
        "k too large",
        "/next_char",
        {"json": {"text": "ROMEO", "k": 1000}},
        400,
        "k must lie in 1..20 (RNNSERVE_MAX_TOP_K)",
    ),
    (
        "temperature",
        "/generate",
        {"json": {"prompt": "A", "temperature": 50}},
        400,
        "temperature must lie in 0..5",
    ),
    (
        "length",
        "/generate",
        {"json": {"prompt": "A", "length": 10**6}},
        400,
        "length must lie in 1..1000 (RNNSERVE_MAX_GENERATE_CHARS)",
    ),
    ("unknown route", "/nope", {"json": {}}, 404, "Not Found"),
    ("missing field", "/classify_pixels", {"json": {"images": [{"model": "rnn"}]}}, 400, "pixels"),
    (
        "batch over the limit",
        "/classify_pixels",
        {"json": {"images": [{"pixels": ZERO}] * 257}},
        400,
        "257 images in one request, over the limit of 256 (RNNSERVE_MAX_IMAGES_PER_REQUEST)",
    ),
    (
        "decompression bomb",
        "/classify_image",
        {"files": {"image": ("bomb.png", BOMB_PNG, "image/png")}},
        413,
        "over the limit",
    ),
    (
        "1x1 image",
        "/classify_image",
        {"files": {"image": ("dot.png", png_bytes(np.zeros((1, 1), np.uint8)), "image/png")}},
        422,
        "no visible digit",
    ),
    (
        "truncated png",
        "/classify_image",
        {
            "files": {
                "image": ("t.png", png_bytes(np.eye(28, dtype=np.uint8) * 255)[:60], "image/png")
            }
        },
        415,
        "not a readable image",
    ),
    (
        "text over the limit",
        "/next_char",
        {"json": {"text": "a" * 2001}},
        400,
        "text is over the limit of 2000 characters (RNNSERVE_MAX_TEXT_CHARS)",
    ),
    (
        "negative k",
        "/next_char",
        {"json": {"text": "ROMEO", "k": -1}},
        400,
        "k must lie in 1..20 (RNNSERVE_MAX_TOP_K)",
    ),
    (
        "top_k zero",
        "/generate",
        {"json": {"prompt": "A", "top_k": 0}},
        400,
        "top_k must lie in 1..20 (RNNSERVE_MAX_TOP_K)",
    ),
    ("empty prompt", "/generate", {"json": {"prompt": ""}}, 400, "must not be empty"),
    ("wrong method", "/classify_pixels", {"method": "GET"}, 405, "Method Not Allowed"),
    (
        "multipart without boundary",
        "/classify_image",
        {"content": b"{}", "headers": {"content-type": "multipart/form-data"}},
        400,
        "malformed multipart body",
    ),
    (
        "broken multipart",
        "/classify_image",
        {"content": b"{}", "headers": {"content-type": "multipart/form-data; boundary=xx"}},
        400,
        "malformed multipart body",
    ),
    ("boolean seed", "/generate", {"json": {"prompt": "A", "seed": False}}, 400, "integer"),
    ("number as text", "/next_char", {"json": {"text": "A", "k": "5"}}, 400, "integer"),
    (
        "zero softmax temperature",
        "/next_char",
        {"json": {"text": "A", "temperature": 0}},
        400,
        "temperature must lie in (0, 5]",
    ),
]


@pytest.mark.parametrize(
    ("path", "kwargs", "status", "message"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_input_gets_a_clear_4xx_in_one_shape(
    client: httpx.Client,
    digits: tuple[np.ndarray, np.ndarray],
    path: str,
    kwargs: dict,
    status: int,
    message: str,
) -> None:
    kwargs = dict(kwargs)
    default_headers = {"content-type": "application/json"} if "content" in kwargs else None
    headers = kwargs.pop("headers", default_headers)
    method = kwargs.pop("method", "POST")
    r = client.request(method, path, headers=headers, **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "detail"} and isinstance(body["error"], str)
    assert message in body["error"], body
    assert_still_serving(client, digits)


def test_tiny_temperature_gives_finite_probabilities(client: httpx.Client) -> None:
    """(logits / 1e-300) overflowed to inf and gave NaN (sent as null); found by fuzzing."""
    r = client.post("/next_char", json={"text": "ROMEO", "k": 3, "temperature": 1e-300})
    assert r.status_code == 200, r.text
    probabilities = [c["probability"] for c in r.json()["candidates"]]
    assert probabilities == [1.0, 0.0, 0.0]


def test_openapi_documents_the_error_shape_and_statuses(client: httpx.Client) -> None:
    spec = client.get("/docs.json").json()
    error = spec["components"]["schemas"]["Error"]
    assert error["required"] == ["error", "detail"]
    assert "InvalidArgument" not in spec["components"]["schemas"]
    image = spec["paths"]["/classify_image"]["post"]["responses"]
    assert {"200", "400", "401", "413", "415", "422", "500", "503"} <= set(image)
    assert image["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"
    }
    generate = spec["components"]["schemas"]["GenerateRequest"]["properties"]
    assert generate["seed"]["nullable"] is True and generate["seed"]["type"] == "integer"
    assert spec["paths"]["/generate"]["post"]["requestBody"]["required"] is True
    assert "/v1/metadata" in spec["paths"]
    pixels = spec["components"]["schemas"]["DigitPixels"]["properties"]["pixels"]
    assert pixels["items"]["minItems"] == 28 and pixels["items"]["items"]["maximum"] == 255


def test_openapi_document_lists_every_endpoint(client: httpx.Client) -> None:
    r = client.get("/docs.json")
    assert r.status_code == 200
    paths = r.json()["paths"]
    for route in ("/classify_pixels", "/classify_image", "/next_char", "/generate", "/metadata"):
        assert route in paths, route
    assert client.get("/").status_code == 200  # the Swagger UI page
