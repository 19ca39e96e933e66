"""Hostile traffic below the HTTP API: raw sockets against a running service, one family of
attack at a time, each bounded in count and time, 127.0.0.1 only.

    python -m loadtest.socket_hostile                      # starts its own server (1 worker)
    python -m loadtest.socket_hostile --workers 2 --token secret --idle 20000
    python -m loadtest.socket_hostile --url http://127.0.0.1:3000 --server-pid 1234 \
        --token secret --header-mb 100 --paths 5000

Families (the red team's findings, docs/configuration.md "Network limits"):
fetch (a URL in a file field is never fetched), headers (an endless header block: 431 within a
second), metrics (random paths leave the series count unchanged), stalled (bodies that never
come hold no budget and are answered 408), chunked (unfinished chunked bodies count against the
budget), idle (idle and half-sent connections: the service keeps answering, the worker's file
descriptors stay bounded), logs (no log line past the field limit), trailers (a trailer never
authenticates), numbers and media types (the smaller findings).

After every family: /readyz and an ordinary request must answer within `--fast-s`, and the
workers' memory and file descriptors are recorded before and after. A row fails when its
family's property does not hold. tests/test_socket_hostile.py runs every family with 1 and 2
workers and with auth on, at sizes that fit CI.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import resource
import socket
import string
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil

from loadtest.servers import ROOT, Server, start_server, worker_processes

ORDINARY_BODY = json.dumps({"text": "ROMEO: "}).encode()


@dataclass
class Target:
    host: str
    port: int
    token: str | None = None
    server_pid: int | None = None
    log: Callable[[], str] | None = None
    fast_s: float = 2.0
    body_timeout_s: float = 2.0  # the server's RNNSERVE_BODY_TIMEOUT_S
    header_timeout_s: float = 2.0
    keep_alive_s: float = 2.0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def auth(self) -> bytes:
        return b"Authorization: Bearer %s\r\n" % self.token.encode() if self.token else b""

    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"} if self.token else {}


@dataclass
class Row:
    family: str
    case: str
    ok: bool
    detail: str
    seconds: float
    rss_mb: tuple[float, float] = (0.0, 0.0)
    fds: tuple[int, int] = (0, 0)
    extra: dict[str, object] = field(default_factory=dict)


# --------------------------------------------------------------------------- raw sockets


def connect(target: Target, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection((target.host, target.port), timeout=timeout)


def read_answer(sock: socket.socket, timeout: float) -> tuple[int | None, bytes, bool]:
    """(status, bytes read, closed by the server) within `timeout` seconds."""
    sock.settimeout(0.2)
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            if b"\r\n\r\n" in data and _complete(data):
                break
            continue
        except OSError:
            return _status(data), data, True
        if not chunk:
            return _status(data), data, True
        data += chunk
    return _status(data), data, False


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    return False


def _status(data: bytes) -> int | None:
    parts = data.split(b" ", 2)
    return int(parts[1]) if data.startswith(b"HTTP/1.") and len(parts) > 1 else None


def send_quietly(sock: socket.socket, data: bytes) -> bool:
    try:
        sock.sendall(data)
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------- the workers


def workers(target: Target) -> list[psutil.Process]:
    return worker_processes(target.server_pid) if target.server_pid else []


def rss_mb(target: Target) -> float:
    total = 0.0
    for proc in workers(target):
        with suppress(psutil.Error):
            total += proc.memory_info().rss / 2**20
    return total


def fd_count(target: Target) -> int:
    total = 0
    for proc in workers(target):
        with suppress(psutil.Error):
            total += proc.num_fds()
    return total


def still_fast(target: Target) -> str | None:
    """None when /readyz and an ordinary request answer within the bound, else what failed."""
    with httpx.Client(base_url=target.url, timeout=target.fast_s + 5) as client:
        for method, path, body in (
            ("GET", "/readyz", None),
            ("POST", "/next_char", ORDINARY_BODY),
        ):
            started = time.monotonic()
            try:
                r = client.request(
                    method,
                    path,
                    content=body,
                    headers={**target.headers(), "content-type": "application/json"},
                )
            except httpx.HTTPError as exc:
                return f"{path}: {type(exc).__name__}"
            took = time.monotonic() - started
            if r.status_code != 200 or took > target.fast_s:
                return f"{path}: {r.status_code} in {took:.2f} s"
    return None


def measured(family: str, case: str, target: Target, run: Callable[[], tuple[bool, str]]) -> Row:
    """Run one case with the workers' memory and fds around it and the service's health
    after it."""
    rss0, fds0 = rss_mb(target), fd_count(target)
    started = time.monotonic()
    try:
        ok, detail = run()
    except Exception as exc:  # a case that breaks is a failed row, not a crashed run
        ok, detail = False, f"{type(exc).__name__}: {exc}"
    seconds = time.monotonic() - started
    health = still_fast(target)
    if health is not None:
        ok, detail = False, f"{detail}; afterwards {health}"
    return Row(family, case, ok, detail, seconds, (rss0, rss_mb(target)), (fds0, fd_count(target)))


# --------------------------------------------------------------------------- families


@contextmanager
def fetch_trap() -> Iterator[tuple[str, list[bytes]]]:
    """A listener on 127.0.0.1 that records any connection: a server-side fetch shows here."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.settimeout(0.1)
    seen: list[bytes] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(0.5)
                with suppress(OSError):
                    seen.append(conn.recv(1024))

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/", seen
    finally:
        stop.set()
        thread.join(5)
        sock.close()


