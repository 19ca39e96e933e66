"""GET routes mounted on the service (BentoML's own routes are POST only), and their OpenAPI
description (BentoML documents only the FastAPI apps it mounts; service/http/openapi.py adds
this)."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.engine.pipeline import ServingState
from service.errors import ServiceError
from service.http.kernel import refusal_response
from service.http.lean_digits import LeanDigitsApp
from service.http.schemas import CARDS, DEFAULT_LENGTH, ROW_SCHEMA, TEXT, text_schema
from service.http.stream_app import GenerationStreamApp

MOUNT_PATH = "/v1"
LEAN_PATH = f"{MOUNT_PATH}/digits"
STREAM_PATH = f"{MOUNT_PATH}/generate/stream"


def meta_app(state: ServingState) -> Starlette:
    """GET /v1/metadata and POST /v1/digits, wired to the worker's pipelines via `state`."""

    async def metadata(_: Request) -> Response:
        try:
            return JSONResponse(state.require().describe())
        except ServiceError as exc:
            return refusal_response("/v1/metadata", exc)

    return Starlette(
        routes=[
            Route("/metadata", metadata, methods=["GET"]),
            Route("/digits", LeanDigitsApp(state), methods=["POST"]),
            Route("/generate/stream", GenerationStreamApp(state), methods=["POST"]),
        ]
    )


_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
_IMAGE = {"type": "array", "minItems": 28, "maxItems": 28, "items": ROW_SCHEMA}
_MODEL = {"type": "string", "description": "digit classifier (short or full name)"}
LEAN_DOC = {
    "post": {
        "tags": ["Service APIs"],
        "operationId": "rnnserve__lean_digits",
        "description": "The lean digit route (the hot path): one or a few 28x28 digits as JSON "
        "numbers (integers 0..255 are the compact form) or as a raw tensor body "
        "(application/octet-stream with X-Tensor-Shape and X-Tensor-Datatype). Batched "
        "continuously across clients. See docs/performance.md.",
        "parameters": [
            {"name": "model", "in": "query", "required": False, "schema": _MODEL},
            {
                "name": "X-Tensor-Shape",
                "in": "header",
                "required": False,
                "description": "binary body only: N,28,28 or 28,28",
                "schema": {"type": "string", "example": "1,28,28"},
            },
            {
                "name": "X-Tensor-Datatype",
                "in": "header",
                "required": False,
                "description": "binary body only (default UINT8)",
                "schema": {"type": "string", "enum": ["UINT8", "FP32"]},
            },
        ],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["pixels"],
                        "additionalProperties": False,
                        "properties": {
                            "pixels": {
                                "oneOf": [
                                    _IMAGE,
                                    {
                                        "type": "array",
                                        "minItems": 1,
                                        "maxItems": 256,
                                        "items": _IMAGE,
                                    },
                                ]
                            },
                            "model": _MODEL,
                            "scale": {"type": "string", "enum": ["0-255", "0-1"]},
                        },
                    }
                },
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        },
        "responses": {
            "200": {
                "description": "One digit and ten probabilities per image",
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["model", "provider", "digits", "probabilities"],
                            "properties": {
                                "model": {"type": "string"},
                                "provider": {"type": "string"},
                                "digits": {"type": "array", "items": {"type": "integer"}},
                                "probabilities": {
                                    "type": "array",
                                    "items": {"type": "array", "items": {"type": "number"}},
                                },
                            },
                        }
                    }
                },
            },
            **{
                str(status): {"description": why, "content": _ERROR}
                for status, why in (
                    (400, "Invalid input (the message says what to change)"),
                    (401, "Missing or invalid bearer token"),
                    (413, "Body over RNNSERVE_MAX_REQUEST_BYTES"),
                    (415, "Neither JSON nor a binary tensor"),
                    (503, "Not ready yet, or overloaded (see Retry-After)"),
                )
            },
        },
    }
}
STREAM_DOC = {
    "post": {
        "tags": ["Service APIs"],
        "operationId": "rnnserve__generate_stream",
        "description": "Generation streamed as Server-Sent Events (the same decode loop and the "
        'same answer as POST /generate for the same seed): `data: {"text": ...}` events as '
        "characters come, then `event: end` with the totals (chars, seed, seconds, first_char_ms, "
        "chars_per_s). Every check runs before the stream starts; a client that disconnects "
        "stops its sequence. Try it with `curl -N`.",
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["prompt"],
                        "additionalProperties": False,
                        "properties": {
                            "prompt": {
                                "type": "string",
                                "minLength": 1,
                                "maxLength": TEXT.max_text_chars,
                                **(text_schema(CARDS) or {}),
                            },
                            **{p.name: p.schema() for p in TEXT.generation()},
                        },
                    },
                    "example": {
                        "prompt": "ROMEO:\n",
                        "length": DEFAULT_LENGTH,
                        "temperature": TEXT.temperature.default,
                        "seed": 7,
                    },
                }
            },
        },
        "responses": {
            "200": {
                "description": "the event stream",
                "content": {
                    "text/event-stream": {
                        # each event's data: a chunk {"text"}, the totals (event: end), or
                        # {"error"} (event: error)
                        "schema": {
                            "type": "object",
                            "properties": {
                                "text": {"type": "string"},
                                "chars": {"type": "integer"},
                                "seed": {"type": "integer"},
                                "temperature": {"type": "number"},
                                "top_k": {"type": "integer", "nullable": True},
                                "model": {"type": "string"},
                                "provider": {"type": "string"},
                                "seconds": {"type": "number"},
                                "first_char_ms": {"type": "number"},
                                "chars_per_s": {"type": "number", "nullable": True},
                                "error": {"type": "string"},
                            },
                        }
                    }
                },
            },
            **{
                str(status): {"description": why, "content": _ERROR}
                for status, why in (
                    (400, "Invalid input (the message says what to change)"),
                    (401, "Missing or invalid bearer token"),
                    (413, "Body over RNNSERVE_MAX_REQUEST_BYTES"),
                    (415, "Not JSON"),
                    (422, "Characters outside the model's vocabulary"),
                    (503, "Not ready, or the decode loop is full (see Retry-After)"),
                )
            },
        },
    }
}
META_PATHS: dict[str, Any] = {
    f"{MOUNT_PATH}/digits": LEAN_DOC,
    STREAM_PATH: STREAM_DOC,
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
                "401": {"description": "Missing or invalid bearer token", "content": _ERROR},
                "503": {"description": "Not ready yet", "content": _ERROR},
            },
        }
    },
}
