"""Bounded metric labels (service/http/route_labels.py), beside a test that reproduces the defect on
BentoML itself: when `test_bentoml_labels_metrics_by_raw_path` fails after an upgrade, BentoML
labels its metrics by route on its own and the workaround should go.

The middleware is driven as pure ASGI (asyncio) around tiny apps, each instance with its own
metrics namespace (BentoML registers its metrics in the process-wide registry, once per
name); one small BentoML service with metrics on (again in a namespace of its own) runs
in-process for the end-to-end checks. Prometheus is in multiprocess mode in the tests
(tests/conftest.py), so series are read back with a MultiProcessCollector.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import bentoml
import httpx
import pytest
from bentoml._internal.server.http import instruments
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from service.http import route_labels
from service.http.route_labels import (
    MAX_PATH_LENGTH,
    UNMATCHED,
    RouteTemplates,
    TemplatedTrafficMetrics,
    bentoml_traffic_metrics_middleware,
    install_templated_metrics,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette suggests httpx2 for its TestClient
    from starlette.testclient import TestClient

_namespaces = itertools.count()


def fresh_namespace() -> str:
    """A metrics namespace no other middleware in this process has registered."""
    return f"rnnserve_test_labels{next(_namespaces)}"


def series(namespace: str) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    """The distinct (metric, label set) pairs of a namespace, as /metrics would show them
    (histogram buckets folded into their series)."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    found = set()
    for metric in registry.collect():
        if metric.name.startswith(namespace + "_"):
            for sample in metric.samples:
                labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
                found.add((metric.name, labels))
    return found


def endpoints(namespace: str) -> set[str]:
    """The `endpoint` label values of a namespace's request counter."""
    return {
        dict(labels)["endpoint"] for name, labels in series(namespace) if name.endswith("_request")
    }


def random_paths(n: int) -> list[str]:
    return [f"/{uuid.uuid4().hex}/{uuid.uuid4().hex[:6]}" for _ in range(n)]


# ----------------------------------------------------------------------- pure ASGI helpers


class Recorder:
    """An application that keeps every scope it is called with and answers `status`
    (`yields`: lets other requests run first); a websocket it accepts and reads to the end."""

    def __init__(self, status: int = 404, yields: bool = False) -> None:
        self.status = status
        self.yields = yields
        self.scopes: list[Scope] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scopes.append(scope)
        if self.yields:
            await asyncio.sleep(0)
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            await receive()
        if scope["type"] != "http":
            return
        await Response(status_code=self.status)(scope, receive, send)


def http_scope(path: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [],
        "server": ("testserver", 80),
    }


async def call(app: ASGIApp, scope: Scope) -> int:
    """Send one request through `app`; its response status."""
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


def templated(app: ASGIApp, templates: Sequence[str]) -> tuple[TemplatedTrafficMetrics, str]:
    namespace = fresh_namespace()
    return TemplatedTrafficMetrics(app, namespace=namespace, templates=lambda: templates), namespace


# ----------------------------------------------------------------------- the defect upstream


def test_bentoml_labels_metrics_by_raw_path() -> None:
    """BentoML's own middleware makes one series per distinct path sent, 404s included."""
    original = bentoml_traffic_metrics_middleware()
    assert original is not TemplatedTrafficMetrics
    namespace = fresh_namespace()
    middleware = original(Recorder(404), namespace=namespace)
    paths = random_paths(50)

    async def run() -> None:
        for path in paths:
            assert await call(middleware, http_scope(path)) == 404

    asyncio.run(run())
    assert endpoints(namespace) == set(paths)


# ----------------------------------------------------------------------- route templates

TEMPLATES = [
    "/classify_image",
    "/v2/models/{name}/infer",
    "/v2/models/{name}/versions/{version}/infer",
    "/ui/*",
    "/files/{rest:path}",
]


def test_exact_paths_are_their_own_label() -> None:
    routes = RouteTemplates(TEMPLATES)
    assert routes.label("/classify_image") == "/classify_image"
    for other in ("/classify_image/", "/classify", "/classify_image/x", "", "/"):
        assert routes.label(other) == UNMATCHED


