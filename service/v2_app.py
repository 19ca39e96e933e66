"""Open Inference Protocol (KServe V2) REST routes, mounted on the service at /v2.

    GET  /v2                                  server metadata
    GET  /v2/health/live | /v2/health/ready   liveness / readiness, by status code only
    GET  /v2/models/{name}[/versions/{v}]         model metadata (tensor names, types, shapes)
    GET  /v2/models/{name}[/versions/{v}]/ready   model readiness
    POST /v2/models/{name}[/versions/{v}]/infer   inference (JSON or binary tensor data)

Every model in models/ is served. Digit classifiers take `pixels` [-1, 28, 28] (FP32, or UINT8,
raw 0..255 values, white ink on black; the service normalizes them as the card says) and
answer `probabilities` FP32 [-1, 10] and `digit` INT64 [-1]. The character model takes `ids`
INT64 [-1, -1] (vocabulary indices) and optionally `state` FP32 [rows, -1, hidden] (zeros when
absent), and answers `logits` FP32 [-1, -1, vocab] and `state_out`, to be fed back as `state`.
Errors are `{"error": "..."}` with 400 (bad request), 404 (unknown model or version) or 503.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import bentoml
import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from service import __version__
from service.inference import CharModel, DigitClassifier, LoadedModel, ModelRegistry
from service.lean_digits import batcher_for, check_pixel_values, observe_request
from service.preprocess import InputError
from service.settings import get_settings
from service.v2_protocol import (
    HEADER_LENGTH,
    InferRequest,
    V2Error,
    encode_infer_response,
    parse_infer_request,
)

MOUNT_PATH = "/v2"
PLATFORMS = {"onnx": "onnxruntime_onnx", "torchscript": "pytorch_torchscript"}


def error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _registry() -> ModelRegistry | None:
    service = bentoml.get_current_service()
    if service is None or not getattr(service, "ready", False):
        return None
    return getattr(service, "registry", None)


def _tensor_meta(name: str, datatype: str, shape: list[int]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape}


def model_metadata(model: LoadedModel) -> dict[str, Any]:
    if isinstance(model, DigitClassifier):
        inputs = [_tensor_meta("pixels", "FP32", [-1, 28, 28])]
        outputs = [
            _tensor_meta("probabilities", "FP32", [-1, 10]),
            _tensor_meta("digit", "INT64", [-1]),
        ]
    else:
        assert isinstance(model, CharModel)
        state = [model.state_rows, -1, model.hidden]
        inputs = [_tensor_meta("ids", "INT64", [-1, -1]), _tensor_meta("state", "FP32", state)]
        outputs = [
            _tensor_meta("logits", "FP32", [-1, -1, len(model.vocab)]),
            _tensor_meta("state_out", "FP32", state),
        ]
    return {
        "name": model.name,
        "versions": [str(model.card.data["version"])],
        "platform": PLATFORMS.get(model.backend_name, model.backend_name),
        "inputs": inputs,
        "outputs": outputs,
    }


def _only_inputs(request: InferRequest, allowed: set[str], required: set[str]) -> None:
    unknown = sorted(set(request.inputs) - allowed)
    if unknown:
        raise V2Error(f"unknown input(s) {unknown}; this model takes {sorted(allowed)}")
    missing = sorted(required - set(request.inputs))
    if missing:
        raise V2Error(f"missing input(s) {missing}")


def digit_inputs(request: InferRequest) -> np.ndarray:
    """The validated `pixels` tensor of a digit request, float32 (N, 28, 28) on 0..255."""
    _only_inputs(request, {"pixels"}, {"pixels"})
    pixels = request.inputs["pixels"]
    if request.datatypes["pixels"] not in ("FP32", "FP64", "UINT8"):
        raise V2Error("input 'pixels': datatype must be FP32 (or UINT8 / FP64)")
    limit = get_settings().max_images_per_request
    if pixels.ndim != 3 or pixels.shape[1:] != (28, 28) or not 1 <= pixels.shape[0] <= limit:
        raise V2Error(
            f"input 'pixels': shape must be [N, 28, 28] with 1 <= N <= {limit}; "
            f"got {list(pixels.shape)}"
        )
    values = pixels.astype(np.float32, copy=False)
    try:
        check_pixel_values(values)
    except InputError as exc:
        raise V2Error(f"input 'pixels': {exc}") from None
    return values


async def infer_digits(model: DigitClassifier, request: InferRequest) -> dict[str, np.ndarray]:
    """Through the worker's continuous batcher for the model, shared with POST /v1/digits."""
    probabilities = (await batcher_for(model).predict(digit_inputs(request))).astype(np.float32)
    return {"probabilities": probabilities, "digit": probabilities.argmax(axis=1).astype(np.int64)}


