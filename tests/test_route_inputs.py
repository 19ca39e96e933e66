"""What every route accepts (service/http/route_inputs.py and the hand-made routes): uploads that
are files and nothing else (the server never fetches a URL), one content-type rule, known
fields only; in the service in this process."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect

from loadtest.socket_hostile import fetch_trap
from service.http.middleware import BearerAuthMiddleware
from service.http.route_inputs import FormError, RouteInputs, check_form
from tests.images import png_bytes

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette suggests httpx2 for its TestClient
    from starlette.testclient import TestClient

DIGIT = png_bytes(np.pad(np.full((12, 4), 255, np.uint8), ((8, 8), (12, 12))))


@pytest.fixture()
def listener() -> Iterator[tuple[str, list[bytes]]]:
    """A TCP listener on 127.0.0.1 that records every connection made to it: a fetch by the
    server would show here."""
    with fetch_trap() as (url, seen):
        yield url + "secret", seen


def refusal(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    message = response.json()["error"]
    for word in words:
        assert word in message, message
    assert "Traceback" not in response.text


# --------------------------------------------------------------------------- uploads


@pytest.mark.parametrize(
    "value",
    ["hello", "", "file:///etc/passwd", "http://169.254.169.254/latest/meta-data/", "URL"],
)
def test_a_file_field_holding_text_is_refused_and_nothing_is_fetched(
    app_client: TestClient, listener: tuple[str, list[bytes]], value: str
) -> None:
    url, seen = listener
    text = url if value == "URL" else value
    r = app_client.post("/classify_image", files={"image": (None, text)})
    refusal(r, 400, "'image'", "uploaded file")
    r = app_client.post("/classify_image", data={"image": text})  # urlencoded
    refusal(r, 415, "multipart/form-data")
    assert seen == []


def test_a_json_body_for_the_upload_route_is_refused_and_nothing_is_fetched(
    app_client: TestClient, listener: tuple[str, list[bytes]]
) -> None:
    url, seen = listener
    for body in (url.encode(), b'{"image": "%s"}' % url.encode(), b'{"image": "/etc/passwd"}'):
        r = app_client.post(
            "/classify_image", content=body, headers={"content-type": "application/json"}
        )
        refusal(r, 415, "multipart/form-data")
        r = app_client.post("/classify_image", content=body)  # no content type
        refusal(r, 415, "multipart/form-data")
    assert seen == []


def multipart(*parts: bytes, boundary: bytes = b"XyZ") -> tuple[bytes, dict[str, str]]:
    body = b"".join(b"--" + boundary + b"\r\n" + part + b"\r\n" for part in parts)
    body += b"--" + boundary + b"--\r\n"
    return body, {"content-type": "multipart/form-data; boundary=" + boundary.decode()}


IMAGE_PART = (
    b'Content-Disposition: form-data; name="image"; filename="d.png"\r\n'
    b"Content-Type: image/png\r\n\r\n" + DIGIT
)


@pytest.mark.parametrize(
    ("parts", "words"),
    [
        (
            [
                b"Content-Disposition: form-data; name=\"image\"; filename*=UTF-8''d.png\r\n\r\n"
                + DIGIT
            ],
            ("'image'",),
        ),
        (
            [
                b'Content-Disposition: form-data; name="image"; filename="d.png"; '
                b"filename*=UTF-8''d.png\r\n\r\n" + DIGIT
            ],
            ("filename*=",),
        ),
        (
            [
                b'Content-Disposition: form-data; name="image"; filename="n"\r\n'
                b"Content-Type: multipart/mixed; boundary=in\r\n\r\n"
                b"--in\r\nContent-Type: image/png\r\n\r\n" + DIGIT + b"\r\n--in--"
            ],
            ("nested multipart",),
        ),
        ([b'Content-Disposition: form-data; name="image"; filename="e.png"\r\n\r\n'], ("empty",)),
        ([IMAGE_PART, IMAGE_PART], ("more than once",)),
        ([IMAGE_PART, b'Content-Disposition: form-data; name="extra"\r\n\r\nx'], ("'extra'",)),
        (
            [IMAGE_PART, b'Content-Disposition: form-data; name="model"; filename="m"\r\n\r\nx'],
            ("'model'", "plain value"),
        ),
        ([b'Content-Disposition: form-data; name="model"\r\n\r\nmnist-rnn'], ()),
    ],
)
def test_every_other_form_shape_is_a_400_naming_the_field(
    app_client: TestClient, parts: list[bytes], words: tuple[str, ...]
) -> None:
    body, headers = multipart(*parts)
    r = app_client.post("/classify_image", content=body, headers=headers)
    assert r.status_code in (400, 422), r.text  # 422: the route's own "image is required"
    if words:
        refusal(r, 400, *words)


def test_malformed_multipart_bodies_are_400(app_client: TestClient) -> None:
    r = app_client.post(
        "/classify_image", content=b"abc", headers={"content-type": "multipart/form-data"}
    )
    refusal(r, 400, "malformed multipart body")
    r = app_client.post(  # parts that never end: an empty form, without its file
        "/classify_image",
        content=b"--X\r\nbroken",
        headers={"content-type": "multipart/form-data; boundary=X"},
    )
    refusal(r, 400, "image")


def test_a_proper_upload_is_served_whatever_the_case_of_its_media_type(
    app_client: TestClient,
) -> None:
    body, headers = multipart(
        IMAGE_PART, b'Content-Disposition: form-data; name="model"\r\n\r\nmnist-rnn'
    )
    for ctype in (
        headers["content-type"],
        headers["content-type"].replace("multipart/form-data", "MULTIPART/Form-Data"),
    ):
        r = app_client.post("/classify_image", content=body, headers={"content-type": ctype})
        assert r.status_code == 200, r.text
        assert r.json()["model"] == "mnist-rnn"


# --------------------------------------------------------------------------- JSON routes


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/next_char", b'{"text": "ROMEO: "}'),
        ("/generate", b'{"prompt": "ROMEO: ", "length": 3}'),
        ("/v1/generate/stream", b'{"prompt": "RO", "length": 2}'),
    ],
)
def test_json_routes_take_json_in_any_case_or_no_type_and_refuse_others(
    app_client: TestClient, path: str, body: bytes
) -> None:
    for ctype in ("application/json", "APPLICATION/JSON", "Application/Json; charset=utf-8", None):
        headers = {"content-type": ctype} if ctype else {}
        r = app_client.post(path, content=body, headers=headers)
        assert r.status_code == 200, (ctype, r.text)
    for ctype in (
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ):
        r = app_client.post(path, content=body, headers={"content-type": ctype})
        refusal(r, 415, "application/json")


def test_the_lean_digit_route_compares_media_types_in_any_case(app_client: TestClient) -> None:
    body = b'{"pixels": [%s]}' % b",".join([b"[" + b",".join([b"0"] * 28) + b"]"] * 28)
    r = app_client.post("/v1/digits", content=body, headers={"content-type": "APPLICATION/JSON"})
    assert r.status_code == 200, r.text
    r = app_client.post("/v1/digits", content=body, headers={"content-type": "text/plain"})
    refusal(r, 415, "application/json")


def test_two_content_types_are_refused(app_client: TestClient) -> None:
    r = app_client.post(
        "/next_char",
        content=b'{"text": "a"}',
        headers=[("content-type", "application/json"), ("content-type", "text/plain")],
    )
    refusal(r, 400, "more than one Content-Type")


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/generate", b'{"prompt": "ROMEO: ", "length": 3, "max_tokens": 3}', "max_tokens"),
        ("/next_char", b'{"text": "ROMEO: ", "top_p": 0.5}', "top_p"),
        ("/classify_pixels", b'{"images": [], "extra": 1}', "extra"),
        ("/v1/generate/stream", b'{"prompt": "RO", "max_tokens": 3}', "max_tokens"),
        ("/v1/digits", b'{"pixels": [], "max_tokens": 3}', "max_tokens"),
    ],
)
def test_unknown_fields_are_refused_on_every_route(
    app_client: TestClient, path: str, body: bytes, field: str
) -> None:
    r = app_client.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert field in r.json()["error"] and "unknown field" in r.json()["error"], r.json()


def test_v2_binary_header_length_in_other_digits_is_a_400(app_client: TestClient) -> None:
    for value in ("\u00b2".encode("latin-1"), b"+5", b"5_0", b" ", b"\xd9\xa3"):
        r = app_client.post(
            "/v2/models/mnist-rnn/infer",
            content=b'{"inputs": []}',
            headers=[(b"inference-header-content-length", value)],
        )
        assert r.status_code == 400, (value, r.text)
        assert "Inference-Header-Content-Length" in r.json()["error"]


# --------------------------------------------------------------------------- units


def test_check_form_rules() -> None:
    route = RouteInputs("/r", ("image", "model", "tags"), frozenset({"image"}), frozenset({"tags"}))
    check_form([("model", "m"), ("tags", "a"), ("tags", "b")], route)  # lists may repeat
    with pytest.raises(FormError, match="takes image, model, tags"):
        check_form([("other", "x")], route)
    with pytest.raises(FormError, match="uploaded file"):
        check_form([("image", "http://x")], route)


def test_websocket_scopes_are_authenticated() -> None:
    async def ws_app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 1000})

    app = BearerAuthMiddleware(ws_app, tokens=("t0k",), exempt=())
    client = TestClient(app)
    with pytest.raises(WebSocketDisconnect) as refused, client.websocket_connect("/ws"):
        pass
    assert refused.value.code == 1008
    with (
        client.websocket_connect("/ws", headers={"authorization": "Bearer t0k"}) as ws,
        pytest.raises(WebSocketDisconnect),
    ):
        ws.receive_text()