def family_fetch(target: Target, parallel: int) -> list[Row]:
    """A file field holding a URL (to a trap, to the service itself), or other text: 400,
    nothing fetched, under `parallel` requests at once."""

    def run() -> tuple[bool, str]:
        with fetch_trap() as (trap, seen):
            values = [trap, f"{target.url}/metrics", f"{target.url}/ui/", "hello", ""]
            values += ["file:///etc/passwd", "http://169.254.169.254/latest/meta-data/"]

            async def one(client: httpx.AsyncClient, value: str) -> int:
                r = await client.post(
                    "/classify_image", files={"image": (None, value)}, headers=target.headers()
                )
                return r.status_code

            async def all_of() -> list[int]:
                async with httpx.AsyncClient(base_url=target.url, timeout=10) as client:
                    jobs = [one(client, values[i % len(values)]) for i in range(parallel)]
                    return await asyncio.gather(*jobs)

            statuses = asyncio.run(all_of())
            time.sleep(0.3)
            bad = [s for s in statuses if s != 400]
            ok = not bad and not seen
            return (
                ok,
                f"{len(statuses)} requests: {sorted(set(statuses))}; fetches seen {len(seen)}",
            )

    return [measured("fetch", f"URL in a file field x{parallel}", target, run)]


def family_headers(target: Target, megabytes: float, count: int) -> list[Row]:
    def endless() -> tuple[bool, str]:
        with connect(target) as sock:
            started = time.monotonic()
            send_quietly(sock, b"GET /readyz HTTP/1.1\r\nHost: t\r\nX-Flood: ")
            sent = 0
            chunk = b"a" * 65536
            while sent < megabytes * 2**20 and send_quietly(sock, chunk):
                sent += len(chunk)
            status, _, closed = read_answer(sock, 3.0)
            took = time.monotonic() - started
            ok = status == 431 and closed and took < 1.0 + megabytes / 100
            return ok, f"{status} after {sent / 2**20:.2f} MiB sent, {took:.2f} s, closed {closed}"

    def many() -> tuple[bool, str]:
        lines = b"".join(b"X-H%d: v\r\n" % i for i in range(count))
        with connect(target) as sock:
            sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: t\r\n" + lines + b"\r\n")
            status, _, closed = read_answer(sock, 3.0)
            return status == 431 and closed, f"{count} fields: {status}, closed {closed}"

    def long_target() -> tuple[bool, str]:
        with connect(target) as sock:
            path = b"/v2/models/" + b"m" * (64 * 1024) + b"/infer"
            send_quietly(sock, b"POST " + path + b" HTTP/1.1\r\nHost: t\r\n\r\n")
            status, _, closed = read_answer(sock, 3.0)
            return status == 414 and closed, f"64 KiB target: {status}, closed {closed}"

    return [
        measured("headers", f"endless header line, {megabytes:g} MiB", target, endless),
        measured("headers", f"{count} header fields", target, many),
        measured("headers", "64 KiB request target", target, long_target),
    ]


