"""The lean digit route: POST /v1/digits, the hot path (one request, one or a few digits).

Why a route beside `/classify_pixels`: profiling one-digit requests under load showed most of a
worker's time outside the model, in BentoML's generic request path (pydantic validation of
784 floats as nested models, the dispatcher, per-request metrics, tracing and access-log
middleware, response schema handling). This route is a plain ASGI app mounted on the service:
it parses the body straight into a numpy array, validates it with numpy, and hands it to a
continuous batcher; BentoML's access log and tracing skip it (see service/http/service.py) and
it keeps its own Prometheus metrics.

Inputs (values are raw pixels, white ink on black, as in MNIST):
- `application/json`: `{"pixels": <28x28 or Nx28x28 numbers>, "model": "bigru", "scale":
  "0-255"|"0-1"}`; integers (uint8 0..255) are the compact form, floats are accepted.
- `application/octet-stream`: the raw tensor, little-endian, C order, with headers
  `X-Tensor-Shape: N,28,28` (or `28,28`) and `X-Tensor-Datatype: UINT8` (default) or `FP32`,
  model in the query (`?model=rnn`). In the spirit of Triton's binary tensor extension.
Answer: `{"model", "model_version", "provider", "digits": [N ints], "confident": [N bools],
"probabilities": [[10 floats] x N]}` (confident: see DigitPrediction in service/http/schemas.py).
"""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import parse_qs

import numpy as np
import orjson
from starlette.types import Receive, Scope, Send

from service.engine.pipeline import LARGE_BODY_BYTES, Classified, ServingState
from service.engine.validation import parse_shape
from service.errors import BadInput
from service.http.asgi import read_body
from service.http.kernel import (
    JSON,
    OCTET_STREAM,
    Headers,
    accepted_media_type,
    answer,
    error_responses,
    json_object,
)
from service.http.schemas import ROW_SCHEMA
from service.http.v2_protocol import DATATYPES as V2_DATATYPES

# the binary body's datatypes: a subset of the V2 protocol's names and byte layouts
DATATYPES: dict[str, np.dtype[Any]] = {name: V2_DATATYPES[name] for name in ("UINT8", "FP32")}
ROUTE = "/v1/digits"
FIELDS = ("pixels", "model", "scale")


def parse_json(body: bytes) -> tuple[np.ndarray, str | None]:
    usage = '{"pixels": <28x28 or Nx28x28 numbers>, "model": ...}'
    data = json_object(body, FIELDS, usage, required=("pixels",))
    if b"true" in body or b"false" in body:  # no field is boolean; numpy would read 1 and 0
        raise BadInput("'pixels' must hold numbers only (no true/false)")
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise BadInput("'model' must be a string")
    scale = data.get("scale", "0-255")
    if scale not in ("0-255", "0-1"):
        raise BadInput("'scale' must be '0-255' or '0-1'")
    try:
        array = np.asarray(data["pixels"])
    except ValueError:
        raise BadInput("'pixels' is ragged: every row needs 28 values") from None
    if array.dtype.kind not in "iuf":
        raise BadInput("'pixels' must hold numbers only")
    try:
        images = array.astype(np.float32, copy=False)
    except OverflowError:
        raise BadInput("pixel values must lie in 0..255") from None
    if scale == "0-1":
        if images.size and (images.min() < 0 or images.max() > 1):
            raise BadInput("pixel values must lie in 0..1 for scale '0-1'")
        images = images * np.float32(255.0)
    return images, model


def parse_binary(body: bytes, headers: dict[bytes, bytes], name: str) -> np.ndarray:
    """The raw tensor body; `name` is the already-checked X-Tensor-Datatype."""
    shape_text = headers.get(b"x-tensor-shape")
    if shape_text is None:
        raise BadInput("send the header X-Tensor-Shape: N,28,28 (or 28,28)")
    shape = parse_shape(shape_text.decode("latin-1"), "X-Tensor-Shape")
    dtype = DATATYPES[name]
    if len(body) != math.prod(shape) * dtype.itemsize:
        raise BadInput(
            f"the body has {len(body)} bytes; shape {list(shape)} of {name} needs "
            f"{math.prod(shape) * dtype.itemsize}"
        )
    return np.frombuffer(body, dtype=dtype).reshape(shape).astype(np.float32)


class LeanDigitsApp:
    """ASGI app for POST /v1/digits (see the module docstring)."""

    def __init__(self, state: ServingState) -> None:
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await answer(ROUTE, send, lambda: self._answer(scope, receive))

    async def _answer(self, scope: Scope, receive: Receive) -> tuple[bytes, Headers]:
        pipelines = self.state.require()
        body = await read_body(receive)  # BodyLimitMiddleware (outside) caps the size
        content_type = accepted_media_type(scope.get("headers", ()), (JSON, OCTET_STREAM))
        headers = dict(scope.get("headers", []))
        query = parse_qs(scope.get("query_string", b"").decode("utf-8", "replace"))
        query_model = query.get("model", [None])[0]
        datatype = headers.get(b"x-tensor-datatype", b"UINT8").decode("latin-1").upper()
        if datatype not in DATATYPES:  # checked whatever the body, so no typo goes unseen
            raise BadInput(f"X-Tensor-Datatype must be one of {sorted(DATATYPES)}")
        if content_type == JSON:
            images, model_name = (
                parse_json(body)  # inline when small: the hot path
                if len(body) <= LARGE_BODY_BYTES
                else await pipelines.parse(parse_json, body)
            )
            if model_name is not None and query_model not in (None, model_name):
                raise BadInput("the model is named twice (query and body), differently")
            model_name = model_name or query_model
        else:
            images = parse_binary(body, headers, datatype)
            model_name = query_model
        return encode(await pipelines.classify(images, model_name)), []


def encode(answer: Classified) -> bytes:
    probs = answer.probabilities
    return orjson.dumps(
        {
            "model": answer.model.name,
            "model_version": answer.model.version,
            "provider": answer.model.backend.provider,
            "digits": probs.argmax(axis=1),
            "confident": answer.confident,
            "probabilities": probs.astype(np.float32),
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )


# The route's OpenAPI fragment (service/http/openapi.py adds it to /docs.json)
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
                            "required": [
                                "model",
                                "model_version",
                                "provider",
                                "digits",
                                "probabilities",
                            ],
                            "properties": {
                                "model": {"type": "string"},
                                "model_version": {"type": "integer"},
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
            **error_responses(
                (400, "Invalid input (the message says what to change)"),
                (401, "Missing or invalid bearer token"),
                (413, "Body over RNNSERVE_MAX_REQUEST_BYTES"),
                (415, "Neither JSON nor a binary tensor"),
                (503, "Not ready yet, or overloaded (see Retry-After)"),
            ),
        },
    }
}