def test_templated_paths_get_their_template() -> None:
    routes = RouteTemplates(TEMPLATES)
    assert routes.label("/v2/models/mnist-rnn/infer") == "/v2/models/{name}/infer"
    assert routes.label("/v2/models/foo/infer") == "/v2/models/{name}/infer"
    assert routes.label("/v2/models/mnist-rnn/versions/3/infer") == (
        "/v2/models/{name}/versions/{version}/infer"
    )
    assert routes.label("/v2/models/a/b/infer") == UNMATCHED  # {name} is one segment
    assert routes.label("/v2/models/a.b (c)/infer") == "/v2/models/{name}/infer"  # escaped
    assert routes.label("/v2/models/x/inferx") == UNMATCHED
    assert routes.label("/files/a/b/c") == "/files/{rest:path}"  # Starlette's path converter


def test_an_empty_segment_does_not_match_a_parameter() -> None:
    routes = RouteTemplates(TEMPLATES)
    assert routes.label("/v2/models//infer") == UNMATCHED
    assert routes.label("/v2/models/x/versions//infer") == UNMATCHED


def test_prefix_entries_cover_what_lies_under_them() -> None:
    routes = RouteTemplates(TEMPLATES)
    assert routes.label("/ui/app.js") == "/ui/*"
    assert routes.label("/ui/") == "/ui/*"
    assert routes.label("/ui/a/b/c.css") == "/ui/*"
    assert routes.label("/ui") == UNMATCHED  # not listed
    assert routes.label("/uix") == UNMATCHED
    listed = RouteTemplates([*TEMPLATES, "/ui"])
    assert listed.label("/ui") == "/ui" and listed.label("/ui/app.js") == "/ui/*"


def test_the_more_specific_entry_wins() -> None:
    routes = RouteTemplates(["/v2/*", "/v2/models/{name}/infer", "/v2/models/stats", "/v2/x/*"])
    assert routes.label("/v2/models/stats") == "/v2/models/stats"  # exact first
    assert routes.label("/v2/models/m/infer") == "/v2/models/{name}/infer"  # then templates
    assert routes.label("/v2/x/y") == "/v2/x/*"  # the longest prefix
    assert routes.label("/v2/models/m/ready") == "/v2/*"


def test_labels_are_only_templates_or_unmatched() -> None:
    routes = RouteTemplates(TEMPLATES)
    allowed = {*TEMPLATES, UNMATCHED}
    tricky = ["/v2/models/{name}/infer", "/%2e%2e/ui", "/ui\n/x", "/v2/models/\n/infer", "//ui/x"]
    assert {routes.label(p) for p in [*random_paths(200), *tricky]} <= allowed


def test_a_long_path_is_unmatched_quickly() -> None:
    routes = RouteTemplates(TEMPLATES)
    huge = ["/v2/models/" + "a" * 60_000 + "/infer", "/" + "a/" * 30_000, "/ui/" + "x" * 60_000]
    near_cap = "/v2/models/" + "a" * (MAX_PATH_LENGTH - 30) + "/inferx"  # matched, then fails
    started = time.perf_counter()
    for _ in range(100):
        assert all(routes.label(path) == UNMATCHED for path in huge)
        assert routes.label(near_cap) == UNMATCHED
    assert time.perf_counter() - started < 1.0  # microseconds each; generous for a busy box


def test_bad_templates_are_refused() -> None:
    for bad in ("v2/models", "/a/{x}{y}", "/a/{x}.{y}", "/a/{}", "/a/{x"):
        with pytest.raises(ValueError):
            RouteTemplates([bad])


# ----------------------------------------------------------------------- the middleware


def test_random_paths_make_one_unmatched_series_and_the_app_sees_the_real_path() -> None:
    app = Recorder(404)
    middleware, namespace = templated(app, TEMPLATES)
    scopes = [http_scope(p) for p in ["/v2/models/foo/infer", *random_paths(2000)]]

    async def run() -> None:
        for scope in scopes:
            assert await call(middleware, scope) == 404

    asyncio.run(run())
    assert endpoints(namespace) == {"/v2/models/{name}/infer", UNMATCHED}
    assert all(seen is sent for seen, sent in zip(app.scopes, scopes, strict=True))  # untouched
    assert all(route_labels.ORIGINAL_SCOPE_KEY not in scope for scope in scopes)


def test_concurrent_requests_each_reach_the_app_with_their_own_scope() -> None:
    """The forwarder finds the original scope in the request's own copy: no state is shared
    between requests, or between two instances."""
    first, second = Recorder(200, yields=True), Recorder(200, yields=True)
    one, _ = templated(first, TEMPLATES)
    two, _ = templated(second, TEMPLATES)
    scopes = [http_scope(f"/v2/models/m{i}/infer") for i in range(200)]

    async def run() -> None:
        await asyncio.gather(*(call(one if i % 2 else two, s) for i, s in enumerate(scopes)))

    asyncio.run(run())
    assert first.scopes == scopes[1::2] and second.scopes == scopes[0::2]
    assert all(a is b for a, b in zip(first.scopes, scopes[1::2], strict=True))


