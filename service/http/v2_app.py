"""Open Inference Protocol (KServe V2) REST routes, mounted on the service at /v2.

    GET  /v2                                  server metadata
    GET  /v2/health/live | /v2/health/ready   liveness / readiness, by status code only
    GET  /v2/models/{name}[/versions/{v}]         model metadata (tensor names, types, shapes)
    GET  /v2/models/{name}[/versions/{v}]/ready   model readiness
    GET  /v2/models/{name}[/versions/{v}]/config  Triton's model configuration (as Triton's JSON)
    POST /v2/models/{name}[/versions/{v}]/infer   inference (JSON or binary tensor data)

Every model in models/ is served. Digit classifiers take `pixels` [-1, 28, 28] (FP32, or UINT8,
raw 0..255 values, white ink on black; the service normalizes them as the card says) and
answer `probabilities` FP32 [-1, 10] and `digit` INT64 [-1]. The character model takes `ids`
INT64 [-1, -1] (vocabulary indices) and optionally either `state` FP32 [rows, -1, hidden] (zeros
when absent) or `carried_state` BYTES [-1] (one carried state per row of `ids`: the ASCII string
that /next_char and /generate answer as `state`, service/engine/carried_state.py), and answers
`logits` FP32 [-1, -1, vocab], `state_out` (to be fed back as `state`) and `carried_state_out`
BYTES [-1] (to be fed back as `carried_state`, or as `state` to the native routes). The carried
state is the same string on every interface, so a text begun on one continues on another; it is
checked (integrity tag, model identity) before anything is queued, and it is computed only when
the request wants `carried_state_out` (a request that names its outputs and leaves it out does
not pay for the encoding).
Errors are `{"error": "..."}` with 400 (bad request), 404 (unknown model or version), 415, or
503 + Retry-After (not ready, or overloaded); the status comes from the one table in
service/errors.py. Everything after decoding is the shared pipeline (service/engine/pipeline.py).
Health answers carry bodies as well as statuses (`{"live": true}`, `{"ready": true}`): Triton's
client reads the status, KServe's reads the body.
The config route is Triton's addition to the protocol (perf_analyzer and Triton's clients ask
it before anything else): the model configuration a Triton user would read, derived from the
metadata, the card and the settings (`model_config`). Starlette's own refusals (unknown path,
wrong method) come in the protocol's shape too, a 405 with the `Allow` header RFC 9110 asks for.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from service import __version__, errors
from service.engine.control_plane import load_policy
from service.engine.pipeline import Pipelines, ServingState
from service.errors import BadInput, ServiceError, UnknownModel, short
from service.http.kernel import (
    JSON,
    OCTET_STREAM,
    accepted_media_type,
    as_response,
    internal_error,
    refusal_response,
)
from service.http.v2_protocol import (
    BYTES,
    HEADER_LENGTH,
    InferRequest,
    check_outputs,
    encode_infer_response,
    parse_infer_request,
)
from service.metrics import observe_lean_request
from service.model.inference import CharModel, DigitClassifier, LoadedModel
from service.model.repository import VersionPolicy
from service.model.runtime import CUDA_PROVIDER_OPTIONS
from service.settings import Settings

MOUNT_PATH = "/v2"
# Triton's names for our two runtimes (its model configuration's platform and backend), so that
# metadata and config read as Triton's would for the same files: TorchScript is
# `pytorch_libtorch` on the `pytorch` backend (Triton has no `pytorch_torchscript`).
PLATFORMS = {"onnx": "onnxruntime_onnx", "torchscript": "pytorch_libtorch"}
BACKENDS = {"onnx": "onnxruntime", "torchscript": "pytorch"}
DIGIT_INPUTS = {"pixels"}  # every one required
DIGIT_OUTPUTS = ["probabilities", "digit", "confident"]
CARRIED_OUT = "carried_state_out"
CHAR_INPUTS = {"ids", "state", "carried_state"}
CHAR_REQUIRED = {"ids"}  # a state, raw or carried, is optional: zeros when absent
CHAR_OUTPUTS = ["logits", "state_out", CARRIED_OUT]
logger = logging.getLogger("rnnserve")


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status, headers, media_type="application/json")


def _tensor_meta(name: str, datatype: str, shape: list[int]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape}


def model_metadata(model: LoadedModel, versions: list[int] | None = None) -> dict[str, Any]:
    if isinstance(model, DigitClassifier):
        inputs = [_tensor_meta("pixels", "FP32", [-1, 28, 28])]
        outputs = [
            _tensor_meta("probabilities", "FP32", [-1, 10]),
            _tensor_meta("digit", "INT64", [-1]),
            _tensor_meta("confident", "BOOL", [-1]),
        ]
    else:
        assert isinstance(model, CharModel)
        state = [model.state_rows, -1, model.hidden]
        inputs = [
            _tensor_meta("ids", "INT64", [-1, -1]),
            _tensor_meta("state", "FP32", state),
            _tensor_meta("carried_state", BYTES, [-1]),
        ]
        outputs = [
            _tensor_meta("logits", "FP32", [-1, -1, len(model.vocab)]),
            _tensor_meta("state_out", "FP32", state),
            _tensor_meta(CARRIED_OUT, BYTES, [-1]),
        ]
    return {
        "name": model.name,
        # every served version, newest first (the metadata of one version names that one)
        "versions": [str(v) for v in (versions or [model.version])],
        "platform": PLATFORMS.get(model.backend_name, model.backend_name),
        "inputs": inputs,
        "outputs": outputs,
    }


def required_inputs(model: LoadedModel) -> set[str]:
    """The inputs a request must send (the others in the metadata are optional): the same sets
    the inference route checks, so that the config's `optional` cannot drift from them."""
    return DIGIT_INPUTS if isinstance(model, DigitClassifier) else CHAR_REQUIRED


