"""The rnnserve BentoML service: digit classification and next-character prediction.

    bentoml serve service.service:RnnServe          # or: make serve

Models come from RNNSERVE_MODEL_DIR (default: models/), verified against their cards and
warmed up before the worker reports ready. Every error answers {"error": ..., "detail": ...}.
"""

from __future__ import annotations

import gc
import secrets
import sys
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any, cast

import bentoml
import numpy as np
from bentoml.exceptions import BentoMLException
from pydantic import Field

from service import __version__
from service.bound_apis import bind_api_methods
from service.cards import CardError
from service.deadline import install as install_deadline_middleware
from service.inference import ModelRegistry, preflight
from service.meta_app import LEAN_PATH, META_PATHS, MOUNT_PATH, meta_app
from service.middleware import (
    BearerAuthMiddleware,
    BodyLimitMiddleware,
    ErrorShapeMiddleware,
    MultipartGuardMiddleware,
    WholeBodyMiddleware,
)
from service.openapi import OpenApiMiddleware, document_errors
from service.preprocess import InputError, decode_image, mnist_style
from service.runtime import DeviceError
from service.schemas import (
    DEFAULT_DIGIT_MODEL,
    SETTINGS,
    CharCandidate,
    DigitModelName,
    DigitPixels,
    DigitPrediction,
    GenerateLength,
    GenerateResponse,
    NextCharResponse,
    PromptText,
    Seed,
    SoftmaxTemperature,
    Temperature,
    TopK,
)
from service.v2_app import MOUNT_PATH as V2_PATH
from service.v2_app import V2RootMiddleware, v2_app
from service.web_app import web_app

LEAN_PATHS = [LEAN_PATH, f"{V2_PATH}/models/"]
# OpenTelemetry: BentoML samples no trace unless `tracing.sample_rate` is configured, yet its
# middleware builds a span per request: 0.25 ms of a worker's CPU per pixel request (measured
# with 32 clients: 1,040 -> 1,420 req/s). Unless RNNSERVE_TRACING is on, no route is traced;
# when it is, every route but the lean ones (which time themselves) is.
UNTRACED_PATHS = LEAN_PATHS if SETTINGS.tracing else [".*"]

try:
    CHECKED = preflight(SETTINGS)  # in every process that imports the service, workers too
except (CardError, DeviceError, FileNotFoundError) as exc:
    raise SystemExit(f"rnnserve cannot start: {exc}") from None

install_deadline_middleware()  # BentoML's own keeps every answered request's context for 30 s

