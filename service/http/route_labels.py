"""Bounded `endpoint` labels for BentoML's per-request HTTP metrics.

BentoML 1.4's `RunnerTrafficMetricsMiddleware` (the metrics middleware of every new-style
service app) labels its request counter, duration histogram and in-progress gauge with the raw
request path. It is the outermost middleware, so it runs before authentication and routing:
every distinct path anyone sends, 404s and 401s included, becomes a new time series that lives
in the worker (and in Prometheus' multiprocess files) for good, and /metrics grows with it.
Anyone who can reach the port can inflate the worker's memory and every scrape without bound.

`TemplatedTrafficMetrics` is BentoML's middleware with one change: it hands BentoML's code a
copy of the scope whose path is the route template the request matched
(`/v2/models/{name}/infer`) or the one label `unmatched`, so the number of series is bounded by
the routes the service has, whatever is sent. The application behind it still gets the
original scope. `install_templated_metrics` makes BentoML build it in place of its own (the
way `service.http.bentoml_compat.install_request_lifetime` replaces the timeout middleware), and
`tests/test_route_labels.py::test_bentoml_labels_metrics_by_raw_path` reproduces the defect on
BentoML itself: when it fails after an upgrade, this workaround should go.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

logger = logging.getLogger("rnnserve")

UNMATCHED = "unmatched"
"""The label of every path no template matches: one series per status code, not per path."""

MAX_PATH_LENGTH = 2048
"""Longer paths are `unmatched` without being looked at: no route of the service is anywhere
near this long, and matching work must not grow with what a client chooses to send."""

METRICS_PATH = "/metrics"
"""BentoML's middleware recognises its own scrape route by this exact path (and does not count
it), so the label of /metrics must be /metrics itself: it is always among the templates."""

ORIGINAL_SCOPE_KEY = "rnnserve.original_scope"
"""Where the labelled copy of a scope keeps the original, for the forwarder to hand on."""

_PARAMETER = re.compile(r"\{([^{}/]*)\}")


def _segment_pattern(segment: str, template: str) -> str:
    """The regex of one path segment of a template: literal text escaped, a `{name}` one
    non-empty run of characters other than `/` (`{name:path}`, Starlette's converter, the
    rest of the path). One parameter per segment at most: two (`{a}.{b}`) would let a long
    segment be split in quadratically many ways while failing to match."""
    parameters = list(_PARAMETER.finditer(segment))
    if len(parameters) > 1:
        raise ValueError(f"route template {template!r}: at most one parameter per segment")
    rest = _PARAMETER.sub("", segment)
    if "{" in rest or "}" in rest:
        raise ValueError(f"route template {template!r}: unbalanced braces")
    if not parameters:
        return re.escape(segment)
    found = parameters[0]
    name, _, converter = found.group(1).partition(":")
    if not name:
        raise ValueError(f"route template {template!r}: a parameter without a name")
    wildcard = ".+" if converter == "path" else "[^/]+"
    return re.escape(segment[: found.start()]) + wildcard + re.escape(segment[found.end() :])


class RouteTemplates:
    """The route template a request path belongs to, from a fixed list compiled once.

    Templates are OpenAPI-style paths: `/classify_image` (exact), `/v2/models/{name}/infer`
    (`{name}` is one non-empty segment, no `/`), and prefix entries ending in `/*` (`/ui/*`
    covers `/ui/` and everything under it, not `/ui` itself, which is its own entry if it is a
    route). `label` answers the template, or `UNMATCHED`.

    It runs on every request, so the common case is one dict lookup (exact paths), then one
    precompiled alternation of the templated paths (first listed wins where two match), then
    the literal prefixes, longest first. The work is bounded whatever is sent: templates
    compile to patterns without nested or adjacent repetition, and paths longer than
    `max_path` are unmatched at once.
    """

    def __init__(self, templates: Iterable[str], max_path: int = MAX_PATH_LENGTH) -> None:
        self.max_path = max_path
        self._exact: dict[str, str] = {}
        self._prefixes: list[tuple[str, str]] = []  # (literal prefix, template)
        self._by_group: dict[str, str] = {}  # regex group name -> template
        full: list[str] = []
        prefixed: list[str] = []
        self.templates: tuple[str, ...] = tuple(dict.fromkeys(templates))
        for template in self.templates:
            if not template.startswith("/"):
                raise ValueError(f"route template {template!r} does not start with '/'")
            is_prefix = template.endswith("/*")
            head = template[:-1] if is_prefix else template  # "/ui/*" -> "/ui/"
            if "{" not in head and "}" not in head:
                if is_prefix:
                    self._prefixes.append((head, template))
                else:
                    self._exact.setdefault(head, template)
                continue
            segments = head.split("/")
            body = "/".join(_segment_pattern(segment, template) for segment in segments)
            group = f"t{len(self._by_group)}"
            self._by_group[group] = template
            (prefixed if is_prefix else full).append(
                f"(?P<{group}>{body}{'.*' if is_prefix else ''})"
            )
        self._prefixes.sort(key=lambda entry: len(entry[0]), reverse=True)
        alternatives = full + prefixed  # a whole-path template beats a prefix one
        self._pattern = re.compile("|".join(alternatives), re.DOTALL) if alternatives else None

    def label(self, path: str) -> str:
        """The template `path` matches (the one to put in a metric label), else `UNMATCHED`."""
        if len(path) > self.max_path:
            return UNMATCHED
        exact = self._exact.get(path)
        if exact is not None:
            return exact
        if self._pattern is not None:
            found = self._pattern.fullmatch(path)
            if found is not None and found.lastgroup is not None:
                return self._by_group[found.lastgroup]
        for prefix, template in self._prefixes:
            if path.startswith(prefix):
                return template
        return UNMATCHED


TemplatesProvider = Callable[[], Sequence[str]]

_provider: TemplatesProvider | None = None  # set by install_templated_metrics


class TemplatedTrafficMetrics(RunnerTrafficMetricsMiddleware):
    """BentoML's traffic metrics middleware, labelling requests by route template.

    BentoML builds it with its parent's arguments (`app`, `namespace`, `skip_paths`). Its
    routes come from the provider given to `install_templated_metrics` (or `templates`, for
    direct use), called on the first request: the service's routes and its mounted apps'
    OpenAPI paths are only complete once its module has been imported, after BentoML's
    imports ran. A provider that fails leaves every path but /metrics `unmatched` (bounded,
    still counted) rather than failing requests.

    BentoML's `__call__` is used as it is, given a shallow copy of the scope whose "path" is
    the label; the `app` it calls is this instance's forwarder, which calls the real
    application with the original scope (kept in the copy), so routing, mounts and every
    inner middleware see the request as sent, and whatever they store in the scope lands
    where the outer middleware can see it. Lifespan scopes go to BentoML's code unchanged
    (it sets its metrics up on the first call, as it would).
    """

    def __init__(
        self,
        app: ASGIApp,
        namespace: str = "bentoml_runner",
        skip_paths: Sequence[str] = ("/metrics", "/healthz", "/livez", "/readyz"),
        *,
        templates: TemplatesProvider | None = None,
    ) -> None:
        super().__init__(self._forward, namespace=namespace, skip_paths=skip_paths)
        self._inner = app
        self._templates = templates
        self._routes: RouteTemplates | None = None

    @property
    def routes(self) -> RouteTemplates:
        """The compiled templates (compiled on first use)."""
        if self._routes is None:
            self._routes = self._compile()
        return self._routes

    def _compile(self) -> RouteTemplates:
        provider = self._templates or _provider
        try:
            listed = list(provider()) if provider is not None else []
            return RouteTemplates([*listed, METRICS_PATH])
        except Exception:
            logger.exception("route templates for the traffic metrics: none could be had")
            return RouteTemplates([METRICS_PATH])

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._inner(scope.get(ORIGINAL_SCOPE_KEY, scope), receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await super().__call__(scope, receive, send)
            return
        labelled: dict[str, Any] = dict(scope)
        labelled["path"] = self.routes.label(scope["path"])
        labelled[ORIGINAL_SCOPE_KEY] = scope
        await super().__call__(labelled, receive, send)


_REPLACED: dict[str, Any] = {}  # what install_templated_metrics took out (for the tests)


def install_templated_metrics(templates: TemplatesProvider) -> None:
    """Make BentoML build its traffic metrics middleware from TemplatedTrafficMetrics, with
    route templates from `templates` (idempotent; the last provider given is the one used).
    Call before the server builds its application, i.e. when the service module is imported;
    `templates` itself is called later, on the first request."""
    global _provider
    from bentoml._internal.server.http import instruments

    if instruments.RunnerTrafficMetricsMiddleware is not TemplatedTrafficMetrics:
        _REPLACED.setdefault(
            "RunnerTrafficMetricsMiddleware", instruments.RunnerTrafficMetricsMiddleware
        )
    _provider = templates
    instruments.RunnerTrafficMetricsMiddleware = TemplatedTrafficMetrics  # type: ignore[misc]


def bentoml_traffic_metrics_middleware() -> Any:
    """BentoML's own RunnerTrafficMetricsMiddleware class, installed or not."""
    from bentoml._internal.server.http import instruments

    return _REPLACED.get(
        "RunnerTrafficMetricsMiddleware", instruments.RunnerTrafficMetricsMiddleware
    )
