"""The /v1 routes mounted on the service: GET /v1/metadata (BentoML's own routes are POST only),
POST /v1/digits and POST /v1/generate/stream (their handlers and OpenAPI fragments live in
their own modules), with the OpenAPI paths of all three (BentoML documents only the FastAPI
apps it mounts; service/http/openapi.py adds these)."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.engine.pipeline import ServingState
from service.errors import ServiceError
from service.http.kernel import ERROR_CONTENT, refusal_response
from service.http.lean_digits import LEAN_DOC, LeanDigitsApp
from service.http.lean_digits import ROUTE as LEAN_PATH
from service.http.stream_app import ROUTE as STREAM_PATH
from service.http.stream_app import STREAM_DOC, GenerationStreamApp

MOUNT_PATH = "/v1"
METADATA_PATH = f"{MOUNT_PATH}/metadata"


def meta_app(state: ServingState) -> Starlette:
    """GET /v1/metadata and POST /v1/digits, wired to the worker's pipelines via `state`."""

    async def metadata(_: Request) -> Response:
        try:
            return JSONResponse(state.require().describe())
        except ServiceError as exc:
            return refusal_response("/v1/metadata", exc)

    return Starlette(  # paths within the mount
        routes=[
            Route(METADATA_PATH.removeprefix(MOUNT_PATH), metadata, methods=["GET"]),
            Route(LEAN_PATH.removeprefix(MOUNT_PATH), LeanDigitsApp(state), methods=["POST"]),
            Route(
                STREAM_PATH.removeprefix(MOUNT_PATH), GenerationStreamApp(state), methods=["POST"]
            ),
        ]
    )


META_PATHS: dict[str, Any] = {
    LEAN_PATH: LEAN_DOC,
    STREAM_PATH: STREAM_DOC,
    METADATA_PATH: {
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
                                    "limits": {
                                        "type": "object",
                                        "description": "the largest values a request may "
                                        "use (RNNSERVE_MAX_* settings)",
                                        "additionalProperties": {"type": "integer"},
                                    },
                                },
                            }
                        }
                    },
                },
                "401": {"description": "Missing or invalid bearer token", "content": ERROR_CONTENT},
                "503": {"description": "Not ready yet", "content": ERROR_CONTENT},
            },
        }
    },
}