def metric_sum(target: Target, name: str, labels: str = "") -> float:
    """The sum of one metric's samples on /metrics (label sets containing `labels`)."""
    text = httpx.get(f"{target.url}/metrics", timeout=30).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")) and labels in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def series_count(target: Target) -> tuple[int, int]:
    text = httpx.get(f"{target.url}/metrics", timeout=30).text
    return sum(1 for line in text.splitlines() if line and not line.startswith("#")), len(text)


def family_metrics(target: Target, paths: int) -> list[Row]:
    def run() -> tuple[bool, str]:
        rng = random.Random(7)

        async def flood() -> None:
            async with httpx.AsyncClient(base_url=target.url, timeout=10) as client:
                for start in range(0, paths, 50):
                    jobs = []
                    for _ in range(min(50, paths - start)):
                        word = "".join(rng.choices(string.ascii_lowercase, k=12))
                        path = rng.choice([f"/{word}", f"/v2/models/{word}/infer", f"/ui/{word}"])
                        method = rng.choice(["GET", "POST", "BREW"])
                        jobs.append(client.request(method, path, headers=target.headers()))
                    await asyncio.gather(*jobs, return_exceptions=True)

        asyncio.run(flood())  # the first unmatched path may add its one label
        before, size_before = series_count(target)
        asyncio.run(flood())
        after, size_after = series_count(target)
        ok = after == before
        return (
            ok,
            f"{paths} random paths: series {before} -> {after}, "
            f"/metrics {size_before} -> {size_after} B",
        )

    return [measured("metrics", f"{paths} random paths", target, run)]


def family_stalled(target: Target, connections: int, declared: int) -> list[Row]:
    """Bodies declared large and never sent hold no budget: ordinary requests with bodies are
    served meanwhile, and each stalled one is answered 408 and closed."""

    def run() -> tuple[bool, str]:
        socks = []
        for _ in range(connections):
            sock = connect(target)
            sock.sendall(
                b"POST /next_char HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                + target.auth()
                + b"Content-Length: %d\r\n\r\n{" % declared
            )
            socks.append(sock)
        try:
            time.sleep(0.3)
            meanwhile = still_fast(target)
            answers = [read_answer(s, target.body_timeout_s + 10) for s in socks]
        finally:
            for sock in socks:
                sock.close()
        statuses = sorted({a[0] or 0 for a in answers})
        closed = all(a[2] for a in answers)
        ok = meanwhile is None and statuses == [408] and closed
        return (
            ok,
            f"{connections} stalled: {statuses}, all closed {closed}; "
            f"meanwhile {meanwhile or 'fast'}",
        )

    return [measured("stalled", f"{connections} x {declared} B declared, 1 sent", target, run)]


def family_chunked(target: Target, connections: int, chunk_mb: float) -> list[Row]:
    """Unfinished chunked bodies count against the budget as they arrive: the worker's memory
    grows by no more than the budget, and every one ends (503 once the budget is full, 408 when
    it stalls)."""

    def run() -> tuple[bool, str]:
        socks = []
        piece = b"a" * int(chunk_mb * 2**20)
        frame = b"%x\r\n" % len(piece) + piece + b"\r\n"
        refused_at_once = 0
        for _ in range(connections):
            sock = connect(target)
            head = (
                b"POST /next_char HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                + target.auth()
                + b"Transfer-Encoding: chunked\r\n\r\n"
            )
            if not send_quietly(sock, head + frame):
                refused_at_once += 1
            socks.append(sock)
        try:
            time.sleep(0.3)
            held = metric_sum(target, "rnnserve_body_bytes_held")
            ready = still_fast(target)  # readiness does not follow the budget (documented)
            answers = [read_answer(s, target.body_timeout_s + 15) for s in socks]
        finally:
            for sock in socks:
                sock.close()
        statuses = sorted({a[0] or 0 for a in answers})  # 0: closed before an answer was read
        ok = set(statuses) <= {0, 408, 413, 503} and all(a[2] for a in answers) and ready is None
        return ok, (
            f"{connections} unfinished: {statuses}, all closed; while held "
            f"({held / 2**20:.1f} MiB): {ready or 'ready and fast'}"
        )

    return [
        measured("chunked", f"{connections} x {chunk_mb:g} MiB chunked, unfinished", target, run)
    ]