def max_batch_size(model: LoadedModel, settings: Settings) -> int:
    """Triton's `max_batch_size`: the largest batch, along a first axis the config's dims leave
    out, that the server takes in one request and forms in one model call.

    Digits: with batching on, the batcher's RNNSERVE_MAX_BATCH_SIZE images a call (capped by
    what one request may carry, RNNSERVE_MAX_IMAGES_PER_REQUEST, so a client that sends the
    advertised size is never refused); with batching off every request is one call, so one
    request's limit. The character model: 0, Triton's "no batch axis", with full shapes. Its
    `state` is (state rows, rows, hidden), the rows on axis 1, and Triton puts the batch axis
    first on every tensor, so no max_batch_size > 0 can describe it; the rows a request may
    carry (RNNSERVE_MAX_CHAR_ROWS) are in the config's `parameters` instead, and concurrent
    requests are still merged by the text loop."""
    if not isinstance(model, DigitClassifier):
        return 0
    per_request = settings.max_images_per_request
    return min(settings.max_batch_size, per_request) if settings.batching else per_request


def request_rows(model: LoadedModel, settings: Settings) -> int:
    """The most rows (images, or sequences of ids) one inference request may carry."""
    if isinstance(model, DigitClassifier):
        return settings.max_images_per_request
    return settings.max_char_rows


def queue_bound(model: LoadedModel, settings: Settings) -> int:
    """What may wait for the model: images for a digit model (a one-image request is one
    entry), requests for the text loop."""
    if isinstance(model, DigitClassifier):
        return settings.max_queued_images
    return settings.max_queued_text


def config_type(datatype: str) -> str:
    """A V2 datatype as Triton's model configuration names it (BYTES is TYPE_STRING there)."""
    return "TYPE_STRING" if datatype == BYTES else f"TYPE_{datatype}"


def _dims(tensor: dict[str, Any], batched: bool) -> dict[str, Any]:
    """The metadata's shape as the config's `dims`: without its batch axis when the config
    declares one. One value per batch item (`digit`, [-1]) leaves no dims, which Triton refuses
    (dims may not be empty): it writes that as dims [1] reshaped to a scalar, and so do we."""
    shape: list[int] = tensor["shape"]
    if not batched:
        return {"dims": shape}
    assert shape[0] == -1, f"{tensor['name']}: the batch axis must come first"
    if len(shape) == 1:
        return {"dims": [1], "reshape": {"shape": []}}
    return {"dims": shape[1:]}


