"""The BentoML workarounds (service/http/bentoml_compat.py), each beside a test that reproduces the
defect on BentoML itself: when one of those `test_bentoml_*` tests fails after an upgrade, the
defect is fixed upstream and the workaround should go.

Middleware tests are pure ASGI driven by asyncio; the others run a small BentoML service
in-process (BentoML's own ASGI app, Starlette's TestClient)."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import inspect
import json
import logging
import warnings
import weakref
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path
from typing import Any, cast

import bentoml
import pytest
from bentoml.exceptions import BentoMLException

from service.engine.admission import CLIENT_LEFT
from service.http.asgi import send_error
from service.http.bentoml_compat import (
    BENTOML_HTTP_LOGGER,
    RequestLifetimeMiddleware,
    bentoml_timeout_middleware,
    bind_api_methods,
    client_left_probe,
    declare_json_outputs,
    install_request_lifetime,
    quiet_client_errors,
    unwrap_error_array,
)
from service.http.route_inputs import InputGuard, declared_inputs

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette suggests httpx2 for its TestClient
    from starlette.testclient import TestClient


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


def armed_timers_after_50_requests(middleware_class: Any) -> tuple[int, int]:
    """(timers still armed, request contexts still alive) after 50 answered requests."""
    refs: list[weakref.ref[RequestState]] = []

    async def one_request(middleware: Any) -> list[dict[str, Any]]:
        """In its own task, as a server runs each request; the state is set outside the
        middleware, as BentoML's tracing middleware sets the span."""
        state = RequestState()
        refs.append(weakref.ref(state))
        REQUEST_STATE.set(state)
        return await call(middleware)

    async def main() -> tuple[int, int]:
        middleware = middleware_class(ok_app, timeout=30)
        for _ in range(50):
            sent = await asyncio.create_task(one_request(middleware))
            assert sent[0]["status"] == 200
        await asyncio.sleep(0)  # let the loop finish what the last request left scheduled
        loop = asyncio.get_running_loop()
        scheduled = getattr(loop, "_scheduled", [])  # asyncio's timer heap (CPython detail)
        armed = sum(1 for handle in scheduled if not handle.cancelled())
        gc.collect()
        return armed, sum(ref() is not None for ref in refs)

    return asyncio.run(main())


def test_bentoml_timeout_middleware_keeps_every_request_alive_for_the_timeout() -> None:
    """The defect: 50 answered requests leave 50 armed timers holding their contexts (at
    1,000 req/s and a 30 s timeout, 30,000 live spans)."""
    armed, alive = armed_timers_after_50_requests(bentoml_timeout_middleware())
    assert armed == 50 and alive == 50


def test_a_fast_request_leaves_no_timer_and_no_context_behind() -> None:
    assert armed_timers_after_50_requests(RequestLifetimeMiddleware) == (0, 0)


def test_a_response_not_started_in_time_gets_504_in_the_error_shape() -> None:
    cancelled: list[bool] = []

    async def slow_app(scope: Any, receive: Any, send: Any) -> None:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        await ok_app(scope, receive, send)

    sent = asyncio.run(call(RequestLifetimeMiddleware(slow_app, timeout=0.05)))
    assert cancelled == [True]
    assert sent[0]["status"] == 504
    body = json.loads(sent[1]["body"])
    assert body == {"error": "Not able to process the request in 0.05 seconds", "detail": None}


def test_a_started_response_runs_to_its_end() -> None:
    async def streaming_app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(0.15)  # past the deadline, but the status line is out
        await send({"type": "http.response.body", "body": b"done"})

    sent = asyncio.run(call(RequestLifetimeMiddleware(streaming_app, timeout=0.05)))
    assert [m.get("status", m.get("body")) for m in sent] == [200, b"done"]


def test_cancellation_from_elsewhere_is_not_turned_into_a_504() -> None:
    async def main() -> list[Any]:
        sent: list[Any] = []

        async def slow_app(scope: Any, receive: Any, send: Any) -> None:
            await asyncio.sleep(5)

        middleware: Any = RequestLifetimeMiddleware(slow_app, timeout=10)
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
        asyncio.run(call(RequestLifetimeMiddleware(failing_app, timeout=1)))

    async def refusing_app(scope: Any, receive: Any, send: Any) -> None:
        await send_error(send, 422, "bad pixels")

    sent = asyncio.run(call(RequestLifetimeMiddleware(refusing_app, timeout=1)))
    assert sent[0]["status"] == 422


