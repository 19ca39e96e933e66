"""Connection-level limits: what a client can make a worker hold before any ASGI code runs.

uvicorn's httptools protocol (what BentoML's workers run) bounds none of this: a header block
may grow without end (httptools buffers a header line until its CRLF), a request line too, a
connection may send half a request and wait forever, trailer fields of a chunked body are
appended to the request's headers while the application may already be reading them, and every
accepted connection is kept until the client leaves (until the worker runs out of file
descriptors). `LimitedHttpToolsProtocol` is uvicorn's protocol with those bounds:

- header block over `max_header_bytes` (trailers included) or over `max_header_count` fields:
  431; request target over `max_url_bytes`: 414; all three before the application is called,
  with the connection closed (the parser cannot resync after a cut);
- `header_timeout_s` from a request's first byte to the end of its headers: 408, closed;
- `keep_alive_s` idle, on a new connection as between requests: closed (uvicorn arms its
  keep-alive timer only after a response);
- trailer fields are dropped: every decision (auth, content type, body limits) reads the
  header block only;
- the bytes of one request on the wire are bounded (its body limit twice, for chunk framing,
  plus the header limit): 413, closed;
- at most `max_connections` open connections per worker: beyond, the connection that has waited
  longest without a request in progress is closed to make room (probes and real clients get
  in while a flood of idle sockets is turned over), or, when every connection is busy, the new
  one is answered 503 and closed;
- malformed requests are answered 400 in the service's error shape, and the refusals are logged
  through the rate-limited refusal log (uvicorn logs a warning for each).

`install_connection_limits` puts the protocol in uvicorn's table under "auto" and "httptools"
when the service module is imported, which happens in each worker before BentoML builds its
`uvicorn.Config`. tests/test_connections.py reproduces each upstream behaviour on uvicorn's own
protocol, so that the guard can go when uvicorn bounds them itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
from asyncio import TimerHandle
from collections import OrderedDict
from dataclasses import dataclass, fields
from typing import Any, ClassVar
from weakref import WeakKeyDictionary

import httptools
from uvicorn.config import HTTP_PROTOCOLS, Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from service.errors import error_body
from service.log_bounds import refusal_log
from service.metrics import CONNECTIONS_CLOSED, CONNECTIONS_OPEN
from service.settings import Settings

logger = logging.getLogger("rnnserve")
# File descriptors a worker keeps for itself (models, metrics files, logs, pipes) when its
# connection cap is derived from the process's file limit.
FD_RESERVE = 128


@dataclass(frozen=True)
class ConnectionLimits:
    """The bounds one worker applies to every connection (each an RNNSERVE_* setting, whose
    defaults live in service/settings.py only)."""

    max_header_bytes: int
    max_header_count: int
    max_url_bytes: int
    header_timeout_s: float
    keep_alive_s: float
    max_connections: int
    max_request_bytes: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})

    @property
    def max_wire_bytes(self) -> int:
        """Bytes one request may take on the wire after its headers: its body twice over (chunk
        framing, trailers) plus a header block's worth."""
        return 2 * self.max_request_bytes + self.max_header_bytes


class _LimitError(Exception):
    """Raised from a parser callback to stop parsing a request that broke a limit."""


class ConnectionPool:
    """The connections of one server that could be closed without losing a request: open,
    with no request in progress (new, between requests, or still sending headers), oldest
    first."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.evictable: OrderedDict[LimitedHttpToolsProtocol, None] = OrderedDict()

    def waiting(self, connection: LimitedHttpToolsProtocol) -> None:
        self.evictable[connection] = None
        self.evictable.move_to_end(connection)

    def busy(self, connection: LimitedHttpToolsProtocol) -> None:
        self.evictable.pop(connection, None)

    def evict_one(self, keep: LimitedHttpToolsProtocol) -> bool:
        """Close the connection that has waited longest (never `keep`); False when none can
        go."""
        while self.evictable:
            victim, _ = self.evictable.popitem(last=False)
            if victim is keep or victim.transport is None or victim.transport.is_closing():
                continue
            victim.close_as("evicted")
            return True
        return False


_POOLS: WeakKeyDictionary[ServerState, ConnectionPool] = WeakKeyDictionary()


def connection_cap(wanted: int) -> int:
    """`wanted`, or fewer when the process may not open that many files (less a reserve): a
    cap above the file limit would let accept() fail instead of the cap refusing."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft - FD_RESERVE))