def dynamic_batching(model: LoadedModel, settings: Settings) -> dict[str, Any]:
    """Triton's dynamic batcher settings that describe ours (service/engine/admission.py).

    Triton's `max_queue_delay_microseconds` is how long a request is held back for company;
    ours never is (the first request runs at once, those arriving meanwhile go together in the
    next call), so it is 0 whatever the settings. Our bound is on the wait instead: a request
    that has waited RNNSERVE_MAX_QUEUE_WAIT_MS when its turn comes is refused with a 503, which
    is Triton's default queue policy with a timeout and REJECT (no per-request override), and
    the queue is bounded (503 beyond, as Triton's max_queue_size)."""
    return {
        "preferred_batch_size": [],
        "max_queue_delay_microseconds": 0,
        "preserve_ordering": False,
        "priority_levels": 0,
        "default_priority_level": 0,
        "default_queue_policy": {
            "timeout_action": "REJECT",
            "default_timeout_microseconds": settings.max_queue_wait_ms * 1000,
            "allow_timeout_override": False,
            "max_queue_size": queue_bound(model, settings),
        },
        "priority_queue_policy": {},
    }


def model_config(model: LoadedModel, settings: Settings, device: str) -> dict[str, Any]:
    """Triton's model configuration of `model`, as Triton's HTTP API answers it: the
    ModelConfig protobuf as JSON with its field names, every scalar field present, int64
    values as numbers (Triton's ModelConfigToJson). Built from `model_metadata`, so that the
    two routes cannot disagree on names, types or shapes, and from the card and the settings,
    so that it says what this server does as configured (nothing is written per model)."""
    meta = model_metadata(model)
    batch = max_batch_size(model, settings)
    required = required_inputs(model)
    gpu = device == "cuda"
    config: dict[str, Any] = {
        "name": model.name,
        "platform": meta["platform"],
        "backend": BACKENDS.get(model.backend_name, model.backend_name),
        "version_policy": VersionPolicy.parse(settings.version_policy).triton(),
        "max_batch_size": batch,
        "input": [
            {
                "name": tensor["name"],
                "data_type": config_type(tensor["datatype"]),
                "format": "FORMAT_NONE",
                **_dims(tensor, batch > 0),
                "is_shape_tensor": False,
                "allow_ragged_batch": False,
                "optional": tensor["name"] not in required,
            }
            for tensor in meta["inputs"]
        ],
        "output": [
            {
                "name": tensor["name"],
                "data_type": config_type(tensor["datatype"]),
                **_dims(tensor, batch > 0),
                "label_filename": "",
                "is_shape_tensor": False,
            }
            for tensor in meta["outputs"]
        ],
        "batch_input": [],
        "batch_output": [],
        # each worker process holds one session of every model, on the device it chose
        "instance_group": [
            {
                "name": model.name,
                "kind": "KIND_GPU" if gpu else "KIND_CPU",
                "count": settings.workers,
                "gpus": [CUDA_PROVIDER_OPTIONS["device_id"]] if gpu else [],
                "secondary_devices": [],
                "profile": [],
                "passive": False,
                "host_policy": "",
            }
        ],
        "default_model_filename": model.card.data["files"][model.backend_name]["path"],
        "cc_model_filenames": {},
        "metric_tags": {},
        # not Triton's: the bound max_batch_size cannot say (see max_batch_size)
        "parameters": {
            "max_request_rows": {"string_value": str(request_rows(model, settings))},
        },
        "model_warmup": [],
        "model_transaction_policy": {"decoupled": False},  # one answer per request
    }
    if settings.batching:  # off: each request is one model call, Triton's default scheduler
        config["dynamic_batching"] = dynamic_batching(model, settings)
    return config


def _only_inputs(request: InferRequest, allowed: set[str], required: set[str]) -> None:
    unknown = sorted(set(request.inputs) - allowed)
    if unknown:
        raise BadInput(f"unknown input(s) {unknown[:5]}; this model takes {sorted(allowed)}")
    missing = sorted(required - set(request.inputs))
    if missing:
        raise BadInput(f"missing input(s) {missing}")


