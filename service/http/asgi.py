"""Small ASGI helpers shared by the middleware and the mounted apps."""

from __future__ import annotations

import logging
from typing import Any

from starlette.types import Message, Receive, Send

from service.errors import ClientGone, error_body, retry_headers
from service.log_bounds import refusal_log
from service.metrics import REFUSALS

JSON = b"application/json"
logger = logging.getLogger("rnnserve")


def log_refusal(route: str, status: int, message: str) -> None:
    """A client error as one warning line (no traceback), at most RNNSERVE_REFUSAL_LOG_PER_S of
    them a second (rnnserve_refusals counts every one). 503s are counted, never logged one by
    one: under a flood that would be thousands of lines; rnnserve_queue_refused says why."""
    if status < 500:
        refusal_log().refused(logger, status, "%s: %s %s", route, status, message)
    else:
        REFUSALS.labels(status=str(status)).inc()


async def send_bytes(
    send: Send,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
    content_type: bytes = JSON,
) -> None:
    """A whole, sized response in two ASGI messages."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def send_error(
    send: Send, status: int, message: str, detail: Any = None, close: bool = False
) -> None:
    """Our error shape, with Retry-After on a 503; `close` asks the server to close the
    connection after it (a request body left unread)."""
    headers = retry_headers(status) + ([(b"connection", b"close")] if close else [])
    await send_bytes(send, status, error_body(message, detail), headers)


def media_type(value: bytes | str) -> str:
    """A Content-Type's media type, lower case, without parameters ("" when there is none):
    media types are case-insensitive (RFC 9110 section 8.3.1), and every route compares them
    this way."""
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    return text.partition(";")[0].strip().lower()


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


async def read_body(receive: Receive) -> bytes:
    """The whole request body (ClientGone when the client went away). Only used behind
    BodyLimitMiddleware, which caps it."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone("the client disconnected while sending its body")
        body += message.get("body", b"")
        if not message.get("more_body"):
            return bytes(body)
