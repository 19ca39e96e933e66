"""The lean digit route: POST /v1/digits, the hot path (one request, one or a few digits).

Why a route beside `/classify_pixels`: profiling one-digit requests under load showed most of a
worker's time outside the model, in BentoML's generic request path (pydantic validation of
784 floats as nested models, the dispatcher, per-request metrics, tracing and access-log
middleware, response schema handling). This route is a plain ASGI app mounted on the service:
it parses the body straight into a numpy array, validates it with numpy, and hands it to a
continuous batcher; BentoML's per-request middleware skips it (see service.py) and it keeps its
own Prometheus metrics.

Inputs (values are raw pixels, white ink on black, as in MNIST):
- `application/json`: `{"pixels": <28x28 or Nx28x28 numbers>, "model": "bigru", "scale":
  "0-255"|"0-1"}`; integers (uint8 0..255) are the compact form, floats are accepted.
- `application/octet-stream`: the raw tensor, little-endian, C order, with headers
  `X-Tensor-Shape: N,28,28` (or `28,28`) and `X-Tensor-Datatype: UINT8` (default) or `FP32`,
  model in the query (`?model=rnn`). In the spirit of Triton's binary tensor extension.
Answer: `{"model", "provider", "digits": [N ints], "probabilities": [[10 floats] x N]}`.
"""

from __future__ import annotations

import asyncio
import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qs

import bentoml
import numpy as np
import orjson
from starlette.types import Receive, Scope, Send

from service.inference import DigitClassifier, ModelRegistry
from service.middleware import error_body, read_body
from service.preprocess import InputError
from service.settings import get_settings
from service.v2_protocol import DATATYPES as V2_DATATYPES

# the binary body's datatypes: a subset of the V2 protocol's names and byte layouts
DATATYPES: dict[str, np.dtype[Any]] = {name: V2_DATATYPES[name] for name in ("UINT8", "FP32")}
JSON_HEADERS = [(b"content-type", b"application/json")]

# The lean paths (this route and the V2 model routes) skip BentoML's per-request metrics and
# access log (see service.py), so they count and time themselves.
REQUESTS = bentoml.metrics.Counter(
    name="rnnserve_lean_requests",
    documentation="Requests to the lean paths (/v1/digits, /v2/models/...) by status code",
    labelnames=["route", "status"],
)
LATENCY = bentoml.metrics.Histogram(
    name="rnnserve_lean_request_seconds",
    documentation="Time from a request's arrival to its answer on the lean paths",
    labelnames=["route"],
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
)


def observe_request(route: str, status: int, started: float) -> None:
    REQUESTS.labels(route=route, status=str(status)).inc()
    LATENCY.labels(route=route).observe(time.perf_counter() - started)


class ContinuousBatcher:
    """Merges concurrent requests for one model into one model call, with no added delay.

    The first request runs at once; requests that arrive while a model call is running wait
    and go together in the next call (up to `max_rows`). Under load, batches grow by
    themselves with the number of clients; alone, a request never waits for company. Model
    calls run on one thread per model, so the event loop keeps reading requests meanwhile.
    """

    def __init__(self, model: DigitClassifier, max_rows: int) -> None:
        self.model = model
        self.max_rows = max_rows
        self.waiting: list[tuple[np.ndarray, asyncio.Future[np.ndarray]]] = []
        self.busy = False
        self.drainer: asyncio.Task[None] | None = None
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"lean-{model.name}")

    async def predict(self, images: np.ndarray) -> np.ndarray:
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self.waiting.append((images, future))
        if not self.busy:
            self.busy = True
            # keep a reference: the event loop holds tasks only weakly
            self.drainer = asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self.waiting:
                taken, rows = 0, 0
                while taken < len(self.waiting) and (
                    taken == 0 or rows + len(self.waiting[taken][0]) <= self.max_rows
                ):
                    rows += len(self.waiting[taken][0])
                    taken += 1
                group, self.waiting = self.waiting[:taken], self.waiting[taken:]
                batch = group[0][0] if taken == 1 else np.concatenate([g[0] for g in group])
                try:
                    probs = await loop.run_in_executor(self.executor, self.model.predict, batch)
                except Exception as exc:  # a model failure fails its own batch only
                    for _, future in group:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                start = 0
                for images, future in group:
                    if not future.done():
                        future.set_result(probs[start : start + len(images)])
                    start += len(images)
        finally:
            self.busy = False


_BATCHERS: dict[str, ContinuousBatcher] = {}


def batcher_for(model: DigitClassifier) -> ContinuousBatcher:
    """The one batcher of this worker for `model` (the lean and the V2 routes share it)."""
    batcher = _BATCHERS.get(model.name)
    if batcher is None:
        settings = get_settings()
        # RNNSERVE_BATCHING=off: one request per model call (for comparisons and debugging)
        batcher = ContinuousBatcher(model, settings.max_batch_size if settings.batching else 1)
        _BATCHERS[model.name] = batcher
    return batcher