async def infer_digits(
    pipelines: Pipelines, model: DigitClassifier, request: InferRequest
) -> dict[str, np.ndarray]:
    """Through the model's continuous batcher, shared with every other digit route."""
    _only_inputs(request, DIGIT_INPUTS, DIGIT_INPUTS)
    if request.datatypes["pixels"] not in ("FP32", "FP64", "UINT8"):
        raise BadInput("input 'pixels': datatype must be FP32 (or UINT8 / FP64)")
    pixels = request.inputs["pixels"]
    if pixels.ndim != 3:  # the pipeline also takes one 28x28; V2's contract is [-1, 28, 28]
        raise BadInput(f"input 'pixels': shape must be [N, 28, 28]; got {list(pixels.shape)}")
    try:
        answer = await pipelines.classify(pixels, model.name, model.version)
    except ServiceError as exc:
        if not isinstance(exc, errors.Overloaded | errors.NotReady):
            exc.message = f"input 'pixels': {exc.message}"
        raise
    probabilities = answer.probabilities.astype(np.float32)
    return {
        "probabilities": probabilities,
        "digit": probabilities.argmax(axis=1).astype(np.int64),
        "confident": answer.confident,
    }


def carried_states(request: InferRequest) -> list[object] | None:
    """The `carried_state` input as one string per row (the pipeline checks the count and each
    state). Binary BYTES elements arrive as bytes: a state is ASCII, so anything else is a
    damaged one, said here rather than as a puzzling integrity failure."""
    if "carried_state" not in request.inputs:
        return None
    if request.datatypes["carried_state"] != BYTES:
        raise BadInput(
            "input 'carried_state': datatype must be BYTES (the strings of an earlier "
            "answer's carried_state_out, or of /next_char's `state`)"
        )
    tensor = request.inputs["carried_state"]
    if tensor.ndim != 1:
        raise BadInput(
            f"input 'carried_state': shape must be [rows], one state per row of ids; got "
            f"{list(tensor.shape)}"
        )
    states: list[object] = []
    for i, item in enumerate(tensor):
        if isinstance(item, bytes):
            try:
                item = item.decode("ascii")
            except UnicodeDecodeError:
                raise BadInput(
                    f"carried_state[{i}]: a carried state is ASCII text and this one is not "
                    "(send it back exactly as an earlier answer gave it)"
                ) from None
        states.append(item)
    return states


async def infer_chars(
    pipelines: Pipelines, model: CharModel, request: InferRequest
) -> dict[str, np.ndarray]:
    _only_inputs(request, CHAR_INPUTS, CHAR_REQUIRED)
    if request.datatypes["ids"] not in ("INT64", "INT32"):
        raise BadInput("input 'ids': datatype must be INT64 (or INT32)")
    if "state" in request.inputs and request.datatypes["state"] not in ("FP32", "FP64"):
        raise BadInput("input 'state': datatype must be FP32")
    wants_carried = not request.outputs or CARRIED_OUT in request.outputs
    steps = await pipelines.char_logits(
        request.inputs["ids"],
        request.inputs.get("state"),
        carried_states(request),
        carried_out=wants_carried,
        version=model.version,
    )
    outputs = {
        "logits": steps.logits.astype(np.float32),
        "state_out": steps.state.astype(np.float32),
    }
    if wants_carried:
        outputs[CARRIED_OUT] = np.array(steps.carried, dtype=object)
    return outputs


async def infer(
    pipelines: Pipelines, model: LoadedModel, request: InferRequest
) -> dict[str, np.ndarray]:
    """A decoded inference request on `model`, whatever the transport (REST or gRPC): its
    requested outputs checked before the model runs, then the model kind's pipeline."""
    if isinstance(model, DigitClassifier):
        check_outputs(request, DIGIT_OUTPUTS)
        return await infer_digits(pipelines, model, request)
    assert isinstance(model, CharModel)
    check_outputs(request, CHAR_OUTPUTS)
    return await infer_chars(pipelines, model, request)


def find_model(pipelines: Pipelines, name: str, version: str | None) -> LoadedModel:
    """`name` (or its alias) at `version` (V2 versions are strings of the integer), or its
    newest served version."""
    registry = pipelines.registry
    served = sorted({m.name for m in registry.served.models()})
    newest = registry.find(name)
    if newest is None:
        raise UnknownModel(f"unknown model {short(name)}; this server has {served}")
    if version is None:
        return newest
    number = int(version) if version.isdecimal() and len(version) < 10 else None
    model = registry.find(name, number) if number is not None else None
    if model is None:
        raise UnknownModel(
            f"model {newest.name!r} has no version {version[:64]!r} loaded; it serves "
            f"{[str(v) for v in registry.version_list(newest.name)]}"
        )
    return model