def raise_own_file_limit() -> int:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def family_idle(target: Target, count: int) -> list[Row]:
    """`count` idle sockets and half-sent request lines: the service keeps answering while they
    are open, its file descriptors stay bounded, and they are closed within the timeouts."""

    def run() -> tuple[bool, str]:
        limit = raise_own_file_limit()
        wanted = min(count, limit - 200)
        socks: list[socket.socket] = []
        failed = 0
        peak_fds = 0
        try:
            for i in range(wanted):
                try:
                    sock = socket.socket()
                    sock.setblocking(False)
                    with suppress(BlockingIOError):
                        sock.connect((target.host, target.port))
                    socks.append(sock)
                except OSError:
                    failed += 1
                    continue
                if i % 3 == 0:
                    with suppress(OSError):
                        sock.send(b"GET /readyz HTT")  # half a request line
                if i % 2000 == 1999:
                    peak_fds = max(peak_fds, fd_count(target))
            time.sleep(0.5)
            peak_fds = max(peak_fds, fd_count(target))
            during = still_fast(target)
        finally:
            for sock in socks:
                sock.close()
        ok = during is None
        return ok, (
            f"{len(socks)} sockets opened ({failed} failed); service {during or 'fast'} while "
            f"open; worker fds peak {peak_fds}"
        )

    def drained() -> tuple[bool, str]:
        before = fd_count(target)
        socks = [connect(target) for _ in range(50)]
        for i, sock in enumerate(socks):
            if i % 2:
                sock.sendall(b"GET /readyz HTTP/1.1\r\nHo")
        wait = max(target.header_timeout_s, target.keep_alive_s) + 1.5
        closed = sum(1 for s in socks if read_answer(s, wait)[2])
        for sock in socks:
            sock.close()
        return closed == len(
            socks
        ), f"{closed} of 50 idle/half-sent closed by the server within {wait:.1f} s (fds {before})"

    return [
        measured("idle", f"{count} idle and half-sent sockets", target, run),
        measured("idle", "50 idle or half-sent sockets time out", target, drained),
    ]


def family_logs(
    target: Target, log_limit: int, refusals: int, per_second: int, workers: int
) -> list[Row]:
    """Long values reach the log cut: a content type and a path just under the header and
    target limits, and control characters."""

    def run() -> tuple[bool, str]:
        if target.log is None:
            return True, "no server log to read (skipped)"
        with httpx.Client(base_url=target.url, timeout=10) as client:
            client.post(
                "/next_char",
                content=ORDINARY_BODY,
                headers={**target.headers(), "content-type": "x/" + "y" * 30000},
            )
            client.get("/v2/models/" + "m" * 7000 + "/ready", headers=target.headers())
            client.post(
                "/next_char", content=b"{", headers={**target.headers(), "x-evil": "a\x1bb"}
            )
        time.sleep(0.5)
        longest = max((len(line) for line in target.log().splitlines()), default=0)
        ok = longest <= 4 * log_limit + 400
        return ok, f"longest log line {longest} characters (field limit {log_limit})"

    def flood() -> tuple[bool, str]:
        if target.log is None:
            return True, "no server log to read (skipped)"
        marker = "client error on /next_char"
        lines_before = target.log().count(marker)
        counted_before = metric_sum(target, "rnnserve_refusals_total", 'status="400"')
        started = time.monotonic()

        async def refused() -> None:
            async with httpx.AsyncClient(base_url=target.url, timeout=10) as client:
                jobs = [
                    client.post("/next_char", content=b"{", headers=target.headers())
                    for _ in range(refusals)
                ]
                await asyncio.gather(*jobs)

        asyncio.run(refused())
        seconds = time.monotonic() - started
        time.sleep(0.5)
        lines = target.log().count(marker) - lines_before
        counted = metric_sum(target, "rnnserve_refusals_total", 'status="400"') - counted_before
        allowed = per_second * (seconds + 2) * workers
        ok = lines <= allowed and counted >= refusals
        return ok, (
            f"{refusals} refusals in {seconds:.1f} s: {lines} log lines (at most {allowed:.0f}), "
            f"{counted:.0f} counted"
        )

    return [
        measured("logs", "30 KB content type, 7 KB path", target, run),
        measured("logs", f"{refusals} refusals at once", target, flood),
    ]


