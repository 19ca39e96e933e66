"""GET routes mounted on the service (BentoML's own routes are POST only)."""

from __future__ import annotations

import bentoml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def metadata(_: Request) -> JSONResponse:
    service = bentoml.get_current_service()
    if service is None or not getattr(service, "ready", False):
        return JSONResponse({"error": "service not ready", "detail": None}, status_code=503)
    return JSONResponse(service.describe())


meta_app = Starlette(routes=[Route("/metadata", metadata, methods=["GET"])])
