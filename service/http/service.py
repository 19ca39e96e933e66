"""The rnnserve BentoML service: digit classification and next-character prediction.

    bentoml serve service.service:RnnServe          # or: make serve

Models come from RNNSERVE_MODEL_DIR (default: models/), verified against their cards and
warmed up before the worker reports ready. Every error answers {"error": ..., "detail": ...}.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import secrets
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar, cast

import bentoml
import numpy as np
from pydantic import Field
from starlette.responses import Response

from service.engine.control_plane import ControlPlane
from service.engine.coordination import default_directory as default_control_dir
from service.engine.pipeline import Pipelines, ServingState
from service.errors import ClientGone, ServiceError
from service.http.auth import BearerTokens
from service.http.bentoml_compat import (
    bind_api_methods,
    declare_json_outputs,
    install_request_lifetime,
    quiet_client_errors,
    skipped_paths,
)
from service.http.connections import ConnectionLimits, install_connection_limits
from service.http.grpc_v2.server import GrpcFrontEnd, check_port_free
from service.http.in_flight import InFlightMiddleware
from service.http.kernel import refusal_response
from service.http.meta_app import LEAN_PATH, META_PATHS, MOUNT_PATH, STREAM_PATH, meta_app
from service.http.middleware import (
    BearerAuthMiddleware,
    BodyLimitMiddleware,
    ErrorShapeMiddleware,
    HealthBodyMiddleware,
    WholeBodyMiddleware,
)
from service.http.openapi import OpenApiMiddleware, document_errors
from service.http.openapi_examples import live_examples
from service.http.route_inputs import InputGuard, declared_inputs, forbid_unknown_fields
from service.http.route_labels import install_templated_metrics
from service.http.schemas import (
    DEFAULT_DIGIT_MODEL,
    DEFAULT_K,
    DEFAULT_LENGTH,
    DEFAULT_SOFTMAX_TEMPERATURE,
    DEFAULT_TEMPERATURE,
    SETTINGS,
    CarriedState,
    DigitModelName,
    DigitPixels,
    DigitPrediction,
    GenerateLength,
    GenerateResponse,
    ImagePrediction,
    NextCharResponse,
    PromptText,
    SamplingTopK,
    Seed,
    SoftmaxTemperature,
    Temperature,
    TopK,
    describe_limit,
    digit_answer,
    generate_answer,
    next_char_answer,
)
from service.http.v2_app import MOUNT_PATH as V2_PATH
from service.http.v2_app import V2RootMiddleware, v2_app
from service.http.v2_openapi import v2_paths
from service.http.web_app import web_app
from service.log_bounds import install_bounded_logs
from service.metrics import observe_inference
from service.model.cards import CardError
from service.model.inference import ModelRegistry, preflight
from service.model.runtime import DeviceError

# The lean paths (the digit route, the stream, the V2 model routes) skip BentoML's access log and
# tracing (prefix match: a visible share of their cost under load, loadtest/profile_service.py);
# they count and time themselves (rnnserve_lean_*). BentoML's traffic metrics still see them,
# labelled by route template (service/http/route_labels.py).
LEAN_PATHS = [LEAN_PATH, STREAM_PATH, f"{V2_PATH}/models/"]
logger = logging.getLogger("rnnserve")
P = ParamSpec("P")
R = TypeVar("R")

try:
    CHECKED = preflight(SETTINGS)  # in every process that imports the service, workers too
except (CardError, DeviceError, FileNotFoundError) as exc:
    raise SystemExit(f"rnnserve cannot start: {exc}") from None

install_request_lifetime()
quiet_client_errors()
install_bounded_logs(SETTINGS.max_log_field_chars, SETTINGS.refusal_log_per_s)
install_connection_limits(ConnectionLimits.from_settings(SETTINGS))
# What the mounted apps use to reach this worker's models, filled in by RnnServe.__init__.
STATE = ServingState()


def tune_garbage_collector() -> None:
    """Keep the collector off the tail latency.

    Each pixel request allocates hundreds of small objects, so with CPython's default
    thresholds (700, 10, 10) a full collection ran every few dozen requests and walked
    everything the process had ever loaded, a long pause in the p99 at 32 clients. Freezing
    what start-up created takes it out of every collection, and a gen-0 threshold of 10,000
    makes collections much rarer (loadtest/bench_service.py shows the tail either way).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def answers_errors(method: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """An API method whose domain errors become our error response (status from the one table
    in service/errors.py), logged as one warning line, and whose departed client ends it
    quietly: BentoML would log a traceback and answer 500 for anything but its own exception
    type."""

    @functools.wraps(method)
    async def api(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(*args, **kwargs)
        except ServiceError as exc:
            return cast(R, refusal_response(method.__name__, exc))
        except ClientGone:  # nobody will read it; BentoML would log a traceback and a 500
            logger.info("%s: the client disconnected; its work was dropped", method.__name__)
            return cast(R, Response(status_code=499))

    return api


@bentoml.service(
    name="rnnserve",
    workers=SETTINGS.workers,
    traffic={"timeout": SETTINGS.timeout_s},
    http={"cors": {"enabled": False}},
    **skipped_paths(LEAN_PATHS, SETTINGS.tracing),
)
@bentoml.asgi_app(meta_app(STATE), path=MOUNT_PATH)
@bentoml.asgi_app(v2_app(STATE), path=V2_PATH)
@bentoml.asgi_app(web_app, path="/ui")
class RnnServe:
    """Digits from images or pixel arrays, next characters and generated text."""

    def __init__(self) -> None:
        registry = ModelRegistry.load(SETTINGS, observe_inference, CHECKED)  # load, warm up
        self.pipelines = Pipelines(registry, SETTINGS)
        self.grpc: GrpcFrontEnd | None = None  # started by _start_grpc in served workers
        self.control = ControlPlane(self.pipelines, bentoml.server_context.worker_index)
        bind_api_methods(self, _service.apis)
        tune_garbage_collector()
        if self.control.coordinator is None:
            self._ready()
        # else: ready once this worker serves what the other workers agreed (_start_control)

    def _ready(self) -> None:
        STATE.control = self.control
        STATE.pipelines = self.pipelines  # ready: the mounted apps and /readyz say so now

    def __is_ready__(self) -> bool:
        return STATE.pipelines is not None

    # ------------------------------------------------------------------ model control

    @bentoml.on_deployment
    def _fresh_control_dir() -> None:  # BentoML makes it a staticmethod
        """Once, before any worker: an agreement left by an earlier server (same pid) goes."""
        if SETTINGS.model_control != "none" and SETTINGS.workers > 1:
            directory = SETTINGS.control_dir or default_control_dir(os.getpid())
            shutil.rmtree(directory, ignore_errors=True)

    @bentoml.on_startup
    async def _start_control(self) -> None:
        """Joins the workers' agreement (a restarted worker serves what the others serve),
        then watches it, and the repository in poll mode."""
        await self.control.start()
        self._ready()

    @bentoml.on_shutdown
    async def _stop_control(self) -> None:
        await self.control.stop()

    # ------------------------------------------------------------------ gRPC

    @bentoml.on_deployment
    def _grpc_port_is_free() -> None:  # BentoML makes it a staticmethod
        """Once, in the arbiter, before any worker binds the gRPC port (they share it)."""
        check_port_free(SETTINGS)

    @bentoml.on_startup
    async def _start_grpc(self) -> None:
        """The gRPC front-end of this worker (service/http/grpc_v2), on its event loop. Only in
        `bentoml serve` workers: the in-process app (tests) has no ports of its own."""
        if SETTINGS.grpc_port and bentoml.server_context.worker_index is not None:
            self.grpc = GrpcFrontEnd(STATE, SETTINGS)
            await self.grpc.start()

    @bentoml.on_shutdown
    async def _stop_grpc(self) -> None:
        if self.grpc is not None:
            await self.grpc.stop()

    # ------------------------------------------------------------------ digits

    @bentoml.api
    @answers_errors
    async def classify_pixels(
        self,
        images: Annotated[
            list[DigitPixels],
            Field(min_length=1, max_length=SETTINGS.max_images_per_request),
        ],
    ) -> list[DigitPrediction]:
        """Classify 28x28 pixel arrays (white digit on black). Concurrent requests are batched
        into one model call per model; each image may name its model."""
        pixels = np.stack([item.as_0_255() for item in images])
        answers = await self.pipelines.classify_each(pixels, [item.model for item in images])
        return [digit_answer(answer) for answer in answers]

    @bentoml.api
    @answers_errors
    async def classify_image(
        self,
        image: Annotated[Path, Field(description="the picture: PNG, JPEG, BMP, GIF or WebP")],
        model: DigitModelName = DEFAULT_DIGIT_MODEL,
        show_input: Annotated[
            bool, Field(description="also answer the 28x28 picture the model saw (`seen`)")
        ] = False,
    ) -> ImagePrediction:
        """Classify a photo, scan or drawing of one handwritten digit (PNG, JPEG, BMP, GIF,
        WebP): the digit is found on the paper (uneven light, ruled lines and specks left
        out), then cropped, scaled and centred the way MNIST digits were. 422 when the
        picture shows no digit."""
        answer, seen = await self.pipelines.classify_upload(image.read_bytes(), model)
        base = digit_answer(answer)
        return ImagePrediction.model_construct(
            **base.__dict__, seen=seen.tolist() if show_input else None
        )

    # ------------------------------------------------------------------ text

    @bentoml.api
    @answers_errors
    async def next_char(
        self,
        text: PromptText,
        k: TopK = DEFAULT_K,
        temperature: SoftmaxTemperature = DEFAULT_SOFTMAX_TEMPERATURE,
        state: CarriedState | None = None,
    ) -> NextCharResponse:
        """The k most probable next characters after `text`, with their probabilities, and
        the carried `state`: send it back with only the characters that follow, and a keystroke
        costs one step whatever the length of the text."""
        answer = await self.pipelines.next_chars(text, k, temperature, state)
        return next_char_answer(text, answer)

    @bentoml.api
    @answers_errors
    async def generate(
        self,
        prompt: PromptText,
        length: GenerateLength = DEFAULT_LENGTH,
        temperature: Temperature = DEFAULT_TEMPERATURE,
        top_k: SamplingTopK | None = None,
        seed: Seed | None = None,
        state: CarriedState | None = None,
    ) -> GenerateResponse:
        """Continue `prompt` (after the carried `state`, if sent) by `length` characters,
        batched with every other generation. The same seed (and settings) gives the same text;
        the answer's `state` continues after the generated text."""
        used_seed = secrets.randbelow(2**31) if seed is None else seed
        generation, text = await self.pipelines.generate(
            prompt, length, temperature, top_k, used_seed, state
        )
        model = generation.model
        return generate_answer(
            prompt,
            text,
            used_seed,
            temperature,
            top_k,
            model,
            generation.state(),
            generation.context_chars,
        )

    # ------------------------------------------------------------------ metadata

    @bentoml.api
    async def metadata(self) -> dict[str, Any]:
        """Loaded models with their cards' metrics, backend, provider and the service version
        (also at GET /v1/metadata)."""
        return self.pipelines.describe()


# Outermost first: in-flight requests are counted (service/http/in_flight.py); every error
# gets the one shape; a request without a valid token is refused
# before its body is read; then the body budget; then what the BentoML routes accept (one
# content-type rule, known fields, uploads that are files: service/http/route_inputs.py);
# then /docs.json, which documents the one error shape and every status (service/http/openapi.py);
# innermost, BentoML's three-piece answers become one sized body (WholeBodyMiddleware).
# (The decorator turned the class into a bentoml Service, which mypy cannot see.)
_service = cast(Any, RnnServe)
declare_json_outputs(_service)
forbid_unknown_fields(_service.apis.values())
_service.add_asgi_middleware(InFlightMiddleware)  # the autoscaling signal, around everything
_service.add_asgi_middleware(V2RootMiddleware)
_service.add_asgi_middleware(  # V2: {"error"}; limits named as the engine names them
    ErrorShapeMiddleware, v2_prefix=V2_PATH, describe_limit=describe_limit
)
_service.add_asgi_middleware(HealthBodyMiddleware)  # /livez, /readyz: JSON bodies
_service.add_asgi_middleware(
    BearerAuthMiddleware,
    tokens=SETTINGS.tokens,
    exempt=SETTINGS.exempt_paths,
    admin_tokens=SETTINGS.admin_token_list,
)
_service.add_asgi_middleware(
    BodyLimitMiddleware,
    max_bytes=SETTINGS.max_request_bytes,
    max_buffered=SETTINGS.max_buffered_bytes,
    timeout_s=SETTINGS.body_timeout_s,
    min_rate=SETTINGS.min_body_rate,
)
_service.add_asgi_middleware(InputGuard, routes=declared_inputs(_service.apis.values()))
_service.add_asgi_middleware(
    OpenApiMiddleware,
    build=lambda: document_errors(
        _service.openapi_spec.asdict(),
        {**META_PATHS, **v2_paths({c.name: str(c.data["version"]) for c in CHECKED[0]})},
        live_examples(STATE.pipelines) if STATE.pipelines is not None else None,
        open_path=(
            BearerTokens(SETTINGS.tokens, SETTINGS.exempt_paths).open_path
            if SETTINGS.tokens
            else None
        ),
    ),
    ready=lambda: STATE.pipelines is not None,
)
_service.add_asgi_middleware(WholeBodyMiddleware)
# BentoML's HTTP metrics labelled by route template, never by the raw path (the templates are
# read on the first request)
install_templated_metrics(
    lambda: [
        *(api.route for api in _service.apis.values()),
        *META_PATHS,
        *v2_paths({}),
        *("/", "/docs", "/docs.json", "/livez", "/readyz", "/healthz", "/ui", "/ui/*"),
    ]
)