def family_trailers(target: Target) -> list[Row]:
    def run() -> tuple[bool, str]:
        if not target.token:
            return True, "auth off: nothing to bypass (skipped)"
        body = b'{"text": "ROMEO: "}'
        request = (
            b"POST /next_char HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n" % len(body)
            + body
            + b"\r\n0\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\n\r\n"
            % target.token.encode()
        )
        with connect(target) as sock:
            sock.sendall(request)
            status, _, _ = read_answer(sock, 5.0)
        return status == 401, f"token in the trailer only: {status}"

    return [measured("trailers", "Authorization in a trailer", target, run)]


def family_small(target: Target) -> list[Row]:
    def run() -> tuple[bool, str]:
        problems = []
        auth = target.headers()
        with httpx.Client(base_url=target.url, timeout=10) as client:
            r = client.post(
                "/v2/models/mnist-rnn/infer",
                content=b'{"inputs": []}',
                headers=[
                    (b"inference-header-content-length", b"\xb2"),
                    *[(k.encode(), v.encode()) for k, v in auth.items()],
                ],
            )
            if r.status_code != 400:
                problems.append(f"header length 0xB2: {r.status_code}")
            for path, body in (
                ("/next_char", ORDINARY_BODY),
                ("/v1/generate/stream", b'{"prompt": "A", "length": 2}'),
            ):
                r = client.post(
                    path, content=body, headers={**auth, "content-type": "APPLICATION/JSON"}
                )
                if r.status_code != 200:
                    problems.append(f"{path} APPLICATION/JSON: {r.status_code}")
                r = client.post(path, content=body, headers={**auth, "content-type": "text/plain"})
                if r.status_code != 415:
                    problems.append(f"{path} text/plain: {r.status_code}")
            r = client.post(
                "/generate", json={"prompt": "A", "length": 2, "max_tokens": 3}, headers=auth
            )
            if r.status_code != 400:
                problems.append(f"/generate max_tokens: {r.status_code}")
        with connect(target) as sock:
            sock.sendall(
                b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            status, _, _ = read_answer(sock, 3.0)
            if status == 101:
                problems.append("WebSocket upgrade accepted")
        return not problems, "; ".join(problems) or "all as documented"

    return [measured("small", "numbers, media types, fields, WebSocket", target, run)]


def run_all(target: Target, args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    rows += family_fetch(target, args.parallel)
    rows += family_headers(target, args.header_mb, args.header_count)
    rows += family_metrics(target, args.paths)
    rows += family_stalled(target, args.stalled, args.declared)
    rows += family_chunked(target, args.chunked, args.chunk_mb)
    rows += family_idle(target, args.idle)
    rows += family_logs(target, args.log_limit, args.refusals, args.refusal_log_per_s, args.workers)
    rows += family_trailers(target)
    rows += family_small(target)
    return rows


def table(rows: list[Row]) -> str:
    lines = [
        "| family | case | ok | seconds | worker MB before/after | fds before/after | detail |"
    ]
    lines.append("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        lines.append(
            f"| {r.family} | {r.case} | {'yes' if r.ok else 'NO'} | {r.seconds:.2f} | "
            f"{r.rss_mb[0]:.0f} / {r.rss_mb[1]:.0f} | {r.fds[0]} / {r.fds[1]} | {r.detail} |"
        )
    return "\n".join(lines)


def start_hostile_server(
    scratch: Path, workers: int, token: str | None, model_dir: str | None = None
) -> Server:
    """A server with short body, header and idle timeouts (2 s), so that a run takes seconds."""
    return start_server(
        scratch,
        workers=str(workers),
        api_tokens=token or "",  # empty: auth off
        body_timeout_s="2",
        header_timeout_s="2",
        keep_alive_s="2",
        model_dir=model_dir or str(ROOT / "models"),
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--url", help="a running service (default: start one)")
    p.add_argument("--server-pid", type=int, help="its arbiter's pid (memory and fds)")
    p.add_argument("--token", help="a bearer token (starts the server with it)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--parallel", type=int, default=96, help="fetch: requests at once (96)")
    p.add_argument("--header-mb", type=float, default=8.0, help="endless header MiB (8)")
    p.add_argument("--header-count", type=int, default=500, help="header fields (500)")
    p.add_argument("--paths", type=int, default=2000, help="random paths (2000)")
    p.add_argument("--stalled", type=int, default=48, help="stalled bodies (48)")
    p.add_argument("--declared", type=int, default=4 * 2**20, help="their declared size (4 MiB)")
    p.add_argument("--chunked", type=int, default=40, help="unfinished chunked bodies (40)")
    p.add_argument("--chunk-mb", type=float, default=3.5, help="MiB each sends (3.5)")
    p.add_argument("--idle", type=int, default=5000, help="idle sockets (5000)")
    p.add_argument("--log-limit", type=int, default=512, help="the server's field limit (512)")
    p.add_argument("--refusals", type=int, default=300, help="refusals sent at once (300)")
    p.add_argument(
        "--refusal-log-per-s", type=int, default=10, help="the server's refusal log rate (10)"
    )
    p.add_argument(
        "--timeouts-s", type=float, default=2.0, help="the server's body/header/idle timeouts"
    )
    p.add_argument("--fast-s", type=float, default=2.0, help="/readyz and a request within (2 s)")
    p.add_argument("--out", type=Path, help="append the table to this markdown results file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    server = None
    if args.url:
        parts = urlsplit(args.url)
        assert parts.hostname in ("127.0.0.1", "localhost", "::1"), "127.0.0.1 only"
        target = Target(
            parts.hostname or "127.0.0.1", parts.port or 80, args.token, args.server_pid
        )
    else:
        server = start_hostile_server(
            Path(tempfile.mkdtemp(prefix="socket-hostile-")), args.workers, args.token
        )
        port = int(server.url.rsplit(":", 1)[1])
        target = Target("127.0.0.1", port, args.token, server.process.pid, server.log)
    target.fast_s = args.fast_s
    target.body_timeout_s = target.header_timeout_s = target.keep_alive_s = args.timeouts_s
    try:
        rows = run_all(target, args)
    finally:
        if server is not None:
            server.stop()
    print(table(rows))
    if args.out:
        report(args.out, rows, argv if argv is not None else sys.argv[1:], args)
    return 0 if all(r.ok for r in rows) else 1


def report(path: Path, rows: list[Row], argv: list[str], args: argparse.Namespace) -> None:
    """Append one run to a results file, with its command, date and machine."""
    command = " ".join(["python -m loadtest.socket_hostile", *argv])
    auth = "auth on" if args.token else "auth off"
    lines = [
        f"## {args.workers} worker(s), {auth}",
        "",
        f"Command: `{command}`  ",
        f"Date: {time.strftime('%Y-%m-%d')}  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, client and server on the same machine",
        "",
        table(rows),
        "",
    ]
    new = not path.exists()
    with path.open("a") as out:
        if new:
            out.write(
                "# Socket-level hostile traffic\n\n" + (__doc__ or "").split("\n\n")[0] + "\n\n"
            )
        out.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
