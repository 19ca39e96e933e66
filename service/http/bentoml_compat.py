"""Workarounds for BentoML 1.4 defects, all in one place.

Each names the defect it works around and has a test in tests/test_bentoml_compat.py that
reproduces the defect on BentoML itself: when an upgrade fixes it, that test fails, and the
workaround here should go.

1. `TimeoutMiddleware` arms a timer per request and never cancels it (every answered request's
   context lives for the whole timeout), and nothing notices a client that left: its request
   still runs to the end. -> `RequestLifetimeMiddleware`, installed in its place, and
   `client_left_probe` (reads uvicorn's own per-request flag, so the queues can drop the work
   of a departed client without a listener task per request).
2. `APIMethod.__get__` rebuilds the API wrapper (`inspect.signature`, `functools.wraps`) on
   every attribute read, twice per request. -> `bind_api_methods`.
3. An API's response media type is derived from the output's JSON schema on every response.
   -> `declare_json_outputs`.
4. A malformed multipart body (no boundary, broken parts) answers 500; a file field's text
   value (or a JSON body for a route whose input is one file) is downloaded as a URL by the
   server, whose private-address guard is process-wide and removed by the first request that
   ends; media types are compared case-sensitively, unknown ones read as JSON, and undeclared
   fields ignored. -> `service.http.route_inputs` (`InputGuard`, `forbid_unknown_fields`).
5. A 4xx `BentoMLException` is answered as a one-element JSON array. -> `unwrap_error_array`
   (used by the error-shape middleware).
6. Every 4xx from input validation is logged as an error with a ~25-line traceback.
   -> `quiet_client_errors`.
7. The tracing and access-log middleware cost a worker CPU on every request even when no trace
   is sampled. -> `skipped_paths` feeds their skip lists in the service's decorator.
8. The HTTP metrics are labelled by the raw request path, before authentication: every
   distinct path is a new series for good. -> `service.http.route_labels` (labels by route
   template).
9. uvicorn (under BentoML) bounds no header block, request line, header phase or idle
   connection, lets trailer fields join the headers, and keeps every connection it accepts.
   -> `service.http.connections` (tests/test_connections.py reproduces those on uvicorn itself).
10. Log records quote request values (paths, content types) whole. -> `service.log_bounds`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Iterable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.engine.admission import CLIENT_LEFT
from service.errors import ClientGone
from service.http.asgi import send_error
from service.log_bounds import refusal_log

logger = logging.getLogger("rnnserve")


# ----------------------------------------------------------------------- 1. request lifetime


def client_left_probe(receive: Receive, depth: int = 4) -> Callable[[], bool] | None:
    """A cheap "has the client gone?" for this request, or None when it cannot be had.

    uvicorn hands each request its `RequestResponseCycle.receive`; the cycle's `disconnected`
    flag turns true when the connection is lost. BentoML's middleware may wrap `receive` in
    closures (the access log does), so the closure cells are searched a few levels deep.
    Reading the flag costs nothing; a listener task per request cost the lean route a visible
    share of its throughput (compared with loadtest/ab.py).
    """
    owner = getattr(receive, "__self__", None)
    if owner is not None and isinstance(getattr(owner, "disconnected", None), bool):
        return lambda: bool(owner.disconnected)
    if depth == 0:
        return None
    for cell in getattr(receive, "__closure__", None) or ():
        try:
            inner = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if callable(inner):
            found = client_left_probe(inner, depth - 1)
            if found is not None:
                return found
    return None


class _DisconnectWatch:
    """The fallback when no probe is found (another ASGI server): wraps `receive`; once the
    application has read the whole body, a listener task waits for the next message, which the
    server sends only when the client disconnects (or when the response is complete). A
    disconnect before the response is complete calls `on_leave`."""

    def __init__(self, receive: Receive, on_leave: Any) -> None:
        self.inner = receive
        self.on_leave = on_leave
        self.listener: asyncio.Task[Message] | None = None
        self.answered = False

    async def receive(self) -> Message:
        if self.listener is not None:
            return await asyncio.shield(self.listener)  # a second reader must not cancel it
        message = await self.inner()
        if message["type"] == "http.request" and not message.get("more_body"):
            self.listener = asyncio.get_running_loop().create_task(self._listen())
        return message

    async def _listen(self) -> Message:
        message = await self.inner()
        if message["type"] == "http.disconnect" and not self.answered:
            self.on_leave()
        return message

    def stop(self) -> None:
        if self.listener is not None and not self.listener.done():
            self.listener.cancel()


class RequestLifetimeMiddleware:
    """Ends a request's work when nobody will read its answer: when its response has not
    started within `timeout` seconds (the task is cancelled and answered 504, in the service's
    error shape), or when its client disconnects first (nothing is sent). A departed client
    is noticed by the queues through `CLIENT_LEFT` (service/engine/admission.py), which drop its
    work before it reaches a model; where the server offers no probe, a listener task notices the
    disconnect and cancels the request's task instead.

    Unlike BentoML's TimeoutMiddleware, the timer is cancelled as soon as the response starts
    and the app runs in the request's own task (no second task per request).
    """

    def __init__(self, app: ASGIApp, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan; no websocket routes here (a 504 can't answer one)
            await self.app(scope, receive, send)
            return
        task = asyncio.current_task()
        assert task is not None  # an ASGI app always runs inside a task
        ended_by: str | None = None
        started = False

        def end(reason: str) -> None:
            nonlocal ended_by
            if ended_by is None:
                ended_by = reason
                task.cancel()

        timer = asyncio.get_running_loop().call_later(self.timeout, end, "deadline")
        probe = client_left_probe(receive)
        watch = None if probe else _DisconnectWatch(receive, lambda: end("disconnect"))
        if probe:
            CLIENT_LEFT.set(probe)  # the request's own task context: gone with it

        async def send_started(message: Message) -> None:
            nonlocal started
            if not started:
                started = True
                timer.cancel()  # past the first byte the request runs to its end
            if watch and message["type"] == "http.response.body" and not message.get("more_body"):
                watch.answered = True
            await send(message)

        try:
            await self.app(scope, watch.receive if watch else receive, send_started)
        except asyncio.CancelledError:
            if ended_by is None or task.cancelling() > 1:
                raise  # cancelled by someone else (shutdown): not ours to answer
            task.uncancel()
            method, path = scope.get("method", ""), scope.get("path", "")
            if ended_by == "disconnect":
                logger.info("%s %s: the client disconnected; its work was dropped", method, path)
                return
            if started:
                return  # too late for a 504: the status line has gone out
            message = f"Not able to process the request in {self.timeout} seconds"
            logger.warning("%s %s: %s", method, path, message)
            await send_error(send, 504, message)
        except ClientGone:
            return  # left while sending its body, or dropped from a queue: nobody to answer
        finally:
            timer.cancel()
            if watch:
                watch.stop()


_REPLACED: dict[str, Any] = {}  # what install_request_lifetime took out (for the tests)


def install_request_lifetime() -> None:
    """Make BentoML build its timeout middleware from RequestLifetimeMiddleware (idempotent);
    call before the server builds its application, i.e. when the service module is imported."""
    from bentoml._internal.server.http import traffic

    _REPLACED.setdefault("TimeoutMiddleware", traffic.TimeoutMiddleware)
    traffic.TimeoutMiddleware = RequestLifetimeMiddleware  # type: ignore[misc,assignment]


def bentoml_timeout_middleware() -> Any:
    """BentoML's own TimeoutMiddleware class, installed or not."""
    from bentoml._internal.server.http import traffic

    return _REPLACED.get("TimeoutMiddleware", traffic.TimeoutMiddleware)


