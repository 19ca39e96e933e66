"""ASGI middleware: one JSON shape for every error response, bearer-token auth, a request-size
limit (413) and a guard against malformed multipart bodies.

BentoML answers errors in several shapes (a JSON object, a JSON array holding one, plain text
from Starlette for 404/405). Clients should parse one: `{"error": str, "detail": any}`.
"""

from __future__ import annotations

import hmac
import json
from http import HTTPStatus
from typing import Any

from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def error_body(status: int, message: str, detail: Any = None) -> bytes:
    return json.dumps({"error": message, "detail": detail}).encode()


async def send_error(send: Send, status: int, message: str, detail: Any = None) -> None:
    body = error_body(status, message, detail)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


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
        return error_body(status, text or phrase)
    if isinstance(data, list) and len(data) == 1 and isinstance(data[0], dict):
        data = data[0]  # BentoML wraps some errors in a one-element array
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
        return error_body(status, message, detail)
    if isinstance(data, dict) and "detail" in data:  # Starlette HTTPException
        return error_body(status, str(data["detail"]), None)
    return error_body(status, phrase, data)


class ErrorShapeMiddleware:
    """Buffers error responses (status >= 400) and rewrites their body into the one shape."""

    def __init__(self, app: ASGIApp, exempt_prefix: str | None = None) -> None:
        self.app = app
        self.exempt_prefix = exempt_prefix  # routes with an error format of their own

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (
            self.exempt_prefix and scope.get("path", "").startswith(self.exempt_prefix)
        ):
            await self.app(scope, receive, send)
            return
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
                body = normalize_error(start["status"], b"".join(chunks))
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
                401, "missing or invalid bearer token: send 'Authorization: Bearer <token>'"
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
    """Refuses bodies over `max_bytes` with 413 before the application reads them.

    A declared Content-Length over the limit is refused at once; a body without one (chunked)
    is read up to the limit and replayed to the application, or refused when it goes over.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> str:
        return f"request body over the limit of {self.max_bytes} bytes (RNNSERVE_MAX_REQUEST_BYTES)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await send_error(send, 400, "invalid Content-Length header")
                return
            if length > self.max_bytes:
                await send_error(send, 413, self._too_large())
                return
            await self.app(scope, receive, send)
            return
        if scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
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
        await self.app(scope, replay_body(bytes(body), receive), send)


def replay_body(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the application an already-read body, then defers to the
    real one (which reports the disconnect)."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def read_body(receive: Receive) -> bytes | None:
    """The whole request body (None when the client went away). Only used behind
    BodyLimitMiddleware, which caps it."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message.get("body", b"")
        if not message.get("more_body"):
            return bytes(body)


class MultipartGuardMiddleware:
    """Answers a malformed multipart body with 400 instead of BentoML's 500.

    BentoML 1.4 catches Starlette's `HTTPException(400)` for a multipart body without a
    boundary or with broken parts and answers 500 "unexpected error" (found by the schemathesis
    run, tests/test_fuzz.py). This parses such bodies first, in a throwaway request (they are
    already capped by BodyLimitMiddleware), and replays them to the application when they parse.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope.get("headers", [])) if scope["type"] == "http" else {}
        if not headers.get(b"content-type", b"").lower().startswith(b"multipart/"):
            await self.app(scope, receive, send)
            return
        body = await read_body(receive)
        if body is None:
            return
        try:
            form = await Request(scope, replay_body(body, receive)).form()
            await form.close()
        except (HTTPException, MultiPartException) as exc:
            reason = exc.detail if isinstance(exc, HTTPException) else exc.message
            await send_error(send, 400, f"malformed multipart body: {reason}")
            return
        await self.app(scope, replay_body(body, receive), send)


class WholeBodyMiddleware:
    """Sends a response that arrives in pieces as one body with a Content-Length.

    BentoML writes every API answer as a start message, the JSON as a chunk and an empty
    closing chunk, without a Content-Length: three trips through every middleware's `send`
    and a chunked transfer encoding for a few hundred bytes. Collected here (innermost), the
    answer leaves as two messages and a plain, sized body, which the client also parses faster.
    A body over `max_bytes` is passed on as it comes (chunked), so streaming stays streaming.
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
                sized = any(k.lower() == b"content-length" for k, _ in message.get("headers", []))
                if not sized:
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
