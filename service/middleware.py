"""ASGI middleware: one JSON shape for every error response, bearer-token auth, request-body
limits (413 for one body, 503 when the worker holds too many) and whole response bodies.

BentoML answers errors in several shapes (a JSON object, a JSON array holding one, plain text
from Starlette for 404/405). Clients should parse one: `{"error": str, "detail": any}`.
"""

from __future__ import annotations

import hmac
import json
from http import HTTPStatus
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.asgi import replay_body, send_error
from service.bentoml_compat import unwrap_error_array
from service.errors import error_body


def _describe_validation(errors: list[dict[str, Any]]) -> str:
    """pydantic's error list -> one readable sentence per problem."""
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body",))
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "invalid input: " + "; ".join(parts) + more


def normalize_error(status: int, body: bytes) -> bytes:
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
            message = _describe_validation(detail)
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

    def __init__(self, app: ASGIApp, v2_prefix: str) -> None:
        self.app = app
        self.v2_prefix = v2_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rewrite = v2_error if scope.get("path", "").startswith(self.v2_prefix) else normalize_error
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
                body = rewrite(start["status"], b"".join(chunks))
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


class BearerAuthMiddleware:
    """Optional bearer-token authentication (off when no tokens are configured).

    Tokens are compared in constant time (`hmac.compare_digest`) against every configured
    token, so neither a match nor its position leaks through timing. Exempt paths (health,
    metrics by default) stay open for probes and scrapers; an entry ending in `*` exempts a
    prefix (the demo page's static files, `/ui/*`: they hold no data, the page sends the token).
    """

    def __init__(self, app: ASGIApp, tokens: tuple[str, ...], exempt: tuple[str, ...]) -> None:
        self.app = app
        self.tokens = [t.encode() for t in tokens]
        self.exempt = {p for p in exempt if not p.endswith("*")}
        self.exempt_prefixes = tuple(p[:-1] for p in exempt if p.endswith("*"))

    def _authorized(self, header: bytes | None) -> bool:
        if header is None or not header.lower().startswith(b"bearer "):
            return False
        offered = header[7:].strip()
        matches = [hmac.compare_digest(offered, token) for token in self.tokens]
        return any(matches)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] != "http"
            or not self.tokens
            or path in self.exempt
            or path.startswith(self.exempt_prefixes)
        ):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        if not self._authorized(headers.get(b"authorization")):
            body = error_body(
                "missing or invalid bearer token: send 'Authorization: Bearer <token>'"
            )
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
    """Bounds what request bodies cost before the application reads them.

    One body: a declared Content-Length over `max_bytes` is refused at once (413); a body
    without one (chunked) is read up to the limit and replayed to the application, or refused
    when it goes over. All bodies together: the bytes of the requests a worker holds at once
    may not pass `max_buffered`; a request that would is refused with 503 + Retry-After before
    its body is read, so a flood of large requests costs bounded memory.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, max_buffered: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_buffered = max_buffered
        self.buffered = 0  # bytes reserved by requests in progress (one event loop: no lock)

    def _too_large(self) -> str:
        return f"request body over the limit of {self.max_bytes} bytes (RNNSERVE_MAX_REQUEST_BYTES)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        declared = headers.get(b"content-length")
        if declared is None and scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        if declared is not None:
            length = int(declared) if declared.isdigit() else -1
            if length < 0:
                await send_error(send, 400, "invalid Content-Length header")
                return
            if length > self.max_bytes:
                await send_error(send, 413, self._too_large())
                return
            await self._within_budget(length, scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await send_error(send, 413, self._too_large())
                return
            if not message.get("more_body"):
                break
        await self._within_budget(len(body), scope, replay_body(bytes(body), receive), send)

    async def _within_budget(self, size: int, scope: Scope, receive: Receive, send: Send) -> None:
        if size and self.buffered + size > self.max_buffered:
            await send_error(
                send,
                503,
                f"the server holds too many request bodies ({self.buffered} bytes; limit "
                f"RNNSERVE_MAX_BUFFERED_BYTES={self.max_buffered}); retry shortly",
            )
            return
        self.buffered += size
        try:
            await self.app(scope, receive, send)
        finally:
            self.buffered -= size


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