def test_lifespan_passes_through_untouched() -> None:
    app = Recorder()
    middleware, _ = templated(app, TEMPLATES)
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}}

    async def receive() -> dict[str, Any]:
        return {"type": "lifespan.startup"}

    async def send(message: Any) -> None:
        pass

    asyncio.run(middleware(scope, receive, send))
    assert app.scopes == [scope] and app.scopes[0] is scope


def test_metrics_keeps_its_own_label_and_is_not_counted() -> None:
    app = Recorder(200)
    middleware, namespace = templated(app, [])  # /metrics need not be listed

    async def run() -> None:
        await call(middleware, http_scope("/metrics"))
        await call(middleware, http_scope("/nowhere"))

    asyncio.run(run())
    assert middleware.routes.label("/metrics") == "/metrics"
    assert [s["path"] for s in app.scopes] == ["/metrics", "/nowhere"]
    assert endpoints(namespace) == {UNMATCHED}  # BentoML skips /metrics by that name


def test_websockets_are_labelled_too() -> None:
    app = Recorder()
    middleware, namespace = templated(app, ["/ws/{room}"])
    scope = {**http_scope("/ws/lobby-42"), "type": "websocket"}
    messages = iter([{"type": "websocket.connect"}, {"type": "websocket.disconnect"}])

    async def receive() -> Any:
        return next(messages)

    async def send(message: Any) -> None:
        pass

    asyncio.run(middleware(scope, receive, send))
    assert app.scopes == [scope]
    labelled = {dict(labels).get("endpoint") for name, labels in series(namespace)}
    assert "/ws/{room}" in labelled and "/ws/lobby-42" not in labelled