def infer_chars(model: CharModel, request: InferRequest) -> dict[str, np.ndarray]:
    _only_inputs(request, {"ids", "state"}, {"ids"})
    if request.datatypes["ids"] not in ("INT64", "INT32"):
        raise V2Error("input 'ids': datatype must be INT64")
    ids = request.inputs["ids"].astype(np.int64, copy=False)
    settings = get_settings()
    if ids.ndim != 2 or ids.shape[0] < 1 or not 1 <= ids.shape[1] <= settings.max_text_chars:
        raise V2Error(
            f"input 'ids': shape must be [batch, length] with 1 <= length <= "
            f"{settings.max_text_chars}; got {list(ids.shape)}"
        )
    if ids.shape[0] > settings.max_images_per_request:
        raise V2Error(f"input 'ids': at most {settings.max_images_per_request} sequences")
    if ids.min() < 0 or ids.max() >= len(model.vocab):
        raise V2Error(f"input 'ids': ids must lie in 0..{len(model.vocab) - 1}")
    if "state" in request.inputs:
        state = request.inputs["state"].astype(np.float32, copy=False)
        expected = (model.state_rows, ids.shape[0], model.hidden)
        if state.shape != expected:
            raise V2Error(f"input 'state': shape must be {list(expected)}; got {list(state.shape)}")
        if not np.isfinite(state).all():
            raise V2Error("input 'state': values must be finite")
    else:
        state = model.fresh_state(ids.shape[0])
    logits, state_out = model.run({"ids": np.ascontiguousarray(ids), "state": state}, len(ids))
    return {"logits": logits.astype(np.float32), "state_out": state_out.astype(np.float32)}


def find_model(registry: ModelRegistry, name: str, version: str | None) -> LoadedModel:
    models: dict[str, LoadedModel] = dict(registry.digits)
    if registry.char is not None:
        models[registry.char.name] = registry.char
    model = models.get(registry.aliases.get(name, name))
    if model is None:
        raise V2Error(f"unknown model {name!r}; this server has {sorted(models)}", 404)
    if version is not None and version != str(model.card.data["version"]):
        raise V2Error(
            f"model {name!r} has no version {version!r}; it has {model.card.data['version']!r}",
            404,
        )
    return model


def _with_model(
    handler: Callable[[Request, LoadedModel], Awaitable[Response]], route_label: str
) -> Callable[[Request], Awaitable[Response]]:
    async def route(request: Request) -> Response:
        started = time.perf_counter()
        response = await answer(request)
        observe_request(route_label, response.status_code, started)
        return response

    async def answer(request: Request) -> Response:
        registry = _registry()
        if registry is None:
            return error("the server is not ready yet", 503)
        params = request.path_params
        try:
            model = find_model(registry, params["name"], params.get("version"))
            return await handler(request, model)
        except V2Error as exc:
            return error(str(exc), exc.status)

    return route


async def get_model_metadata(_: Request, model: LoadedModel) -> Response:
    return JSONResponse(model_metadata(model))


async def get_model_ready(_: Request, model: LoadedModel) -> Response:
    return Response(status_code=200)


async def post_infer(request: Request, model: LoadedModel) -> Response:
    body = await request.body()
    parsed = parse_infer_request(body, request.headers.get(HEADER_LENGTH))
    if isinstance(model, DigitClassifier):
        outputs = await infer_digits(model, parsed)
    else:
        assert isinstance(model, CharModel)
        outputs = await run_in_threadpool(infer_chars, model, parsed)
    version = str(model.card.data["version"])
    payload, header_length = encode_infer_response(model.name, version, parsed, outputs)
    if header_length is None:
        return Response(payload, media_type="application/json")
    return Response(
        payload,
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(header_length)},
    )


async def server_metadata(_: Request) -> Response:
    return JSONResponse(
        {"name": "rnnserve", "version": __version__, "extensions": ["binary_tensor_data"]}
    )


async def live(_: Request) -> Response:
    return Response(status_code=200)


async def ready(_: Request) -> Response:
    return Response(status_code=200 if _registry() is not None else 503)


async def http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error(str(exc.detail), exc.status_code)


def _model_routes(prefix: str) -> list[Route]:
    return [
        Route(prefix, _with_model(get_model_metadata, "/v2 metadata"), methods=["GET"]),
        Route(f"{prefix}/ready", _with_model(get_model_ready, "/v2 ready"), methods=["GET"]),
        Route(f"{prefix}/infer", _with_model(post_infer, "/v2 infer"), methods=["POST"]),
    ]


v2_app = Starlette(
    routes=[
        Route("/", server_metadata, methods=["GET"]),
        Route("/health/live", live, methods=["GET"]),
        Route("/health/ready", ready, methods=["GET"]),
        *_model_routes("/models/{name}"),
        *_model_routes("/models/{name}/versions/{version}"),
    ],
    exception_handlers={HTTPException: http_error},
)


class V2RootMiddleware:
    """`GET /v2` is the server-metadata route, but a Starlette mount only matches `/v2/...`
    (and would redirect `/v2` with a 307, which V2 clients do not follow): route it inside."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path") == MOUNT_PATH:
            scope = {**scope, "path": MOUNT_PATH + "/", "raw_path": (MOUNT_PATH + "/").encode()}
        await self.app(scope, receive, send)
