"""ASGI middleware: one JSON shape for every error response, bearer-token auth, request-body
limits (413 for one body, 503 when the worker holds too many) and whole response bodies.

BentoML answers errors in several shapes (a JSON object, a JSON array holding one, plain text
from Starlette for 404/405). Clients should parse one: `{"error": str, "detail": any}`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, ClassVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.engine.validation import parse_count
from service.errors import ClientGone, error_body
from service.http.asgi import replay_body, send_error
from service.http.auth import ADMIN_PREFIX, MISSING_TOKEN, BearerTokens, admin_refusal
from service.http.bentoml_compat import unwrap_error_array
from service.metrics import BODIES_REFUSED, BODY_BYTES_HELD

# (route path, field, pydantic error type, pydantic message) -> our sentence for a bound that
# follows a setting, or None (service/http/schemas.py's describe_limit)
DescribeLimit = Callable[[str, str, str, str], "str | None"]


def _describe_validation(
    errors: list[dict[str, Any]], path: str = "", describe_limit: DescribeLimit | None = None
) -> str:
    """pydantic's error list -> one readable sentence per problem; a bound that follows a
    setting is said as the engine says it, naming the setting."""
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body",))
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden":
            msg = "unknown field (not an input of this route)"
        limit = describe_limit(path, loc, str(err.get("type")), msg) if describe_limit else None
        parts.append(limit or (f"{loc}: {msg}" if loc else msg))
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "invalid input: " + "; ".join(parts) + more


def normalize_error(
    status: int, body: bytes, path: str = "", describe_limit: DescribeLimit | None = None
) -> bytes:
    """Rewrite any error body into {"error": str, "detail": ...}."""
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "error"
    try:
        data: Any = json.loads(body) if body else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        text = body.decode("utf-8", "replace").strip()
        return error_body(text or phrase)
    data = unwrap_error_array(data)
    if isinstance(data, dict) and "error" in data:
        detail = data.get("detail")
        message = str(data["error"])
        if (
            isinstance(detail, list)
            and detail
            and isinstance(detail[0], dict)
            and "msg" in detail[0]
        ):
            message = _describe_validation(detail, path, describe_limit)
        return error_body(message, detail)
    if isinstance(data, dict) and "detail" in data:  # Starlette HTTPException
        return error_body(str(data["detail"]), None)
    return error_body(phrase, data)


def v2_error(status: int, body: bytes) -> bytes:
    """Any error body as the Open Inference Protocol's `{"error": str}`."""
    data = json.loads(normalize_error(status, body))
    return json.dumps({"error": data["error"]}).encode()


