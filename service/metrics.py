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
    labelnames=["model", "version"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
)
INFERENCE_BATCH = Histogram(
    name="rnnserve_inference_batch_size",
    documentation="Rows per model call",
    labelnames=["model", "version"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
MODEL_INFO = Gauge(
    name="rnnserve_model_info",
    documentation="Loaded models with their backend and execution provider (value 1)",
    labelnames=["model", "version", "backend", "provider", "device"],
)
MODEL_REQUESTS = Counter(
    name="rnnserve_model_requests",
    documentation="Requests answered by each model version (every protocol), by outcome "
    "(ok, or the error's class)",
    labelnames=["model", "version", "outcome"],
)
MODEL_REQUEST_SECONDS = Histogram(
    name="rnnserve_model_request_seconds",
    documentation="Time a request spends with its model version: queue, batch and model call",
    labelnames=["model", "version"],
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0),
)
MODEL_LOADS = Counter(
    name="rnnserve_model_loads",
    documentation="Model version loads by outcome: loaded (verified, serving), refused (failed "
    "a check: the reason is in the repository index and the log), unloaded",
    labelnames=["model", "version", "outcome"],
)
# The lean paths (/v1/digits, the stream, the V2 model routes) skip BentoML's access log and
# tracing (see service/http/service.py); they count and time themselves here, by route.
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
GRPC_CALLS = Counter(
    name="rnnserve_grpc_calls",
    documentation="gRPC calls (service/http/grpc_v2) by method and status code",
    labelnames=["method", "code"],
)
GRPC_LATENCY = Histogram(
    name="rnnserve_grpc_call_seconds",
    documentation="Time from a gRPC call's start to its answer, by method",
    labelnames=["method"],
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
)
QUEUE_WAITING = Gauge(
    name="rnnserve_queue_waiting",
    documentation="Work waiting for a model or a worker thread, per queue (images or requests)",
    labelnames=["queue"],
    multiprocess_mode="livesum",
)
# The autoscaling signal (deploy/k8s/overlays/keda): work inside a worker now. "liveall":
# one series per live worker (a `pid` label), so a scaler sums them and a dashboard sees a
# worker that falls behind; a dead worker's series go with it.
REQUESTS_IN_FLIGHT = Gauge(
    name="rnnserve_requests_in_flight",
    documentation="Inference requests a worker holds now, from arrival to the last byte of the "
    "answer (queued, computing or streaming), by protocol (http or grpc); probes, /metrics and "
    "page loads are not counted",
    labelnames=["protocol"],
    multiprocess_mode="liveall",
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


def declare_queue(queue: str) -> None:
    """Create `queue`'s admission series at 0, so that /metrics shows them from the start:
    a dashboard or an alert reads 0 refusals, not "no data", until the first one."""
    for reason in ("full", "waited"):
        QUEUE_REFUSED.labels(queue=queue, reason=reason)
    QUEUE_DROPPED.labels(queue=queue)


GENERATION_ACTIVE = Gauge(
    name="rnnserve_generation_active",
    documentation="Sequences generating in the character model's text loop (continuous batching)",
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
TEXT_READ_ROWS = Histogram(
    name="rnnserve_text_read_rows",
    documentation="Rows of text read together per model call of the text loop (next_char, "
    "V2 character requests and generation prompts share them)",
    labelnames=["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
GENERATION_FIRST_CHAR = Histogram(
    name="rnnserve_generation_first_char_seconds",
    documentation="Time from a generation's arrival to its first character",
    labelnames=["model"],
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0),
)

# The network layer (service/http/connections.py, the body budget) and the refusal log.
CONNECTIONS_OPEN = Gauge(
    name="rnnserve_connections_open",
    documentation="Open client connections, summed over the workers",
    multiprocess_mode="livesum",
)
CONNECTIONS_CLOSED = Counter(
    name="rnnserve_connections_closed",
    documentation="Connections the server closed on its own, by reason (idle, header_timeout, "
    "headers_too_large, too_many_headers, url_too_long, request_too_large, evicted, full)",
    labelnames=["reason"],
)
BODY_BYTES_HELD = Gauge(
    name="rnnserve_body_bytes_held",
    documentation="Request-body bytes the workers hold now (the RNNSERVE_MAX_BUFFERED_BYTES "
    "budget, per worker)",
    multiprocess_mode="livesum",
)
BODIES_REFUSED = Counter(
    name="rnnserve_bodies_refused",
    documentation="Request bodies refused before the application saw them: over the budget "
    "(budget), too slow (timeout) or too large (too_large)",
    labelnames=["reason"],
)
REFUSALS = Counter(
    name="rnnserve_refusals",
    documentation="Requests refused with a client error or a 503, by status; every one is "
    "counted, while the refusal log lines are limited to RNNSERVE_REFUSAL_LOG_PER_S",
    labelnames=["status"],
)
REFUSAL_LOG_SUPPRESSED = Counter(
    name="rnnserve_refusal_log_suppressed",
    documentation="Refusal log lines not written because more than RNNSERVE_REFUSAL_LOG_PER_S "
    "came in one second",
)


def observe_inference(key: str, seconds: float, batch: int) -> None:
    """`key`: 'name/version' of the model version that ran."""
    model, _, version = key.rpartition("/")
    INFERENCE_SECONDS.labels(model=model, version=version).observe(seconds)
    INFERENCE_BATCH.labels(model=model, version=version).observe(batch)


def observe_lean_request(route: str, status: int, started: float) -> None:
    LEAN_REQUESTS.labels(route=route, status=str(status)).inc()
    LEAN_LATENCY.labels(route=route).observe(time.perf_counter() - started)