def parse_json(body: bytes) -> tuple[np.ndarray, str | None]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InputError(f"the body is not valid JSON: {exc}", 400) from None
    if b"true" in body or b"false" in body:  # no field is boolean; numpy would read 1 and 0
        raise InputError("'pixels' must hold numbers only (no true/false)", 400)
    if not isinstance(data, dict) or "pixels" not in data:
        raise InputError('send {"pixels": <28x28 or Nx28x28 numbers>, "model": ...}', 400)
    unknown = sorted(set(data) - {"pixels", "model", "scale"})
    if unknown:
        raise InputError(f"unknown field(s) {unknown}; use pixels, model, scale", 400)
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise InputError("'model' must be a string", 400)
    scale = data.get("scale", "0-255")
    if scale not in ("0-255", "0-1"):
        raise InputError("'scale' must be '0-255' or '0-1'", 400)
    try:
        array = np.asarray(data["pixels"])
    except ValueError:
        raise InputError("'pixels' is ragged: every row needs 28 values", 400) from None
    if array.dtype.kind not in "iuf" or array.dtype.kind == "b":
        raise InputError("'pixels' must hold numbers only", 400)
    images = array.astype(np.float32, copy=False)
    if scale == "0-1":
        if images.size and (images.min() < 0 or images.max() > 1):
            raise InputError("pixel values must lie in 0..1 for scale '0-1'", 400)
        images = images * np.float32(255.0)
    return images, model


def parse_binary(body: bytes, headers: dict[bytes, bytes], name: str) -> np.ndarray:
    """The raw tensor body; `name` is the already-checked X-Tensor-Datatype."""
    shape_text = headers.get(b"x-tensor-shape", b"").decode("latin-1")
    try:
        shape = tuple(int(d) for d in shape_text.split(","))
    except ValueError:
        raise InputError("send the header X-Tensor-Shape: N,28,28 (or 28,28)", 400) from None
    dtype = DATATYPES[name]
    if any(d < 0 for d in shape) or len(body) != math.prod(shape) * dtype.itemsize:
        raise InputError(
            f"the body has {len(body)} bytes; shape {list(shape)} of {name} needs "
            f"{math.prod(shape) * dtype.itemsize}",
            400,
        )
    return np.frombuffer(body, dtype=dtype).reshape(shape).astype(np.float32)


def check_images(images: np.ndarray, limit: int) -> np.ndarray:
    if images.shape == (28, 28):
        images = images[None]
    if images.ndim != 3 or images.shape[1:] != (28, 28) or not 1 <= len(images) <= limit:
        raise InputError(
            f"pixels must be 28x28 or Nx28x28 with 1 <= N <= {limit}; got shape "
            f"{list(images.shape)}",
            400,
        )
    check_pixel_values(images)
    return images


def check_pixel_values(images: np.ndarray) -> None:
    """Finite and on the 0..255 scale (shared with the V2 route)."""
    low, high = float(images.min()), float(images.max())
    if not (math.isfinite(low) and math.isfinite(high)):
        raise InputError("pixels must be finite numbers (no NaN or infinity)", 400)
    if low < 0 or high > 255:
        raise InputError(f"pixel values must lie in 0..255; got {low:g}..{high:g}", 400)


class LeanDigitsApp:
    """ASGI app for POST /v1/digits (see the module docstring)."""

    def __init__(self) -> None:
        self.settings = get_settings()

    def _registry(self) -> ModelRegistry | None:
        service = bentoml.get_current_service()
        if service is None or not getattr(service, "ready", False):
            return None
        return getattr(service, "registry", None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        status, payload = await self._answer(scope, receive)
        await send({"type": "http.response.start", "status": status, "headers": JSON_HEADERS})
        await send({"type": "http.response.body", "body": payload})
        observe_request("/v1/digits", status, started)

    async def _answer(self, scope: Scope, receive: Receive) -> tuple[int, bytes]:
        if scope.get("method") != "POST":
            return 405, error_body(405, "use POST")
        registry = self._registry()
        if registry is None:
            return 503, error_body(503, "the server is not ready yet")
        body = await read_body(receive)  # BodyLimitMiddleware (outside) caps the size
        if body is None:
            return 499, b""  # the client left; nobody reads this
        headers = dict(scope.get("headers", []))
        content_type = headers.get(b"content-type", b"application/json").split(b";")[0].strip()
        query = parse_qs(scope.get("query_string", b"").decode("utf-8", "replace"))
        query_model = query.get("model", [None])[0]
        try:
            datatype = headers.get(b"x-tensor-datatype", b"UINT8").decode("latin-1").upper()
            if datatype not in DATATYPES:  # checked whatever the body, so no typo goes unseen
                raise InputError(f"X-Tensor-Datatype must be one of {sorted(DATATYPES)}", 400)
            if content_type == b"application/json":
                images, model_name = parse_json(body)
                if model_name is not None and query_model not in (None, model_name):
                    raise InputError("the model is named twice (query and body), differently", 400)
                model_name = model_name or query_model
            elif content_type == b"application/octet-stream":
                images = parse_binary(body, headers, datatype)
                model_name = query_model
            else:
                raise InputError(
                    "Content-Type must be application/json or application/octet-stream", 415
                )
            images = check_images(images, self.settings.max_images_per_request)
            try:
                model = registry.digit_model(model_name)
            except InputError as exc:
                raise InputError(str(exc), 400) from None
        except InputError as exc:
            return exc.status, error_body(exc.status, str(exc))
        probs = await batcher_for(model).predict(images)
        answer: dict[str, Any] = {
            "model": model.name,
            "provider": model.backend.provider,
            "digits": probs.argmax(axis=1),
            "probabilities": probs.astype(np.float32),
        }
        return 200, orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)