class ErrorShapeMiddleware:
    """Buffers error responses (status >= 400) and rewrites their body into the one shape:
    `{"error", "detail"}`, or `{"error"}` under `v2_prefix` (the protocol's own shape), so that
    Starlette's plain-text 404/405 pages never reach a client."""

    def __init__(
        self, app: ASGIApp, v2_prefix: str, describe_limit: DescribeLimit | None = None
    ) -> None:
        self.app = app
        self.v2_prefix = v2_prefix
        self.describe_limit = describe_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        v2 = path.startswith(self.v2_prefix)
        start: Message | None = None
        chunks: list[bytes] = []

        async def send_wrapper(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start" and message["status"] >= 400:
                start = message
                return
            if start is not None and message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if message.get("more_body"):
                    return
                raw = b"".join(chunks)
                status = start["status"]
                if v2:
                    body = v2_error(status, raw)
                else:
                    body = normalize_error(status, raw, path, self.describe_limit)
                headers = [
                    (k, v)
                    for k, v in start.get("headers", [])
                    if k.lower() not in (b"content-length", b"content-type")
                ]
                headers += [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ]
                await send({**start, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        await self.app(scope, receive, send_wrapper)


class HealthBodyMiddleware:
    """BentoML's probes answer 200 with an empty line; ours say what they found, as the V2
    health routes do: `{"live": true}` on /livez and /healthz, `{"ready": true}` on /readyz
    (BentoML still decides the status; a 503 is shaped by ErrorShapeMiddleware)."""

    BODIES: ClassVar[dict[str, bytes]] = {
        "/livez": b'{"live": true}',
        "/healthz": b'{"live": true}',
        "/readyz": b'{"ready": true}',
    }

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = self.BODIES.get(scope.get("path", "")) if scope["type"] == "http" else None
        if body is None:
            await self.app(scope, receive, send)
            return
        ok = False

        async def send_wrapper(message: Message) -> None:
            nonlocal ok
            if message["type"] == "http.response.start":
                ok = message["status"] == 200
                if ok:
                    headers = [
                        (k, v)
                        for k, v in message.get("headers", [])
                        if k.lower() not in (b"content-length", b"content-type")
                    ]
                    length = b"0" if scope.get("method") == "HEAD" else str(len(body)).encode()
                    headers += [(b"content-type", b"application/json"), (b"content-length", length)]
                    message = {**message, "headers": headers}
            elif message["type"] == "http.response.body" and ok:
                if message.get("more_body"):
                    return  # BentoML's own body (an empty line) is replaced by ours
                message = {"type": "http.response.body", "body": body}
            await send(message)

        await self.app(scope, receive, send_wrapper)


class BearerAuthMiddleware:
    """Optional bearer-token authentication (off when no tokens are configured), by the rule
    of service/http/auth.py. The token is read from the header block only (the server drops
    trailer fields). WebSocket scopes are authenticated like requests (none is served today;
    a future route starts closed). The demo page's static files (`/ui/*`) are exempt by
    default: they hold no data, the page sends the token.
    """

    def __init__(
        self,
        app: ASGIApp,
        tokens: tuple[str, ...],
        exempt: tuple[str, ...],
        admin_tokens: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.check = BearerTokens(tokens, exempt)
        self.admin = BearerTokens(admin_tokens, ())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and (
            path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/")
        ):
            offered = [v for k, v in scope.get("headers", ()) if k == b"authorization"]
            client = scope.get("client")
            refusal = admin_refusal(
                self.admin, self.check.enabled, offered, client[0] if client else None
            )
            if refusal is None:
                await self.app(scope, receive, send)
                return
            status, reason = refusal
            body = error_body(reason)
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ]
            if status == 401:
                headers.append((b"www-authenticate", b'Bearer realm="rnnserve-admin"'))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        if scope["type"] not in ("http", "websocket") or self.check.open_path(path):
            await self.app(scope, receive, send)
            return
        offered = [v for k, v in scope.get("headers", ()) if k == b"authorization"]
        if not self.check.authorized(offered):
            if scope["type"] == "websocket":  # refused before the handshake: the server's 403
                await send({"type": "websocket.close", "code": 1008})
                return
            body = error_body(MISSING_TOKEN)
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"www-authenticate", b'Bearer realm="rnnserve"'),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """One budget for every request body, counted as the bytes arrive, before the application
    sees any of them.

    One body: a declared Content-Length over `max_bytes` is refused at once (413), and so is a
    body (declared or chunked) whose bytes pass it while they arrive. All bodies together: the
    bytes a worker holds for requests in progress may not pass `max_buffered`: a request
    declaring more than is left is refused before its body is read (503 + Retry-After), and a
    body whose next bytes would pass the budget is refused then. Time: a body may pause for at
    most `timeout_s`, and once it has taken longer than that it must have come at `min_rate`
    bytes/s on average; a body that stalls or trickles is answered 408 and gives its bytes
    back. Every refusal of a body not read to its end closes the connection (the rest of it
    would only be read to be thrown away). The application gets the whole body in one message.

    Readiness does not follow the budget: a budget held by a few slow clients would otherwise
    take the worker out of every load balancer, an outage of all replicas bought with a few
    connections; the budget frees itself within the body timeout, and
    `rnnserve_body_bytes_held` shows it to operators.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        max_buffered: int,
        timeout_s: float,
        min_rate: int,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_buffered = max_buffered
        self.timeout_s = timeout_s
        self.min_rate = min_rate
        self.held = 0  # bytes held by requests in progress (one event loop: no lock)

    def _too_large(self) -> str:
        return f"request body over the limit of {self.max_bytes} bytes (RNNSERVE_MAX_REQUEST_BYTES)"

    def _too_slow(self, received: int, elapsed: float) -> str:
        return (
            f"request body too slow: {received} bytes in {elapsed:.1f} s (a pause of at most "
            f"RNNSERVE_BODY_TIMEOUT_S={self.timeout_s:g} s, and past that at least "
            f"RNNSERVE_MIN_BODY_RATE={self.min_rate} bytes/s)"
        )

    def _over_budget(self) -> str:
        return (
            f"the server holds too many request bodies ({self.held} bytes; limit "
            f"RNNSERVE_MAX_BUFFERED_BYTES={self.max_buffered}); retry shortly"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared: bytes | None = None
        chunked = False
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                declared = value
            elif name == b"transfer-encoding":
                chunked = True
        if declared is None and not chunked:
            await self.app(scope, receive, send)  # no body (uvicorn refuses one without either)
            return
        if declared is not None:
            length = parse_count(declared)
            if length is None:
                await self._refuse(send, 400, "invalid", "invalid Content-Length header")
                return
            if length > self.max_bytes:
                await self._refuse(send, 413, "too_large", self._too_large())
                return
            if length == 0:
                await self.app(scope, receive, send)
                return
            if self.held + length > self.max_buffered:
                await self._refuse(send, 503, "budget", self._over_budget())
                return
        body = bytearray()
        try:
            try:
                refused = await self._read(receive, body)
            except ClientGone:
                return  # nobody to answer; its bytes are given back below
            if refused is not None:
                await self._refuse(send, *refused)
                return
            BODY_BYTES_HELD.set(self.held)
            await self.app(scope, replay_body(bytes(body), receive), send)
        finally:
            self.held -= len(body)
            BODY_BYTES_HELD.set(self.held)

    async def _read(self, receive: Receive, body: bytearray) -> tuple[int, str, str] | None:
        """Read the body into `body` (its bytes counted in `held` as they come); a refusal
        (status, reason, message) when it breaks a bound. ClientGone when the client left."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            try:
                async with asyncio.timeout(self.timeout_s):
                    message = await receive()
            except TimeoutError:
                return 408, "timeout", self._too_slow(len(body), loop.time() - started)
            elapsed = loop.time() - started
            if elapsed > self.timeout_s and len(body) < self.min_rate * elapsed:
                return 408, "timeout", self._too_slow(len(body), elapsed)
            if message["type"] == "http.disconnect":
                raise ClientGone("the client disconnected while sending its body")
            chunk = message.get("body", b"")
            if len(body) + len(chunk) > self.max_bytes:
                return 413, "too_large", self._too_large()
            if self.held + len(chunk) > self.max_buffered:
                return 503, "budget", self._over_budget()
            self.held += len(chunk)
            body += chunk
            if not message.get("more_body"):
                return None

    @staticmethod
    async def _refuse(send: Send, status: int, reason: str, message: str) -> None:
        BODIES_REFUSED.labels(reason=reason).inc()
        await send_error(send, status, message, close=True)


class WholeBodyMiddleware:
    """Sends a response that arrives in pieces as one body with a Content-Length.

    BentoML writes every API answer as a start message, the JSON as a chunk and an empty
    closing chunk, without a Content-Length: three trips through every middleware's `send`
    and a chunked transfer encoding for a few hundred bytes. Collected here (innermost), the
    answer leaves as two messages and a plain, sized body, which the client also parses faster.
    A body over `max_bytes`, and an event stream, are passed on as they come (chunked), so
    streaming stays streaming.
    """

    def __init__(self, app: ASGIApp, max_bytes: int = 1 << 20) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []
        size = 0

        async def send_whole(message: Message) -> None:
            nonlocal start, size
            kind = message["type"]
            if kind == "http.response.start":
                headers = message.get("headers", [])
                sized = any(k.lower() == b"content-length" for k, _ in headers)
                streamed = any(
                    k.lower() == b"content-type" and v.startswith(b"text/event-stream")
                    for k, v in headers
                )
                if not sized and not streamed:
                    start = message  # held until the body is complete
                    return
            elif kind == "http.response.body" and start is not None:
                chunk = message.get("body", b"")
                chunks.append(chunk)
                size += len(chunk)
                if not message.get("more_body"):
                    body = b"".join(chunks)
                    headers = [*start.get("headers", []), (b"content-length", str(size).encode())]
                    held, start = start, None
                    await send({**held, "headers": headers})
                    await send({"type": "http.response.body", "body": body})
                    return
                if size <= self.max_bytes:
                    return
                held, start = start, None  # too big to hold: stream it as it comes
                await send(held)
                await send(
                    {"type": "http.response.body", "body": b"".join(chunks), "more_body": True}
                )
                return
            await send(message)

        await self.app(scope, receive, send_whole)