# ----------------------------------------------------------------------- 2. bound API methods


def bind_api_methods(instance: object, names: Iterable[str]) -> None:
    """Store each API method of `instance`, bound once, in its `__dict__`.

    `APIMethod` is a non-data descriptor (it defines `__get__` only), so an attribute of the
    same name in the instance's `__dict__` wins the lookup, and BentoML gets exactly what it
    built before (the same callable with its `.local`), once.
    """
    cls = type(instance)
    for name in names:
        descriptor = inspect.getattr_static(cls, name, None)
        if descriptor is None or not hasattr(descriptor, "__get__"):
            raise AttributeError(f"{cls.__name__} has no API method {name!r}")
        instance.__dict__[name] = descriptor.__get__(instance, cls)


# ----------------------------------------------------------------------- 3. media types


def declare_json_outputs(service: Any) -> None:
    """Every answer of these APIs is JSON: saying so up front spares BentoML from deriving the
    media type from the output's JSON schema on every response (a visible share of a worker's
    time under load: loadtest/profile_service.py)."""
    for api in service.apis.values():
        api.output_spec.media_type = "application/json"


# ----------------------------------------------------------------------- 5. error arrays


def unwrap_error_array(data: Any) -> Any:
    """BentoML answers a 4xx BentoMLException with `({"error": ...},)`, a tuple, which goes out
    as a one-element JSON array: take the object out."""
    if isinstance(data, list) and len(data) == 1 and isinstance(data[0], dict):
        return data[0]
    return data


# ----------------------------------------------------------------------- 6. client-error logs

BENTOML_HTTP_LOGGER = "bentoml._internal.server.http_app"


class ClientErrorsWithoutTraceback(logging.Filter):
    """Turns BentoML's "Exception on PATH [METHOD]" error, logged with a traceback for every
    request its input validation refuses, into one warning line with the reason, written
    through the rate-limited refusal log; real 5xx keep their traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None or not _is_client_error(exc):
            return True
        reason = str(exc).strip().splitlines()
        where = record.args if isinstance(record.args, tuple) else ("?", "?")
        refusal_log().refused(
            logging.getLogger(record.name),
            _client_status(exc),
            "client error on %s [%s]: %s",
            *where,
            reason[0][:200] if reason else "",
        )
        return False  # written (or counted) above, as one line without the traceback


def _is_client_error(exc: BaseException) -> bool:
    from bentoml.exceptions import BentoMLException
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return True
    return isinstance(exc, BentoMLException) and int(exc.error_code) < 500


def _client_status(exc: BaseException) -> int:
    code = getattr(exc, "error_code", 400)
    return int(code) if int(code) < 500 else 400


def quiet_client_errors() -> None:
    """Install the filter on BentoML's HTTP logger (idempotent)."""
    target = logging.getLogger(BENTOML_HTTP_LOGGER)
    if not any(isinstance(f, ClientErrorsWithoutTraceback) for f in target.filters):
        target.addFilter(ClientErrorsWithoutTraceback())


# ----------------------------------------------------------------------- 7. per-request costs


def skipped_paths(lean_paths: list[str], tracing: bool) -> dict[str, Any]:
    """The `logging` and `tracing` options of the service decorator.

    The lean paths (which count and time themselves) skip BentoML's access log; probes and
    /metrics too. Unless tracing is on, no route builds a span (BentoML samples none by default
    but built one per request); when it is, every route but the lean ones is traced.
    """
    return {
        "logging": {
            "access": {"skip_paths": ["/metrics", "/healthz", "/livez", "/readyz", *lean_paths]}
        },
        "tracing": {"excluded_urls": lean_paths if tracing else [".*"]},
    }
