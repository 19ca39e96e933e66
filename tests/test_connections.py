"""The connection limits (service/http/connections.py) on a real uvicorn server and raw sockets.

Each limit is tested twice: on uvicorn's own httptools protocol, which shows the upstream
behaviour the guard exists for (when one of those tests fails, uvicorn changed and the guard
may go), and on `LimitedHttpToolsProtocol`. The server runs a tiny ASGI app in a thread of this
process, on a free 127.0.0.1 port, with small limits so that every case takes well under a
second; tests/test_socket_hostile.py runs the same families against `bentoml serve`.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import pytest
import uvicorn
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.http.connections import ConnectionLimits, LimitedHttpToolsProtocol

LIMITS = ConnectionLimits(
    max_header_bytes=4096,
    max_header_count=20,
    max_url_bytes=1024,
    header_timeout_s=0.5,
    keep_alive_s=0.8,
    max_connections=8,
    max_request_bytes=16 * 1024,
)
RELEASE = threading.Event()  # a request to /wait waits for it (busy connections)


async def echo_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers the headers it was given and the size of the body it read."""
    if scope["type"] != "http":
        return
    if scope["path"] == "/wait":
        while not RELEASE.is_set():
            await asyncio.sleep(0.02)
    size = 0
    more = True
    while more and scope["method"] == "POST":
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
    body = json.dumps({"headers": headers, "read": size, "path": scope["path"]}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


@contextmanager
def serve(protocol: type[Any]) -> Iterator[int]:
    """A uvicorn server with `protocol` on a free port (yields the port)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        echo_app, http=protocol, lifespan="off", log_level="critical", timeout_keep_alive=60
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield sock.getsockname()[1]
    finally:
        RELEASE.set()
        server.should_exit = True
        thread.join(10)
        RELEASE.clear()


class Limited(LimitedHttpToolsProtocol):
    limits = LIMITS


@pytest.fixture(scope="module")
def limited() -> Iterator[int]:
    with serve(Limited) as port:
        yield port


@pytest.fixture(scope="module")
def upstream() -> Iterator[int]:
    with serve(HttpToolsProtocol) as port:
        yield port


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def read_response(sock: socket.socket, timeout: float = 3.0) -> tuple[int | None, bytes, bool]:
    """(status, whole bytes read, closed by the server) within `timeout`."""
    sock.settimeout(timeout)
    data = b""
    closed = False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            closed = True
            break
        if not chunk:
            closed = True
            break
        data += chunk
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            length = next(
                (
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                None,
            )
            if length is not None and len(body) >= length and b"connection: close" not in head:
                break
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else None
    return status, data, closed


def body_of(data: bytes) -> Any:
    return json.loads(data.partition(b"\r\n\r\n")[2])


def is_open(sock: socket.socket, wait: float) -> bool:
    """True when the server has not closed `sock` within `wait` seconds."""
    sock.settimeout(wait)
    try:
        return sock.recv(1) != b""
    except TimeoutError:
        return True
    except ConnectionResetError:
        return False


GET = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"


def test_ordinary_requests_keep_alive_and_pipeline(limited: int) -> None:
    with connect(limited) as sock:
        for _ in range(3):
            sock.sendall(GET)
            status, _, closed = read_response(sock)
            assert status == 200 and not closed
        sock.sendall(GET + GET)  # pipelined: two answers, in order
        first = read_response(sock)[1]
        assert first.count(b"HTTP/1.1 200") >= 1


# --------------------------------------------------------------------------- header block


def endless_header(sock: socket.socket, total: int) -> None:
    sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: ")
    sent = 0
    try:
        while sent < total:
            sock.sendall(b"a" * 8192)
            sent += 8192
    except OSError:
        pass  # the server closed: what the limit does


def test_uvicorn_buffers_a_header_block_without_end(upstream: int) -> None:
    with connect(upstream) as sock:
        endless_header(sock, 256 * 1024)
        assert is_open(sock, 0.5)  # 256 KiB of one header line, and still reading


def test_a_header_block_over_the_limit_gets_431_and_is_closed(limited: int) -> None:
    with connect(limited) as sock:
        started = time.monotonic()
        endless_header(sock, 64 * 1024)
        status, data, closed = read_response(sock)
        assert status == 431 and closed and time.monotonic() - started < 1.5
        assert "RNNSERVE_MAX_HEADER_BYTES" in body_of(data)["error"]


def test_headers_just_under_the_limit_and_a_body_in_the_same_packet_are_served(
    limited: int,
) -> None:
    """The limit counts the header block, not the body that follows it in the same read."""
    filler = b"X-Fill: " + b"f" * (LIMITS.max_header_bytes - 200) + b"\r\n"
    body = b"b" * 12000
    request = b"POST / HTTP/1.1\r\nHost: t\r\n" + filler + b"Content-Length: %d\r\n\r\n" % len(body)
    with connect(limited) as sock:
        sock.sendall(request + body)
        status, data, _ = read_response(sock)
        assert status == 200 and body_of(data)["read"] == len(body)


def test_too_many_header_fields_get_431(upstream: int, limited: int) -> None:
    many = b"".join(b"X-%d: v\r\n" % i for i in range(LIMITS.max_header_count + 5))
    request = b"GET / HTTP/1.1\r\nHost: t\r\n" + many + b"\r\n"
    with connect(upstream) as sock:
        sock.sendall(request)
        assert read_response(sock)[0] == 200
    with connect(limited) as sock:
        sock.sendall(request)
        status, data, closed = read_response(sock)
        assert status == 431 and closed and "RNNSERVE_MAX_HEADER_COUNT" in body_of(data)["error"]


def test_a_request_target_over_the_limit_gets_414(upstream: int, limited: int) -> None:
    request = b"GET /" + b"p" * (LIMITS.max_url_bytes + 10) + b" HTTP/1.1\r\nHost: t\r\n\r\n"
    with connect(upstream) as sock:
        sock.sendall(request)
        assert read_response(sock)[0] == 200
    with connect(limited) as sock:
        sock.sendall(request)
        status, data, closed = read_response(sock)
        assert status == 414 and closed and "RNNSERVE_MAX_URL_BYTES" in body_of(data)["error"]


def test_a_malformed_request_gets_400_in_the_error_shape(limited: int) -> None:
    with connect(limited) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nContent-Length: 5x\r\n\r\n")
        status, data, closed = read_response(sock)
        assert status == 400 and closed and "malformed HTTP request" in body_of(data)["error"]


# --------------------------------------------------------------------------- time


def test_uvicorn_keeps_half_sent_and_silent_connections(upstream: int) -> None:
    with connect(upstream) as half, connect(upstream) as silent:
        half.sendall(b"GET / HTTP/1.1\r\nHost")
        assert is_open(half, 1.5) and is_open(silent, 0.1)


def test_headers_that_stall_get_408_and_the_connection_closed(limited: int) -> None:
    with connect(limited) as sock:
        started = time.monotonic()
        sock.sendall(b"GET / HTTP/1.1\r\nHost")
        status, data, closed = read_response(sock)
        elapsed = time.monotonic() - started
        assert status == 408 and closed and "RNNSERVE_HEADER_TIMEOUT_S" in body_of(data)["error"]
        assert LIMITS.header_timeout_s * 0.9 <= elapsed < LIMITS.header_timeout_s + 1.0


def test_a_trickled_header_block_is_timed_from_its_first_byte(limited: int) -> None:
    with connect(limited) as sock:
        started = time.monotonic()
        try:
            for byte in b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: abcdefghijklmnopqrstuvwxyz":
                sock.sendall(bytes([byte]))
                time.sleep(0.05)
        except OSError:
            pass
        status, _, closed = read_response(sock)
        assert status == 408 and closed
        assert time.monotonic() - started < LIMITS.header_timeout_s + 2.5


def test_idle_connections_are_closed_new_and_between_requests(limited: int) -> None:
    with connect(limited) as silent, connect(limited) as used:
        used.sendall(GET)
        assert read_response(used)[0] == 200
        time.sleep(LIMITS.keep_alive_s + 0.4)
        assert not is_open(silent, 0.3) and not is_open(used, 0.3)


# --------------------------------------------------------------------------- trailers

CHUNKED_WITH_TRAILER = (
    b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n0\r\nAuthorization: Bearer from-the-trailer\r\nContent-Type: text/evil\r\n\r\n"
)


def test_uvicorn_lets_trailer_fields_join_the_headers(upstream: int) -> None:
    with connect(upstream) as sock:
        sock.sendall(CHUNKED_WITH_TRAILER)
        status, data, _ = read_response(sock)
        assert status == 200
        assert body_of(data)["headers"]["authorization"] == "Bearer from-the-trailer"


def test_trailer_fields_never_become_headers(limited: int) -> None:
    with connect(limited) as sock:
        sock.sendall(CHUNKED_WITH_TRAILER)
        status, data, _ = read_response(sock)
        seen = body_of(data)
        assert status == 200 and seen["read"] == 3
        assert "authorization" not in seen["headers"] and "content-type" not in seen["headers"]


def test_a_request_too_large_on_the_wire_is_refused(limited: int) -> None:
    """A chunked body the application does not read fast enough cannot grow the connection's
    buffers past the wire bound (tiny chunks: mostly framing)."""
    with connect(limited) as sock:
        sock.sendall(b"POST /wait HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            for _ in range(LIMITS.max_wire_bytes // 6 + 100):
                sock.sendall(b"1\r\nx\r\n" * 64)
        except OSError:
            pass
        status, _, closed = read_response(sock)
        assert status == 413 and closed


# --------------------------------------------------------------------------- connection cap


def test_at_the_cap_the_longest_idle_connection_makes_room(limited: int) -> None:
    idle = [connect(limited) for _ in range(LIMITS.max_connections)]
    try:
        time.sleep(0.1)
        with connect(limited) as newcomer:
            newcomer.sendall(GET)
            assert read_response(newcomer)[0] == 200
        assert not is_open(idle[0], 0.5)  # the oldest went
        assert is_open(idle[-1], 0.05)
    finally:
        for sock in idle:
            sock.close()


def test_at_the_cap_with_every_connection_busy_a_new_one_gets_503(limited: int) -> None:
    RELEASE.clear()
    busy = [connect(limited) for _ in range(LIMITS.max_connections)]
    try:
        for sock in busy:
            sock.sendall(b"GET /wait HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(0.2)
        with connect(limited) as newcomer:
            status, data, closed = read_response(newcomer)
            assert status == 503 and closed and b"retry-after: 1" in data.lower()
        RELEASE.set()
        for sock in busy:  # the busy ones were not touched
            assert read_response(sock)[0] == 200
    finally:
        RELEASE.clear()
        for sock in busy:
            sock.close()


def test_the_cap_follows_the_file_limit() -> None:
    import resource

    from service.http.connections import FD_RESERVE, connection_cap

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert connection_cap(10) == 10
    assert connection_cap(10**9) == soft - FD_RESERVE
    assert replace(LIMITS, max_request_bytes=10).max_wire_bytes == 20 + LIMITS.max_header_bytes
    from service.settings import Settings

    lowered = Settings.from_env({"RNNSERVE_MAX_URL_BYTES": "99"})
    assert ConnectionLimits.from_settings(lowered).max_url_bytes == 99