def disconnect_scenario(middleware_class: Any) -> tuple[list[str], list[dict[str, Any]]]:
    """A request whose body has arrived waits for its model; its client then disconnects.
    Returns (what became of the work, what was sent)."""
    events: list[str] = []
    sent: list[dict[str, Any]] = []
    messages = [{"type": "http.request", "body": b"{}", "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await asyncio.sleep(0.05)  # the client leaves 50 ms after sending its body
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def waiting_app(scope: Any, receive: Any, send: Any) -> None:
        await receive()  # the whole body
        try:
            await asyncio.sleep(0.5)  # queued for the model
            events.append("ran to the end")
        except asyncio.CancelledError:
            events.append("cancelled")
            raise
        await ok_app(scope, receive, send)

    asyncio.run(middleware_class(waiting_app, timeout=30)(http_scope(), receive, send))
    return events, sent


def test_bentoml_timeout_middleware_lets_work_of_a_departed_client_run() -> None:
    """The defect: nothing notices the client leaving; its request still reaches the model."""
    events, _ = disconnect_scenario(bentoml_timeout_middleware())
    assert events == ["ran to the end"]


def test_a_departed_clients_work_is_cancelled_and_nothing_is_sent() -> None:
    events, sent = disconnect_scenario(RequestLifetimeMiddleware)
    assert events == ["cancelled"] and sent == []


def test_an_answered_request_is_not_taken_for_a_disconnect() -> None:
    """After the answer uvicorn's receive() reports a disconnect too: that is no departure."""
    received: list[str] = []
    messages = [{"type": "http.request", "body": b"{}", "more_body": False}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        received.append((await receive())["type"])
        await ok_app(scope, receive, send)
        received.append((await receive())["type"])  # a second reader still gets the message

    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    asyncio.run(RequestLifetimeMiddleware(app, timeout=30)(http_scope(), receive, send))
    assert received == ["http.request", "http.disconnect"] and sent[0]["status"] == 200


class FakeCycle:
    """Stands for uvicorn's RequestResponseCycle: `receive` is its bound method."""

    def __init__(self) -> None:
        self.disconnected = False

    async def receive(self) -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}


def test_the_probe_reads_uvicorns_flag_through_wrapping_closures() -> None:
    cycle = FakeCycle()

    def wrap(inner: Any) -> Any:  # as BentoML's access log wraps receive
        async def wrapped_receive() -> Any:
            return await inner()

        return wrapped_receive

    for receive in (cycle.receive, wrap(cycle.receive), wrap(wrap(cycle.receive))):
        probe = client_left_probe(receive)
        assert probe is not None and probe() is False
        cycle.disconnected = True
        assert probe() is True
        cycle.disconnected = False

    async def plain() -> dict[str, Any]:
        return {}

    assert client_left_probe(plain) is None  # another server: the listener takes over


def test_uvicorn_still_keeps_the_flag_the_probe_reads() -> None:
    """The probe depends on uvicorn's cycle: this fails if uvicorn renames it."""
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

    assert "self.disconnected = False" in inspect.getsource(RequestResponseCycle.__init__)
    assert inspect.getsource(RequestResponseCycle.receive).count("self.disconnected") >= 1


def test_a_probed_request_sets_client_left_for_the_queues() -> None:
    seen: list[bool] = []
    cycle = FakeCycle()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        client_left = CLIENT_LEFT.get()
        seen.append(client_left())
        cycle.disconnected = True
        seen.append(client_left())
        await ok_app(scope, receive, send)

    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    asyncio.run(RequestLifetimeMiddleware(app, timeout=30)(http_scope(), cycle.receive, send))
    assert seen == [False, True] and CLIENT_LEFT.get()() is False  # set per request only


def test_install_replaces_the_middleware_bentoml_builds() -> None:
    from bentoml._internal.server.base_app import BaseAppFactory
    from bentoml._internal.server.http import traffic

    install_request_lifetime()
    install_request_lifetime()  # idempotent
    assert traffic.TimeoutMiddleware is RequestLifetimeMiddleware
    assert bentoml_timeout_middleware() is not RequestLifetimeMiddleware

    class App(BaseAppFactory):  # the smallest factory: what BentoML's server builds on
        name = "t"

    built = [m.cls for m in App(timeout=30).middlewares]
    assert RequestLifetimeMiddleware in built


# ----------------------------------------------------------------------- an in-process service


# metrics off: two BentoML apps in one process would register the same metrics twice
@bentoml.service(metrics={"enabled": False})
class Tiny:
    @bentoml.api
    def double(self, x: int, scale: int = 2) -> int:
        return x * scale

    @bentoml.api(batchable=True)
    def lengths(self, words: list[str]) -> list[int]:
        return [len(w) for w in words]

    @bentoml.api
    def size(self, upload: Path) -> int:
        return len(upload.read_bytes())

    @bentoml.api
    def refuse(self, x: int) -> int:
        raise BentoMLException("x is not welcome", error_code=HTTPStatus(422))


@bentoml.service(metrics={"enabled": False})
class GuardedTiny:
    @bentoml.api
    def size(self, upload: Path) -> int:
        return len(upload.read_bytes())


cast(Any, GuardedTiny).add_asgi_middleware(
    InputGuard, routes=declared_inputs(cast(Any, GuardedTiny).apis.values())
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with TestClient(cast(Any, Tiny).to_asgi()) as client:
        yield client


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with TestClient(cast(Any, GuardedTiny).to_asgi()) as client:
        yield client


NO_BOUNDARY = {"content-type": "multipart/form-data"}


def test_bentoml_answers_a_malformed_multipart_body_with_500(tiny: TestClient) -> None:
    assert tiny.post("/size", content=b"abc", headers=NO_BOUNDARY).status_code == 500


def test_the_guard_answers_it_with_400_and_lets_good_uploads_through(guarded: TestClient) -> None:
    r = guarded.post("/size", content=b"abc", headers=NO_BOUNDARY)
    assert r.status_code == 400 and "malformed multipart body" in r.json()["error"]
    assert guarded.post("/size", files={"upload": ("a.bin", b"12345")}).json() == 5


def test_bentoml_takes_a_file_fields_text_for_a_url_and_downloads_it(tiny: TestClient) -> None:
    """The server-side fetch (MultipartSerde.ensure_file): a text value in a file field is
    fetched (refused here only by the private-address guard, see the next test), and text
    that is no URL is a 500 with a traceback in the log."""
    r = tiny.post("/size", files={"upload": (None, "http://127.0.0.1:9/x")})
    assert r.status_code == 400 and "insecure input URL" in r.text  # it tried to connect
    r = tiny.post("/size", data={"upload": "http://127.0.0.1:9/x"})  # urlencoded: the same
    assert r.status_code == 400 and "insecure input URL" in r.text
    assert tiny.post("/size", files={"upload": (None, "hello")}).status_code == 500


def test_bentoml_private_address_guard_is_gone_once_any_request_ends() -> None:
    """make_safe_connect patches the event loop class for the whole process and restores it on
    exit: a fetch that finishes unguards every other fetch still in flight."""
    from bentoml._internal.utils import uri
    from uvloop import Loop

    unguarded = Loop.create_connection
    with uri.make_safe_connect():  # request A starts its download
        assert Loop.create_connection is not unguarded
        with uri.make_safe_connect():  # request B's download
            pass
        assert Loop.create_connection is unguarded  # A's download now reaches anything


def test_bentoml_ignores_undeclared_fields_and_reads_unknown_types_as_json(
    tiny: TestClient,
) -> None:
    r = tiny.post("/double", content=b'{"x": 2, "max_tokens": 9}')
    assert r.status_code == 200 and r.json() == 4
    r = tiny.post("/double", content=b'{"x": 2}', headers={"content-type": "text/plain"})
    assert r.status_code == 200 and r.json() == 4
    body = (
        b'--b\r\nContent-Disposition: form-data; name="upload"; filename="a"\r\n\r\n12\r\n--b--\r\n'
    )
    r = tiny.post(
        "/size", content=body, headers={"content-type": "MULTIPART/FORM-DATA; boundary=b"}
    )
    assert r.status_code != 200  # an upper-case media type is read as JSON


def test_the_guard_refuses_what_bentoml_would_fetch_or_ignore(guarded: TestClient) -> None:
    r = guarded.post("/size", files={"upload": (None, "http://127.0.0.1:9/x")})
    assert r.status_code == 400 and "'upload' must be an uploaded file" in r.json()["error"]
    r = guarded.post("/size", data={"upload": "http://127.0.0.1:9/x"})
    assert r.status_code == 415
    body = (
        b'--b\r\nContent-Disposition: form-data; name="upload"; filename="a"\r\n\r\n12\r\n--b--\r\n'
    )
    r = guarded.post(
        "/size", content=body, headers={"content-type": "MULTIPART/FORM-DATA; boundary=b"}
    )
    assert r.status_code == 200 and r.json() == 2


def test_bentoml_answers_a_4xx_exception_as_a_one_element_array(tiny: TestClient) -> None:
    r = tiny.post("/refuse", json={"x": 1})
    assert r.status_code == 422 and r.json() == [{"error": "x is not welcome"}]
    assert unwrap_error_array(r.json()) == {"error": "x is not welcome"}


def test_bentoml_logs_a_traceback_for_every_refused_input(
    tiny: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    """The defect, then the filter: one warning line with the reason, no traceback."""
    target = logging.getLogger(BENTOML_HTTP_LOGGER)
    saved = list(target.filters)
    target.filters.clear()
    try:
        with caplog.at_level(logging.INFO, logger=BENTOML_HTTP_LOGGER):
            assert tiny.post("/double", json={"x": "a"}).status_code == 400
        (record,) = [r for r in caplog.records if r.name == BENTOML_HTTP_LOGGER]
        assert record.levelno == logging.ERROR and record.exc_info is not None
        caplog.clear()
        quiet_client_errors()
        quiet_client_errors()  # idempotent
        with caplog.at_level(logging.INFO, logger=BENTOML_HTTP_LOGGER):
            assert tiny.post("/double", json={"x": "a"}).status_code == 400
        (record,) = [r for r in caplog.records if r.name == BENTOML_HTTP_LOGGER]
        assert record.levelno == logging.WARNING and record.exc_info is None
        assert record.getMessage().startswith("client error on /double [POST]: 1 validation")
    finally:
        target.filters[:] = saved


def test_a_server_error_keeps_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    from service.http.bentoml_compat import ClientErrorsWithoutTraceback

    try:
        raise RuntimeError("boom")
    except RuntimeError:
        import sys

        record = logging.LogRecord(
            BENTOML_HTTP_LOGGER,
            logging.ERROR,
            "",
            0,
            "Exception on %s [%s]",
            ("/x", "POST"),
            sys.exc_info(),
        )
    assert ClientErrorsWithoutTraceback().filter(record) and record.exc_info is not None


def test_bentoml_derives_the_media_type_per_response() -> None:
    """The defect: no media type is declared, so BentoML works it out on every answer."""
    assert cast(Any, Tiny).apis["double"].output_spec.media_type is None


def test_declared_json_outputs() -> None:
    @bentoml.service
    class Other:
        @bentoml.api
        def one(self) -> int:
            return 1

    declare_json_outputs(Other)
    assert cast(Any, Other).apis["one"].output_spec.media_type == "application/json"


def test_bentoml_rebuilds_the_wrapper_on_every_lookup() -> None:
    """The cost bind_api_methods removes: without binding, every read is a new object."""
    instance: Any = cast(Any, Tiny).inner()
    assert instance.double is not instance.double


def test_bound_methods_are_built_once_and_behave_the_same() -> None:
    service = cast(Any, Tiny)
    instance: Any = service.inner()
    unbound = {name: getattr(instance, name) for name in service.apis}
    bind_api_methods(instance, service.apis)
    for name in service.apis:
        method = getattr(instance, name)
        assert method is getattr(instance, name)  # a dict hit from now on
        assert method.local is method  # what BentoML's request path calls
        assert inspect.signature(method) == inspect.signature(unbound[name])
    assert instance.double(3) == unbound["double"](3) == 6  # defaults filled in as before
    assert instance.double.local(x=3, scale=5) == 15
    assert instance.lengths(["ab", "c"]) == [2, 1]


def test_an_unknown_name_is_refused() -> None:
    with pytest.raises(AttributeError, match="no API method 'missing'"):
        bind_api_methods(cast(Any, Tiny).inner(), ["missing"])


def test_bentoml_builds_a_tracing_middleware_even_when_nothing_is_sampled() -> None:
    """Why the decorator excludes every URL from tracing unless RNNSERVE_TRACING is on."""
    from _bentoml_impl.server.app import ServiceAppFactory
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    cast(Any, Tiny).inject_config()
    built = [m.cls for m in ServiceAppFactory(cast(Any, Tiny), is_main=True).middlewares]
    assert OpenTelemetryMiddleware in built
