"""WholeBodyMiddleware: BentoML's three-piece answers leave as one sized body; streams and
sized answers pass as they are. Pure ASGI, no server."""

from __future__ import annotations

import asyncio
from typing import Any

from service.http.middleware import WholeBodyMiddleware

Message = dict[str, Any]


def run(app: Any, max_bytes: int = 1 << 20) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/x", "headers": []}
    asyncio.run(WholeBodyMiddleware(app, max_bytes=max_bytes)(scope, receive, send))
    return sent


def app_sending(*messages: Message) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        for message in messages:
            await send(message)

    return app


START = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"x")]}


def body(data: bytes, more: bool) -> Message:
    return {"type": "http.response.body", "body": data, "more_body": more}


def test_pieces_become_one_sized_body() -> None:
    sent = run(app_sending(START, body(b'{"digit":', True), body(b"3}", True), body(b"", False)))
    assert len(sent) == 2
    assert sent[0]["status"] == 200
    assert (b"content-length", b"11") in sent[0]["headers"]
    assert (b"content-type", b"x") in sent[0]["headers"]
    assert sent[1] == {"type": "http.response.body", "body": b'{"digit":3}'}


def test_a_sized_answer_passes_untouched() -> None:
    sized = {**START, "headers": [(b"Content-Length", b"2")]}
    messages = (sized, body(b"{}", False))
    assert run(app_sending(*messages)) == list(messages)


def test_a_body_over_the_limit_is_streamed_as_it_comes() -> None:
    sent = run(
        app_sending(START, body(b"a" * 6, True), body(b"b" * 6, True), body(b"", False)),
        max_bytes=8,
    )
    assert sent[0] == START  # no Content-Length: the server chunks it
    assert [m["body"] for m in sent[1:]] == [b"a" * 6 + b"b" * 6, b""]
    assert [m.get("more_body", False) for m in sent[1:]] == [True, False]


def test_an_empty_answer_gets_length_zero() -> None:
    sent = run(app_sending(START, body(b"", False)))
    assert (b"content-length", b"0") in sent[0]["headers"] and sent[1]["body"] == b""
