"""BentoML's per-request timeout (`traffic.timeout`) without its timer leak.

BentoML 1.4's `TimeoutMiddleware` arms `loop.call_later(timeout, ...)` for every request and
never cancels it. The timer handle keeps the request's context (a copy of its contextvars: the
OpenTelemetry span, its attributes, the request context) alive until the timeout has passed,
answered or not. At 1,000 requests/s and a 30 s timeout that is 30,000 live spans: the worker
grew from 145 MB to a 328 MB plateau under 64 clients on /classify_pixels (measured: object
counts by type in the worker; spans, timer handles and futures grew by one per request).

`DeadlineMiddleware` keeps the same contract (a request whose response has not started within
`timeout` seconds is cancelled and answered 504, here in the service's one error shape) but
cancels its timer as soon as the response starts, and runs the app in the request's own task
instead of a second one.
`install()` puts it in the place BentoML takes its middleware from; it must run before the
server builds its application, i.e. when the service module is imported.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.middleware import send_error

logger = logging.getLogger("rnnserve")


class DeadlineMiddleware:
    """Cancel a request whose response has not started within `timeout` seconds (504)."""

    def __init__(self, app: ASGIApp, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan; no websocket routes here (a 504 can't answer one)
            await self.app(scope, receive, send)
            return
        task = asyncio.current_task()
        assert task is not None  # an ASGI app always runs inside a task
        expired = False
        started = False

        def expire() -> None:
            nonlocal expired
            expired = True
            task.cancel()

        timer = asyncio.get_running_loop().call_later(self.timeout, expire)

        async def send_started(message: Message) -> None:
            nonlocal started
            if not started:
                started = True
                timer.cancel()  # past the first byte the request runs to its end
            await send(message)

        try:
            await self.app(scope, receive, send_started)
        except asyncio.CancelledError:
            if not expired or task.cancelling() > 1:
                raise  # cancelled by someone else (client gone, shutdown): not ours to answer
            task.uncancel()
            if started:
                return  # too late for a 504: the status line has gone out
            message = f"Not able to process the request in {self.timeout} seconds"
            logger.warning("%s %s: %s", scope.get("method", ""), scope.get("path", ""), message)
            await send_error(send, 504, message)
        finally:
            timer.cancel()


def install() -> None:
    """Make BentoML build its timeout middleware from DeadlineMiddleware (idempotent)."""
    from bentoml._internal.server.http import traffic

    traffic.TimeoutMiddleware = DeadlineMiddleware  # type: ignore[misc,assignment]
