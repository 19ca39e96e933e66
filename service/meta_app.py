"""GET routes mounted on the service (BentoML's own routes are POST only), and their OpenAPI
description (BentoML documents only the FastAPI apps it mounts; service/openapi.py adds this)."""

from __future__ import annotations

from typing import Any

import bentoml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.lean_digits import LeanDigitsApp

MOUNT_PATH = "/v1"


async def metadata(_: Request) -> JSONResponse:
    service = bentoml.get_current_service()
    if service is None or not getattr(service, "ready", False):
        return JSONResponse({"error": "service not ready", "detail": None}, status_code=503)
    return JSONResponse(service.describe())


LEAN_PATH = f"{MOUNT_PATH}/digits"
meta_app = Starlette(
    routes=[
        Route("/metadata", metadata, methods=["GET"]),
        Route("/digits", LeanDigitsApp(), methods=["POST"]),
    ]
)

_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
META_PATHS: dict[str, Any] = {
    f"{MOUNT_PATH}/metadata": {
        "get": {
            "tags": ["Service APIs"],
            "operationId": "rnnserve__get_metadata",
            "description": "Loaded models with their cards' metrics, backend, provider and the "
            "service version (the same as POST /metadata).",
            "responses": {
                "200": {
                    "description": "Service and model description",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["service", "version", "device", "models"],
                                "properties": {
                                    "service": {"type": "string"},
                                    "version": {"type": "string"},
                                    "device": {"type": "string"},
                                    "models": {"type": "array", "items": {"type": "object"}},
                                },
                            }
                        }
                    },
                },
                "401": {"description": "Missing or invalid bearer token", "content": _ERROR},
                "503": {"description": "Not ready yet", "content": _ERROR},
            },
        }
    }
}