def test_a_failing_provider_leaves_everything_unmatched(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> Sequence[str]:
        raise RuntimeError("no routes yet")

    app = Recorder(404)
    namespace = fresh_namespace()
    middleware = TemplatedTrafficMetrics(app, namespace=namespace, templates=broken)
    with caplog.at_level(logging.ERROR, logger="rnnserve"):
        asyncio.run(call(middleware, http_scope("/classify_image")))
    assert endpoints(namespace) == {UNMATCHED} and "no routes yet" in caplog.text


def test_install_replaces_the_middleware_bentoml_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    original = instruments.RunnerTrafficMetricsMiddleware
    monkeypatch.setattr(instruments, "RunnerTrafficMetricsMiddleware", original)  # restored after
    monkeypatch.setattr(route_labels, "_provider", route_labels._provider)

    def provider() -> Sequence[str]:
        return ["/x"]

    install_templated_metrics(provider)
    install_templated_metrics(provider)  # idempotent
    assert instruments.RunnerTrafficMetricsMiddleware is TemplatedTrafficMetrics
    assert bentoml_traffic_metrics_middleware() is TemplatedTrafficMetrics.__mro__[1]
    assert route_labels._provider is provider
    middleware = TemplatedTrafficMetrics(Recorder(), namespace=fresh_namespace())
    assert middleware.routes.label("/x") == "/x"  # the installed provider, read lazily


# ----------------------------------------------------------------------- a BentoML service

NAMESPACE = fresh_namespace()
SEEN: list[str] = []  # the paths the service's own middleware saw
SERVICE_TEMPLATES = ["/double", "/v2/models/{name}/infer", "/livez", "/readyz", "/ui", "/ui/*"]


class SeenPaths:
    """Inside BentoML's metrics middleware: keeps the path of every request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            SEEN.append(scope["path"])
        await self.app(scope, receive, send)


class RefuseMarked:
    """Stands for the service's bearer-token check: 401 for requests marked `x-refuse`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (b"x-refuse", b"1") in scope["headers"]:
            await Response(status_code=401)(scope, receive, send)
            return
        await self.app(scope, receive, send)


async def infer(request: Request) -> JSONResponse:
    return JSONResponse({"path": request.url.path, "name": request.path_params["name"]})


# the one metrics-enabled BentoML app of this module, in a namespace of its own
@bentoml.service(metrics={"enabled": True, "namespace": NAMESPACE})
class Labelled:
    @bentoml.api
    def double(self, x: int) -> int:
        return 2 * x


cast(Any, Labelled).mount_asgi_app(
    Starlette(routes=[Route("/models/{name}/infer", infer, methods=["GET", "POST"])]), path="/v2"
)
cast(Any, Labelled).add_asgi_middleware(SeenPaths)
cast(Any, Labelled).add_asgi_middleware(RefuseMarked)


@pytest.fixture(scope="module")
def labelled() -> Iterator[TestClient]:
    def provider() -> Sequence[str]:
        return SERVICE_TEMPLATES

    with pytest.MonkeyPatch.context() as patch:  # other modules' apps get BentoML's own again
        patch.setattr(
            instruments,
            "RunnerTrafficMetricsMiddleware",
            instruments.RunnerTrafficMetricsMiddleware,
        )
        patch.setattr(route_labels, "_provider", route_labels._provider)
        install_templated_metrics(provider)
        with TestClient(cast(Any, Labelled).to_asgi()) as client:
            yield client


def burst(client: TestClient, requests: Sequence[tuple[str, str]]) -> list[int]:
    """Many requests in the app's own event loop (TestClient's thread hop per request would
    cost more than the requests); their statuses."""

    async def run() -> list[int]:
        transport = httpx.ASGITransport(app=cast(Callable[..., Any], client.app))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            return [(await http.request(m, p)).status_code for m, p in requests]

    assert client.portal is not None
    return client.portal.call(run)


def test_bentoml_builds_the_templated_middleware(labelled: TestClient) -> None:
    built = {m.cls: m.kwargs for m in cast(Any, labelled.app).user_middleware}
    assert TemplatedTrafficMetrics in built and bentoml_traffic_metrics_middleware() not in built
    assert built[TemplatedTrafficMetrics]["namespace"] == NAMESPACE


def test_random_paths_add_no_series_after_the_first_unmatched(labelled: TestClient) -> None:
    assert labelled.get("/first-unmatched").status_code == 404
    before = series(NAMESPACE)
    assert before and UNMATCHED in endpoints(NAMESPACE)
    requests = [("GET", p) for p in random_paths(1500)]
    requests += [("POST", f"/v2/models/{uuid.uuid4().hex}/nope") for _ in range(250)]
    requests += [("GET", f"/double/{uuid.uuid4().hex}") for _ in range(250)]
    assert set(burst(labelled, requests)) == {404}
    assert series(NAMESPACE) == before


def test_known_paths_get_their_template_and_the_app_sees_the_real_path(
    labelled: TestClient,
) -> None:
    SEEN.clear()
    assert labelled.post("/double", json={"x": 21}).json() == 42
    assert labelled.get("/v2/models/mnist-rnn/infer").json() == {
        "path": "/v2/models/mnist-rnn/infer",
        "name": "mnist-rnn",
    }
    assert labelled.post("/v2/models/foo/infer?verbose=1").json()["name"] == "foo"
    assert SEEN == ["/double", "/v2/models/mnist-rnn/infer", "/v2/models/foo/infer"]
    found = endpoints(NAMESPACE)
    assert {"/double", "/v2/models/{name}/infer"} <= found
    assert found <= {*SERVICE_TEMPLATES, UNMATCHED}  # no raw path, no query string


def test_refused_requests_are_counted_by_template_too(labelled: TestClient) -> None:
    """The metrics middleware sits outside every middleware the service adds (authentication
    included), so it counts 401s as well: by template, like everything else."""
    refused = {"x-refuse": "1"}
    assert labelled.post("/double", json={"x": 1}, headers=refused).status_code == 401
    statuses = burst(labelled, [("GET", p) for p in random_paths(20)])
    assert set(statuses) == {404}
    for path in random_paths(20):
        assert labelled.get(path, headers=refused).status_code == 401
    counted = {
        (dict(labels)["endpoint"], dict(labels)["http_response_code"])
        for name, labels in series(NAMESPACE)
        if name.endswith("_request")
    }
    assert {("/double", "401"), (UNMATCHED, "401")} <= counted
    assert endpoints(NAMESPACE) <= {*SERVICE_TEMPLATES, UNMATCHED}


def test_metrics_route_answers_and_shows_only_templates(labelled: TestClient) -> None:
    text = labelled.get("/metrics").text
    lines = [line for line in text.splitlines() if line.startswith(f"{NAMESPACE}_request_total")]
    assert lines and all('endpoint="/metrics"' not in line for line in lines)
    assert all(
        any(f'endpoint="{t}"' in line for t in [*SERVICE_TEMPLATES, UNMATCHED]) for line in lines
    )