Handler = Callable[[Request, Pipelines, LoadedModel], Awaitable[Response]]


class V2Routes:
    """The V2 routes of one worker, wired to its pipelines through `state` (filled at
    start-up). Every answer, error or not, is JSON in the protocol's shape; an unexpected
    failure is a logged 500, never Starlette's plain-text page."""

    def __init__(self, state: ServingState) -> None:
        self.state = state

    def model_route(self, handler: Handler, label: str) -> Callable[[Request], Awaitable[Response]]:
        async def route(request: Request) -> Response:
            started = time.perf_counter()
            response = await self.guarded(request, handler, label)
            observe_lean_request(label, response.status_code, started)
            return response

        return route

    async def guarded(self, request: Request, handler: Handler, label: str) -> Response:
        try:
            pipelines = self.state.require()
            params = request.path_params
            try:
                model = find_model(pipelines, params["name"], params.get("version"))
            except UnknownModel:
                if handler is get_model_ready and (unready := self.unready(params)) is not None:
                    return unready
                raise
            return await handler(request, pipelines, model)
        except ServiceError as exc:
            return refusal_response(label, exc, v2=True)
        except (errors.ClientGone, ClientDisconnect):  # nobody reads this; Starlette would
            return Response(status_code=499)  # log a traceback
        except Exception:
            return as_response(*internal_error(f"{request.method} {label}", v2=True))

    def unready(self, params: dict[str, Any]) -> Response | None:
        """Readiness of a version model control knows and does not serve (loading, refused,
        unloaded): `ready: false` with its state and reason, a 503 as for the server's
        readiness (tritonclient reads any status but 200 as not ready)."""
        control = self.state.control
        version = params.get("version")
        if control is None or version is None or not version.isdecimal() or len(version) > 9:
            return None
        known = control.control.version_state(params["name"], int(version))
        if known is None:
            return None
        body = {"name": params["name"], "ready": False, "state": known.state}
        if known.reason:
            body["reason"] = known.reason
        return json_response(body, 503)

    async def server_metadata(self, _: Request) -> Response:
        return json_response(
            {"name": "rnnserve", "version": __version__, "extensions": ["binary_tensor_data"]}
        )

    async def live(self, _: Request) -> Response:
        return json_response({"live": True})

    async def ready(self, _: Request) -> Response:
        ready = self.state.pipelines is not None
        return json_response({"ready": ready}, 200 if ready else 503)

    # ------------------------------------------------------------------ model control

    def control_route(
        self, action: Callable[[Request, Any], Awaitable[Response]], label: str
    ) -> Callable[[Request], Awaitable[Response]]:
        async def route(request: Request) -> Response:
            started = time.perf_counter()
            try:
                self.state.require()
                control = self.state.control
                if control is None:
                    raise errors.NotReady("model control is starting; retry shortly")
                response = await action(request, control)
            except ServiceError as exc:
                response = refusal_response(label, exc, v2=True)
            except (errors.ClientGone, ClientDisconnect):
                response = Response(status_code=499)
            except Exception:
                response = as_response(*internal_error(f"{request.method} {label}", v2=True))
            observe_lean_request(label, response.status_code, started)
            return response

        return route

    def app(self) -> Starlette:
        routes = [
            Route("/", self.server_metadata, methods=["GET"]),
            Route("/health/live", self.live, methods=["GET"]),
            Route("/health/ready", self.ready, methods=["GET"]),
            Route(
                "/repository/index",
                self.control_route(repository_index, "/v2 repository index"),
                methods=["POST"],
            ),
            Route(
                "/repository/models/{name}/load",
                self.control_route(repository_load, "/v2 repository load"),
                methods=["POST"],
            ),
            Route(
                "/repository/models/{name}/unload",
                self.control_route(repository_unload, "/v2 repository unload"),
                methods=["POST"],
            ),
        ]
        for prefix in ("/models/{name}", "/models/{name}/versions/{version}"):
            routes += [
                Route(
                    prefix, self.model_route(get_model_metadata, "/v2 metadata"), methods=["GET"]
                ),
                Route(
                    f"{prefix}/ready",
                    self.model_route(get_model_ready, "/v2 ready"),
                    methods=["GET"],
                ),
                Route(
                    f"{prefix}/config",
                    self.model_route(get_model_config, "/v2 config"),
                    methods=["GET"],
                ),
                Route(
                    f"{prefix}/infer", self.model_route(post_infer, "/v2 infer"), methods=["POST"]
                ),
            ]
        return Starlette(routes=routes, exception_handlers={HTTPException: http_error})