def raise_file_limit() -> None:
    """Lift the soft limit on open files to the hard one (as servers do): the connection cap
    is then what bounds a worker's sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        # some sandboxes refuse: the cap then follows the soft limit
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _pool_for(state: ServerState, limits: ConnectionLimits) -> ConnectionPool:
    pool = _POOLS.get(state)
    if pool is None:
        pool = _POOLS[state] = ConnectionPool(connection_cap(limits.max_connections))
    return pool


def raw_response(status: int, message: str, extra: bytes = b"") -> bytes:
    """A whole HTTP/1.1 response in the service's error shape that closes the connection."""
    body = error_body(message)
    return b"".join(
        [
            STATUS_LINE[status],
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n",
            extra,
            b"\r\n",
            body,
        ]
    )


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of this module's docstring (`limits`: set
    by `install_connection_limits`, or in a subclass)."""

    limits: ClassVar[ConnectionLimits] = ConnectionLimits.from_settings(Settings.from_env({}))

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.timeout_keep_alive = self.limits.keep_alive_s  # type: ignore[assignment]
        self.pool = _pool_for(server_state, self.limits)
        self.header_bytes: int | None = 0  # of the header block being read; None in a body
        self.wire_bytes = 0  # of the current request after its headers
        self.header_count = 0
        self.headers_done = False
        self.refusal: tuple[int, str, str] | None = None
        self.header_timer: TimerHandle | None = None
        self.closed_by_us = False

    # ------------------------------------------------------------------ connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        CONNECTIONS_OPEN.inc()
        if len(self.connections) > self.pool.cap and not self.pool.evict_one(keep=self):
            self.closed_by_us = True
            CONNECTIONS_CLOSED.labels(reason="full").inc()
            refusal_log().refused(
                logger, 503, "connection refused: %d connections open, none idle", self.pool.cap
            )
            message = "too many open connections; retry shortly"
            transport.write(raw_response(503, message, b"retry-after: 1\r\n"))
            transport.close()
            return
        self.pool.waiting(self)
        self.timeout_keep_alive_task = self.loop.call_later(
            self.limits.keep_alive_s, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        CONNECTIONS_OPEN.dec()
        self.pool.busy(self)
        self._cancel_header_timer()
        super().connection_lost(exc)

    def timeout_keep_alive_handler(self) -> None:
        if not self.transport.is_closing():
            self.close_as("idle")

    def close_as(self, reason: str) -> None:
        """Close this connection on the server's own initiative, counted by reason."""
        if self.closed_by_us:
            return
        self.closed_by_us = True
        CONNECTIONS_CLOSED.labels(reason=reason).inc()
        self._cancel_header_timer()
        self.transport.close()

    # ------------------------------------------------------------------ bytes in

    def data_received(self, data: bytes) -> None:
        if self.closed_by_us:
            return
        if self.header_bytes is not None:  # waiting for, or reading, a header block
            if self.header_timer is None:
                self.header_timer = self.loop.call_later(
                    self.limits.header_timeout_s, self._header_timeout
                )
            room = self.limits.max_header_bytes - self.header_bytes
            if len(data) > room:
                self._feed(data[:room])
                if self.closed_by_us:
                    return
                if self.header_bytes is not None:  # the headers did not end in time
                    self._refuse(
                        431,
                        "headers_too_large",
                        f"request headers over the limit of {self.limits.max_header_bytes} "
                        "bytes (RNNSERVE_MAX_HEADER_BYTES)",
                    )
                    return
                self.data_received(data[room:])
                return
            self.header_bytes += len(data)
        else:
            self.wire_bytes += len(data)
            if self.wire_bytes > self.limits.max_wire_bytes:
                self._refuse(
                    413,
                    "request_too_large",
                    f"request over {self.limits.max_wire_bytes} bytes on the wire "
                    "(RNNSERVE_MAX_REQUEST_BYTES, with chunk framing and trailers)",
                )
                return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        """uvicorn's data_received, with our refusals and a 400 in the error shape."""
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # no WebSocket routes: the request goes on as plain HTTP (see _should_upgrade)
        except httptools.HttpParserError as exc:
            if self.refusal is not None:
                self._refuse(*self.refusal)
            else:
                self._refuse(400, "malformed", f"malformed HTTP request: {exc}")

    def _header_timeout(self) -> None:
        self.header_timer = None
        if self.header_bytes is None or self.closed_by_us:
            return
        if self.cycle is not None and not self.cycle.response_complete:  # pipelined: wait
            self.header_timer = self.loop.call_later(
                self.limits.header_timeout_s, self._header_timeout
            )
            return
        self._refuse(
            408,
            "header_timeout",
            f"request headers not received within {self.limits.header_timeout_s:g} s "
            "(RNNSERVE_HEADER_TIMEOUT_S)",
        )

    def _cancel_header_timer(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _refuse(self, status: int, reason: str, message: str) -> None:
        """Answer `status` when nothing else can answer on this connection, then close it."""
        if self.closed_by_us:
            return
        cycle = self.cycle
        if self.header_bytes is None:  # in this request's body: `cycle` is this request's
            answer = cycle is not None and not cycle.response_started
            if answer:  # its application will never answer: its next read says the client
                cycle.disconnected = True  # left, and nothing it sends goes out
                cycle.message_event.set()
        else:  # in a header block: no cycle is this request's yet (one may be pipelined)
            answer = cycle is None or cycle.response_complete
        if answer:
            self.transport.write(raw_response(status, message))
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "-"
        refusal_log().refused(
            logger, status, "%s: %d %s (connection closed)", client, status, message
        )
        self.close_as(reason)

    # ------------------------------------------------------------------ parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.header_count = 0
        self.headers_done = False
        self.refusal = None

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.limits.max_url_bytes:
            self._stop(
                414,
                "url_too_long",
                f"request target over {self.limits.max_url_bytes} bytes (RNNSERVE_MAX_URL_BYTES)",
            )

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.headers_done:
            return  # a trailer field: never one of the request's headers
        self.header_count += 1
        if self.header_count > self.limits.max_header_count:
            self._stop(
                431,
                "too_many_headers",
                f"more than {self.limits.max_header_count} header fields "
                "(RNNSERVE_MAX_HEADER_COUNT)",
            )
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self.headers_done = True
        self.header_bytes = None
        self.wire_bytes = 0
        self._cancel_header_timer()
        self.pool.busy(self)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.header_bytes = 0

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self.pipeline:
            self.pool.waiting(self)

    def _stop(self, status: int, reason: str, message: str) -> None:
        self.refusal = (status, reason, message)
        raise _LimitError(message)

    def _should_upgrade_to_ws(self) -> bool:
        return False  # the service has no WebSocket routes

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, "malformed", msg)


def install_connection_limits(limits: ConnectionLimits) -> None:
    """Make uvicorn build `LimitedHttpToolsProtocol` for its default ("auto") and httptools
    protocols with these limits (idempotent); call before the server builds its Config."""
    LimitedHttpToolsProtocol.limits = limits
    raise_file_limit()
    target = f"{__name__}:{LimitedHttpToolsProtocol.__name__}"
    for name in ("auto", "httptools"):
        _REPLACED.setdefault(name, HTTP_PROTOCOLS[name])
        HTTP_PROTOCOLS[name] = target


_REPLACED: dict[str, str] = {}  # what install_connection_limits took out (for the tests)