INFERENCE_SECONDS = bentoml.metrics.Histogram(
    name="rnnserve_inference_seconds",
    documentation="Model inference time per call (one call may serve a whole batch)",
    labelnames=["model"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
)
INFERENCE_BATCH = bentoml.metrics.Histogram(
    name="rnnserve_inference_batch_size",
    documentation="Rows per model call",
    labelnames=["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
MODEL_INFO = bentoml.metrics.Gauge(
    name="rnnserve_model_info",
    documentation="Loaded models with their backend and execution provider (value 1)",
    labelnames=["model", "backend", "provider", "device"],
)


def observe(model: str, seconds: float, batch: int) -> None:
    INFERENCE_SECONDS.labels(model=model).observe(seconds)
    INFERENCE_BATCH.labels(model=model).observe(batch)


def tune_garbage_collector() -> None:
    """Keep the collector off the tail latency.

    Each pixel request allocates ~800 small objects, so with CPython's default thresholds
    (700, 10, 10) a full collection ran every few dozen requests and walked everything the
    process had ever loaded: p99 150-200 ms at 32 clients (GC off: 45 ms). Freezing what
    start-up created takes it out of every collection, and a gen-0 threshold of 10,000
    makes collections 14x rarer. Measured at 32 clients, pixel endpoint: 741 -> 873 req/s,
    p99 156 -> 54 ms, worker RSS 197 -> 202 MB.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def client_error(exc: InputError) -> BentoMLException:
    """An InputError as the BentoML exception that carries its HTTP status."""
    return BentoMLException(str(exc), error_code=HTTPStatus(exc.status))


@bentoml.service(
    name="rnnserve",
    workers=SETTINGS.workers,
    traffic={"timeout": SETTINGS.timeout_s},
    http={"cors": {"enabled": False}},
    # The lean paths (the digit route, the V2 model routes) skip BentoML's per-request access
    # log, traffic metrics and tracing (prefix match; profiled: about a fifth of their cost);
    # they count and time themselves (rnnserve_lean_*).
    logging={"access": {"skip_paths": ["/metrics", "/healthz", "/livez", "/readyz", *LEAN_PATHS]}},
    tracing={"excluded_urls": UNTRACED_PATHS},
)
@bentoml.asgi_app(meta_app, path=MOUNT_PATH)
@bentoml.asgi_app(v2_app, path=V2_PATH)
@bentoml.asgi_app(web_app, path="/ui")
class RnnServe:
    """Digits from images or pixel arrays, next characters and generated text."""

    def __init__(self) -> None:
        self.registry = ModelRegistry.load(SETTINGS, observe, CHECKED)  # load, warm up
        for info in self.registry.describe():
            MODEL_INFO.labels(
                model=info["name"],
                backend=info["backend"],
                provider=info["provider"],
                device=self.registry.device.device,
            ).set(1)
        # BentoML rebuilds an API method's wrapper on every lookup, twice per batched request
        bind_api_methods(self, _service.apis)
        tune_garbage_collector()
        self.ready = True

    def __is_ready__(self) -> bool:
        return getattr(self, "ready", False)

    # ------------------------------------------------------------------ digits

    @bentoml.api(
        batchable=SETTINGS.batching,
        max_batch_size=SETTINGS.max_batch_size,
        max_latency_ms=SETTINGS.max_latency_ms,
    )
    def classify_pixels(
        self,
        images: Annotated[
            list[DigitPixels],
            Field(min_length=1, max_length=SETTINGS.max_images_per_request),
        ],
    ) -> list[DigitPrediction]:
        """Classify 28x28 pixel arrays (white digit on black). Requests are batched
        adaptively across clients; each image may name its model."""
        # one model call per distinct model in the (possibly merged) batch
        by_model: dict[str, list[int]] = {}
        for i, item in enumerate(images):
            by_model.setdefault(self.registry.digit_model(item.model).name, []).append(i)
        results: dict[int, DigitPrediction] = {}
        for name, indices in by_model.items():
            model = self.registry.digits[name]
            probs = model.predict(np.stack([images[i].as_0_255() for i in indices]))
            answers = self._predictions(name, model.backend.provider, probs)
            results.update(zip(indices, answers, strict=True))
        return [results[i] for i in range(len(images))]

    @bentoml.api
    def classify_image(
        self,
        image: Annotated[Path, Field(description="the picture: PNG, JPEG, BMP, GIF or WebP")],
        model: DigitModelName = DEFAULT_DIGIT_MODEL,
    ) -> DigitPrediction:
        """Classify an uploaded picture of one handwritten digit (PNG, JPEG, BMP, GIF, WebP):
        it is cropped, scaled and centred the way MNIST digits were."""
        try:
            picture = decode_image(image.read_bytes(), SETTINGS.max_image_pixels)
            pixels = mnist_style(picture)
            classifier = self.registry.digit_model(model)
        except InputError as exc:
            raise client_error(exc) from None
        probs = classifier.predict(pixels[None].astype(np.float32))
        return self._predictions(classifier.name, classifier.backend.provider, probs)[0]

    @staticmethod
    def _predictions(name: str, provider: str, probs: np.ndarray) -> list[DigitPrediction]:
        """One answer per row of `probs` (B, 10), built without validation (model_construct):
        the values are ours, and a merged batch builds one per image in the inference thread."""
        digits = probs.argmax(axis=1).tolist()
        rounded = probs.round(6).tolist()
        return [
            DigitPrediction.model_construct(
                digit=digit, probabilities=row, model=name, provider=provider
            )
            for digit, row in zip(digits, rounded, strict=True)
        ]

    # ------------------------------------------------------------------ text

    @bentoml.api
    def next_char(
        self, text: PromptText, k: TopK = 5, temperature: SoftmaxTemperature = 1.0
    ) -> NextCharResponse:
        """The k most probable next characters after `text`, with their probabilities."""
        try:
            model = self.registry.char_model()
            candidates = model.next_chars(text, k, temperature)
        except InputError as exc:
            raise client_error(exc) from None
        return NextCharResponse(
            text=text,
            candidates=[CharCandidate(char=c, probability=round(p, 6)) for c, p in candidates],
            model=model.name,
            provider=model.backend.provider,
        )

    @bentoml.api
    def generate(
        self,
        prompt: PromptText,
        length: GenerateLength = 200,
        temperature: Temperature = 0.8,
        top_k: TopK | None = None,
        seed: Seed | None = None,
    ) -> GenerateResponse:
        """Continue `prompt` by `length` characters, one step at a time with carried state.
        The same seed (and settings) gives the same text."""
        used_seed = secrets.randbelow(2**31) if seed is None else seed
        try:
            model = self.registry.char_model()
            text = model.generate(prompt, length, temperature, top_k, used_seed)
        except InputError as exc:
            raise client_error(exc) from None
        return GenerateResponse(
            prompt=prompt,
            text=text,
            seed=used_seed,
            temperature=temperature,
            top_k=top_k,
            model=model.name,
            provider=model.backend.provider,
        )

    # ------------------------------------------------------------------ metadata

    @bentoml.api
    def metadata(self) -> dict[str, Any]:
        """Loaded models with their cards' metrics, backend, provider and the service version
        (also at GET /v1/metadata)."""
        return self.describe()

    def describe(self) -> dict[str, Any]:
        return {
            "service": "rnnserve",
            "version": __version__,
            "backend": SETTINGS.backend,
            "device": self.registry.device.device,
            "device_reason": self.registry.device.reason,
            # the ONNX path must stay torch-free: this makes it observable
            "torch_imported": "torch" in sys.modules,
            "default_digit_model": self.registry.settings.default_digit_model,
            "digit_model_names": self.registry.digit_model_names(),
            "vocabulary": self.registry.char.vocab if self.registry.char else None,
            "models": self.registry.describe(),
        }


# Outermost first: every error gets the one shape; a request without a valid token is refused
# before its body is read; then the body limit; then a guard for malformed multipart bodies;
# then /docs.json, which documents the one error shape and every status (service/openapi.py);
# innermost, BentoML's three-piece answers become one sized body (WholeBodyMiddleware).
# (The decorator turned the class into a bentoml Service, which mypy cannot see.)
_service = cast(Any, RnnServe)
# Every answer is JSON. Saying so up front spares BentoML from deriving the media type from
# the output's JSON schema on every response (profiled: ~11% of a worker's time under load).
for _api in _service.apis.values():
    _api.output_spec.media_type = "application/json"
_service.add_asgi_middleware(V2RootMiddleware)
_service.add_asgi_middleware(ErrorShapeMiddleware, exempt_prefix=V2_PATH)  # V2: {"error"}
_service.add_asgi_middleware(
    BearerAuthMiddleware, tokens=SETTINGS.tokens, exempt=SETTINGS.exempt_paths
)
_service.add_asgi_middleware(BodyLimitMiddleware, max_bytes=SETTINGS.max_request_bytes)
_service.add_asgi_middleware(MultipartGuardMiddleware)
_service.add_asgi_middleware(
    OpenApiMiddleware, build=lambda: document_errors(_service.openapi_spec.asdict(), META_PATHS)
)
_service.add_asgi_middleware(WholeBodyMiddleware)