async def get_model_metadata(
    request: Request, pipelines: Pipelines, model: LoadedModel
) -> Response:
    """A model's metadata lists every version it serves; one version's, that version."""
    versioned = bool(request.path_params.get("version"))
    versions = None if versioned else pipelines.registry.version_list(model.name)
    return json_response(model_metadata(model, versions))


async def get_model_config(_: Request, pipelines: Pipelines, model: LoadedModel) -> Response:
    return json_response(model_config(model, pipelines.settings, pipelines.registry.device.device))


async def get_model_ready(_: Request, pipelines: Pipelines, model: LoadedModel) -> Response:
    return json_response({"name": model.name, "ready": True})


async def control_body(request: Request, allowed: set[str]) -> dict[str, Any]:
    """A repository call's optional JSON body (Triton's): `parameters` we act on, refused
    when they ask for what this server does not do (a config override, files in the body)."""
    body = await request.body()
    if not body.strip():
        return {}
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadInput("the body must be JSON (or empty)") from None
    if not isinstance(data, dict):
        raise BadInput("the body must be a JSON object")
    unknown = sorted(set(data) - {"parameters", "ready"})
    parameters = data.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadInput("'parameters' must be an object")
    unknown += sorted(f"parameters.{k}" for k in set(parameters) - allowed)
    if unknown:
        raise BadInput(
            f"{unknown[:5]} not supported: a version is loaded from the repository folder, "
            "as exported and verified (no configuration or files in the request)"
        )
    return data


async def repository_index(request: Request, control: Any) -> Response:
    data = await control_body(request, set())
    ready = data.get("ready", False)
    if not isinstance(ready, bool):
        raise BadInput("'ready' must be true or false")
    return json_response(control.index(ready_only=ready))


async def repository_load(request: Request, control: Any) -> Response:
    data = await control_body(request, {"config"})
    policy = load_policy((data.get("parameters") or {}).get("config"))
    await control.load(request.path_params["name"], policy)
    return Response(b"", status_code=200)


async def repository_unload(request: Request, control: Any) -> Response:
    await control_body(request, {"unload_dependents"})
    await control.unload(request.path_params["name"])
    return Response(b"", status_code=200)


async def post_infer(request: Request, pipelines: Pipelines, model: LoadedModel) -> Response:
    accepted_media_type(
        request.headers.raw,
        (JSON, OCTET_STREAM),
        "binary tensor data: octet-stream with Inference-Header-Content-Length",
    )
    body = await request.body()
    header_length = request.headers.get(HEADER_LENGTH)
    parsed = await pipelines.parse(lambda b: parse_infer_request(b, header_length), body)
    outputs = await infer(pipelines, model, parsed)
    payload, json_length = encode_infer_response(model.name, str(model.version), parsed, outputs)
    if json_length is None:
        return Response(payload, media_type="application/json")
    return Response(
        payload,
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(json_length)},
    )


async def http_error(_: Request, exc: Exception) -> Response:
    """Starlette's refusals (404: no such route; 405: a route that takes other methods) in the
    protocol's shape, keeping the headers Starlette set: a 405 must name the methods the route
    takes in `Allow` (RFC 9110, 15.5.6). Starlette lists them from a set, in no fixed order:
    sorted here, so the answer is the same on every worker."""
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    if "Allow" in headers:
        headers["Allow"] = ", ".join(sorted(m.strip() for m in headers["Allow"].split(",")))
    return json_response({"error": str(exc.detail)}, exc.status_code, headers)


def v2_app(state: ServingState) -> Starlette:
    return V2Routes(state).app()


class V2RootMiddleware:
    """`GET /v2` is the server-metadata route, but a Starlette mount only matches `/v2/...`
    (and would redirect `/v2` with a 307, which V2 clients do not follow): route it inside."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path") == MOUNT_PATH:
            scope = {**scope, "path": MOUNT_PATH + "/", "raw_path": (MOUNT_PATH + "/").encode()}
        await self.app(scope, receive, send)
