"""Counting the HTTP inference requests a worker holds (`rnnserve_requests_in_flight`), the
signal deploy/k8s/overlays/keda scales on.

BentoML's own `bentoml_service_request_in_progress` counts every request, probes and /metrics
scrapes included, under a label per raw path; this counts what costs the model: every POST
(each inference route, V2 and the lean ones included, is a POST; GETs are probes, metadata,
pages and the scrape itself), from its arrival to the last byte of its answer, so a queued
request and a stream still generating both count. Outermost middleware: a request refused by a
later layer counts for the short time it took to refuse it.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from service.metrics import REQUESTS_IN_FLIGHT


class InFlightMiddleware:
    """+1 when a POST arrives, -1 when its answer ended or the client left."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.gauge = REQUESTS_IN_FLIGHT.labels(protocol="http")
        # both series exist from the start: a scaler's query reads 0, not "no data"
        REQUESTS_IN_FLIGHT.labels(protocol="grpc")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        self.gauge.inc()
        try:
            await self.app(scope, receive, send)
        finally:
            self.gauge.dec()
