"""Optional bearer-token authentication, against a real server, both ways."""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from loadtest.servers import Server, start_server
from tests.conftest import ROOT

pytestmark = pytest.mark.slow
TOKENS = "first-secret-token,second-secret-token"
V2_DIGIT = {
    "inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 28, 28], "data": [0] * 784}]
}
PNG = io.BytesIO()
Image.new("L", (28, 28), 255).save(PNG, format="PNG")
# Every route but the exempt ones, with a request that succeeds once the token is right
# (/classify_image: a blank picture is a 422, which is past authentication).
PROTECTED = [
    ("POST", "/classify_pixels", {"json": {"images": [{"pixels": [[0] * 28] * 28}]}}, 200),
    ("POST", "/classify_image", {"files": {"image": ("a.png", PNG.getvalue())}}, 422),
    ("POST", "/next_char", {"json": {"text": "ROMEO", "k": 2}}, 200),
    ("POST", "/generate", {"json": {"prompt": "ROMEO", "length": 5, "seed": 1}}, 200),
    ("POST", "/v1/generate/stream", {"json": {"prompt": "ROMEO", "length": 5, "seed": 1}}, 200),
    ("POST", "/metadata", {"json": {}}, 200),
    ("GET", "/v1/metadata", {}, 200),
    ("POST", "/v1/digits", {"json": {"pixels": [[0] * 28] * 28}}, 200),
    ("GET", "/v2", {}, 200),
    ("GET", "/v2/models/mnist-rnn", {}, 200),
    ("GET", "/v2/models/mnist-rnn/ready", {}, 200),
    ("GET", "/v2/models/mnist-rnn/versions/1", {}, 200),
    ("POST", "/v2/models/mnist-rnn/infer", {"json": V2_DIGIT}, 200),
    ("POST", "/v2/models/mnist-rnn/versions/1/infer", {"json": V2_DIGIT}, 200),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(
        tmp_path_factory.mktemp("auth"), model_dir=str(ROOT / "models"), api_tokens=TOKENS
    )
    yield srv
    srv.stop()


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "ok"), PROTECTED, ids=[p[1] for p in PROTECTED]
)
def test_every_route_needs_a_valid_token(
    server: Server, method: str, path: str, kwargs: dict, ok: int
) -> None:
    url = server.url + path
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Bearer"},
        {"Authorization": "first-secret-token"},
        {"Authorization": "Basic Zmlyc3Q="},
        {"Authorization": "Bearer first-secret-token-and-more"},
    ):
        r = httpx.request(method, url, headers=headers, timeout=30, **kwargs)
        assert r.status_code == 401, (headers, r.text)
        body = r.json()
        assert set(body) == ({"error"} if path.startswith("/v2") else {"error", "detail"})
        assert body["error"].startswith("missing or invalid bearer token")
        assert r.headers["www-authenticate"].startswith("Bearer")
    for token in TOKENS.split(","):
        r = httpx.request(
            method, url, timeout=30, headers={"Authorization": f"Bearer {token}"}, **kwargs
        )
        assert r.status_code == ok, r.text


def test_health_metrics_and_the_demo_page_stay_open(server: Server) -> None:
    for path in (
        "/livez",
        "/readyz",
        "/healthz",
        "/metrics",
        "/v2/health/live",
        "/v2/health/ready",
        "/ui/",
        "/ui/app.js",
        "/",  # the Swagger page and its description: no data; every call from it needs a token
        "/docs.json",
        "/static_content/swagger-ui.css",
    ):
        assert httpx.get(server.url + path, timeout=10).status_code == 200, path
    # an exempt prefix covers its sub-tree, not its look-alikes
    assert httpx.get(server.url + "/livez/x", timeout=10).status_code == 401
    assert httpx.get(server.url + "/uix", timeout=10).status_code == 401


def test_the_api_description_asks_for_the_bearer_token(server: Server) -> None:
    """With tokens set the Swagger page opens, offers "Authorize", and marks every operation
    that needs the token (the exempt ones need none)."""
    spec = httpx.get(server.url + "/docs.json", timeout=30).json()
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert spec["paths"]["/classify_pixels"]["post"]["security"] == [{"bearer": []}]
    assert spec["paths"]["/v2/models/{name}/infer"]["post"]["security"] == [{"bearer": []}]
    assert spec["paths"]["/readyz"]["get"]["security"] == []


def test_unauthenticated_huge_body_is_refused_before_reading(server: Server) -> None:
    r = httpx.post(
        server.url + "/classify_pixels",
        content=b"0" * 10_000_000,
        timeout=30,
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 401


def test_no_tokens_means_open(app_client: httpx.Client) -> None:
    for path in ("/next_char", "/v1/digits"):
        body = {"text": "ROMEO"} if path == "/next_char" else {"pixels": [[0] * 28] * 28}
        assert app_client.post(path, json=body).status_code == 200, path
