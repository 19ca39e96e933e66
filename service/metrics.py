"""The service's own Prometheus metrics (BentoML adds its per-route HTTP metrics beside them).

Plain `prometheus_client` metrics in multiprocess mode: BentoML starts every worker with
PROMETHEUS_MULTIPROC_DIR set, so prometheus_client (which picks its mode when first imported)
writes each worker's values to that folder, and BentoML's /metrics merges the folder: any
worker's /metrics shows every worker's counts. Gauges say how to merge (`multiprocess_mode`).
A process without that variable (a script importing this module) keeps its values to itself.
"""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge, Histogram

INFERENCE_SECONDS = Histogram(
    name="rnnserve_inference_seconds",
    documentation="Model inference time per call (one call may serve a whole batch)",
    labelnames=["model"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
)
INFERENCE_BATCH = Histogram(
    name="rnnserve_inference_batch_size",
    documentation="Rows per model call",
    labelnames=["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
MODEL_INFO = Gauge(
    name="rnnserve_model_info",
    documentation="Loaded models with their backend and execution provider (value 1)",
    labelnames=["model", "backend", "provider", "device"],
)
# The lean paths (/v1/digits, the V2 model routes) skip BentoML's per-request metrics and access
# log (see service.py), so they count and time themselves.
LEAN_REQUESTS = Counter(
    name="rnnserve_lean_requests",
    documentation="Requests to the lean paths (/v1/digits, /v2/models/...) by status code",
    labelnames=["route", "status"],
)
LEAN_LATENCY = Histogram(
    name="rnnserve_lean_request_seconds",
    documentation="Time from a request's arrival to its answer on the lean paths",
    labelnames=["route"],
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
)
QUEUE_WAITING = Gauge(
    name="rnnserve_queue_waiting",
    documentation="Work waiting for a model or a worker thread, per queue (images or requests)",
    labelnames=["queue"],
    multiprocess_mode="livesum",
)
QUEUE_REFUSED = Counter(
    name="rnnserve_queue_refused",
    documentation="Requests answered 503 by admission control: the queue was full (full) or "
    "the request waited longer than allowed (waited)",
    labelnames=["queue", "reason"],
)
QUEUE_DROPPED = Counter(
    name="rnnserve_queue_dropped",
    documentation="Queued requests dropped before they reached the model because their client "
    "left or their deadline passed",
    labelnames=["queue"],
)

GENERATION_ACTIVE = Gauge(
    name="rnnserve_generation_active",
    documentation="Sequences in the character model's decode loop (continuous batching)",
    labelnames=["model"],
    multiprocess_mode="livesum",
)
GENERATION_STEPS = Counter(
    name="rnnserve_generation_steps",
    documentation="Decode-loop steps (one model call for every active sequence): rate = steps/s",
    labelnames=["model"],
)
GENERATION_BATCH = Histogram(
    name="rnnserve_generation_batch_size",
    documentation="Sequences stepped together per decode-loop step",
    labelnames=["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
GENERATION_FIRST_CHAR = Histogram(
    name="rnnserve_generation_first_char_seconds",
    documentation="Time from a generation's arrival to its first character",
    labelnames=["model"],
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0),
)


def observe_inference(model: str, seconds: float, batch: int) -> None:
    INFERENCE_SECONDS.labels(model=model).observe(seconds)
    INFERENCE_BATCH.labels(model=model).observe(batch)


def observe_lean_request(route: str, status: int, started: float) -> None:
    LEAN_REQUESTS.labels(route=route, status=str(status)).inc()
    LEAN_LATENCY.labels(route=route).observe(time.perf_counter() - started)
