"""Optional bearer-token authentication, against a real server, both ways."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from loadtest.servers import Server, start_server
from tests.conftest import ROOT

pytestmark = pytest.mark.slow
TOKENS = "first-secret-token,second-secret-token"
PROTECTED = [
    ("POST", "/next_char", {"text": "ROMEO", "k": 2}),
    ("POST", "/generate", {"prompt": "ROMEO", "length": 5, "seed": 1}),
    ("POST", "/metadata", {}),
    ("GET", "/v1/metadata", None),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(
        tmp_path_factory.mktemp("auth"), model_dir=str(ROOT / "models"), api_tokens=TOKENS
    )
    yield srv
    srv.stop()


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
def test_routes_need_a_valid_token(
    server: Server, method: str, path: str, body: dict | None
) -> None:
    url = server.url + path
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "first-secret-token"},
        {"Authorization": "Basic Zmlyc3Q="},
    ):
        r = httpx.request(method, url, json=body, headers=headers, timeout=30)
        assert r.status_code == 401, (headers, r.text)
        assert r.json()["error"].startswith("missing or invalid bearer token")
        assert r.headers["www-authenticate"].startswith("Bearer")
    for token in TOKENS.split(","):
        r = httpx.request(
            method, url, json=body, timeout=30, headers={"Authorization": f"Bearer {token}"}
        )
        assert r.status_code == 200, r.text


def test_health_and_metrics_stay_open(server: Server) -> None:
    for path in ("/livez", "/readyz", "/metrics"):
        assert httpx.get(server.url + path, timeout=10).status_code == 200


def test_unauthenticated_huge_body_is_refused_before_reading(server: Server) -> None:
    r = httpx.post(
        server.url + "/classify_pixels",
        content=b"0" * 10_000_000,
        timeout=30,
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 401


def test_no_tokens_means_open(tmp_path: Path) -> None:
    srv = start_server(tmp_path, model_dir=str(ROOT / "models"))
    try:
        r = httpx.post(srv.url + "/next_char", json={"text": "ROMEO"}, timeout=30)
        assert r.status_code == 200
    finally:
        srv.stop()
