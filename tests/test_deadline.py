"""DeadlineMiddleware: BentoML's request timeout without a timer (and a request context) left
behind per request. Pure ASGI, driven by asyncio without a server."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import json
import weakref
from typing import Any

import pytest

from service.deadline import DeadlineMiddleware, install
from service.middleware import send_error

REQUEST_STATE: contextvars.ContextVar[Any] = contextvars.ContextVar("request_state")


class RequestState:
    """Stands for what a request's context holds (a tracing span, say)."""


def http_scope() -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": "/classify_pixels", "headers": []}


async def call(app: Any) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(http_scope(), receive, send)
    return sent


async def ok_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def test_a_fast_request_leaves_no_timer_and_no_context_behind() -> None:
    """The request's context must be collectable once it is answered (BentoML's middleware
    kept it alive in an armed timer for the whole timeout: 30,000 spans at 1,000 req/s)."""
    refs: list[weakref.ref[RequestState]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        state = RequestState()
        refs.append(weakref.ref(state))
        REQUEST_STATE.set(state)
        await ok_app(scope, receive, send)

    async def main() -> int:
        middleware = DeadlineMiddleware(app, timeout=30)
        for _ in range(50):
            sent = await call(middleware)
            assert sent[0]["status"] == 200
        loop = asyncio.get_running_loop()
        scheduled = getattr(loop, "_scheduled", [])  # asyncio's timer heap (CPython detail)
        return sum(1 for handle in scheduled if not handle.cancelled())

    assert asyncio.run(main()) == 0
    gc.collect()
    assert all(ref() is None for ref in refs)


def test_a_response_not_started_in_time_gets_504_in_the_error_shape() -> None:
    cancelled: list[bool] = []

    async def slow_app(scope: Any, receive: Any, send: Any) -> None:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        await ok_app(scope, receive, send)

    sent = asyncio.run(call(DeadlineMiddleware(slow_app, timeout=0.05)))
    assert cancelled == [True]
    assert sent[0]["status"] == 504
    body = json.loads(sent[1]["body"])
    assert body == {"error": "Not able to process the request in 0.05 seconds", "detail": None}


def test_a_started_response_runs_to_its_end() -> None:
    async def streaming_app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(0.15)  # past the deadline, but the status line is out
        await send({"type": "http.response.body", "body": b"done"})

    sent = asyncio.run(call(DeadlineMiddleware(streaming_app, timeout=0.05)))
    assert [m.get("status", m.get("body")) for m in sent] == [200, b"done"]


def test_cancellation_from_elsewhere_is_not_turned_into_a_504() -> None:
    async def main() -> list[Any]:
        sent: list[Any] = []

        async def slow_app(scope: Any, receive: Any, send: Any) -> None:
            await asyncio.sleep(5)

        middleware: Any = DeadlineMiddleware(slow_app, timeout=10)
        task = asyncio.create_task(middleware(http_scope(), None, sent.append))
        await asyncio.sleep(0.01)
        task.cancel()  # the client went away, the server shuts down, ...
        with pytest.raises(asyncio.CancelledError):
            await task
        return sent

    assert asyncio.run(main()) == []


def test_errors_of_the_app_pass_through() -> None:
    async def failing_app(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        asyncio.run(call(DeadlineMiddleware(failing_app, timeout=1)))

    async def refusing_app(scope: Any, receive: Any, send: Any) -> None:
        await send_error(send, 422, "bad pixels")

    sent = asyncio.run(call(DeadlineMiddleware(refusing_app, timeout=1)))
    assert sent[0]["status"] == 422


def test_install_replaces_the_middleware_bentoml_builds() -> None:
    from bentoml._internal.server.base_app import BaseAppFactory
    from bentoml._internal.server.http import traffic

    install()
    install()  # idempotent
    assert traffic.TimeoutMiddleware is DeadlineMiddleware

    class App(BaseAppFactory):  # the smallest factory: what BentoML's server builds on
        name = "t"

    built = [m.cls for m in App(timeout=30).middlewares]
    assert DeadlineMiddleware in built
