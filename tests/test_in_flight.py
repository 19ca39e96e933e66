"""`rnnserve_requests_in_flight`, the signal KEDA scales on (deploy/k8s/overlays/keda): a real
server with two workers counts the POSTs it holds, per worker, and forgets them when they end;
probes and scrapes do not count; gRPC calls count under their own protocol."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import tritonclient.grpc as grpcclient

from loadtest.servers import Server, start_server
from tests.conftest import metric_value

pytestmark = pytest.mark.slow
METRIC = "rnnserve_requests_in_flight"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(tmp_path_factory.mktemp("in-flight"), workers="2", body_timeout_s="60")
    yield running
    running.stop()


def series(url: str) -> dict[str, float]:
    """Every sample of the metric: its label text -> value."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(rf"^{METRIC}\{{([^}}]*)\}} (\S+)$", text, flags=re.MULTILINE)
    }


def wait_for(url: str, want: float, protocol: str = "http", timeout: float = 20) -> float:
    deadline = time.monotonic() + timeout
    while True:
        seen = metric_value(url, METRIC, f'protocol="{protocol}"')
        if seen == want or time.monotonic() > deadline:
            return seen
        time.sleep(0.1)


def test_held_posts_count_per_worker_and_go_when_they_end(server: Server) -> None:
    assert wait_for(server.url, 0) == 0  # the series exists at 0 before any request
    host, port = server.url.removeprefix("http://").split(":")
    # requests whose bodies are still arriving: in flight from their headers on
    held = []
    for _ in range(6):
        sock = socket.create_connection((host, int(port)), timeout=10)
        sock.sendall(
            b"POST /classify_pixels HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n{"
        )
        held.append(sock)
    try:
        assert wait_for(server.url, 6) == 6
        # probes, page loads and scrapes are not inference: they do not count
        for path in ("/readyz", "/livez", "/metrics", "/v1/metadata"):
            assert httpx.get(server.url + path, timeout=10).status_code == 200
        assert metric_value(server.url, METRIC, 'protocol="http"') == 6
        # one series per worker (a pid label), as a scaler sums them and a dashboard splits them
        http_series = {k: v for k, v in series(server.url).items() if 'protocol="http"' in k}
        assert len(http_series) == 2 and all("pid=" in k for k in http_series), http_series
    finally:
        for sock in held:
            sock.close()
    assert wait_for(server.url, 0) == 0  # clients that left are forgotten


def test_answered_requests_and_grpc_calls_leave_nothing_behind(server: Server) -> None:
    for _ in range(5):
        r = httpx.post(f"{server.url}/next_char", json={"text": "ROMEO", "k": 2}, timeout=30)
        assert r.status_code == 200
    with grpcclient.InferenceServerClient(server.grpc_target) as client:
        assert client.is_server_live()
        assert client.get_model_metadata("mnist-rnn").name == "mnist-rnn"
    assert wait_for(server.url, 0) == 0
    assert wait_for(server.url, 0, protocol="grpc") == 0
    assert any('protocol="grpc"' in k for k in series(server.url))


def test_the_keda_query_names_this_metric() -> None:
    """The ScaledObject's query asks for the series this service exports."""
    text = (Path(__file__).parents[1] / "deploy/k8s/overlays/keda/scaledobject.yaml").read_text()
    assert METRIC in text
