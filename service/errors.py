"""The one error model: what can go wrong with a request, and how each protocol says so.

The engine (which knows nothing of HTTP) and the front-ends' decoding raise these domain
errors; each protocol turns them into a status code and its own error body through the one
table below (service/http/kernel.py does it for every route). Our routes answer
`{"error": str, "detail": any}`, the Open Inference Protocol routes `{"error": str}`. 503s
carry `Retry-After`.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

RETRY_AFTER_S = 1  # what a 503 tells the client to wait before trying again


def short(value: Any) -> str:
    """A client-given value for an error message, cut short: names and texts can be megabytes
    long, and an error must not echo them back whole."""
    text = repr(value)
    return text if len(text) <= 66 else text[:64] + "..."


class ServiceError(Exception):
    """A request the service will not (or cannot now) serve; the message says what to do."""

    def __init__(self, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class BadInput(ServiceError):
    """Malformed or out-of-range input: wrong JSON, type, shape, value or header."""


class UnusableInput(ServiceError):
    """Well-formed input the model cannot use (a blank picture, characters outside the
    vocabulary)."""


class TooLarge(ServiceError):
    """A body or picture over a size limit (bytes, pixels, side, aspect): the message names
    the setting. (A parameter over its limit, such as images per request, is BadInput.)"""


class UnsupportedMedia(ServiceError):
    """A content type or file format the route does not take."""


class UnknownModel(ServiceError):
    """A model (or model version) this server does not have."""


class NoCharModel(ServiceError):
    """A text route on a server that has no next-character model loaded."""


class Overloaded(ServiceError):
    """The model's queue is full, or a request waited longer than allowed: retry later."""


class NotReady(ServiceError):
    """The worker is still loading and warming up its models."""


class LoadRefused(ServiceError):
    """A model version that failed its checks before serving (files, contract, recorded
    examples, warm-up): the last good version keeps serving."""


class ControlRefused(ServiceError):
    """A model-control call the server's mode does not allow (RNNSERVE_MODEL_CONTROL), or one
    another is still carrying out."""


class ClientGone(Exception):
    """The client disconnected before its request was read or answered: nothing to send."""


class Status(NamedTuple):
    ours: int  # our JSON routes: the BentoML APIs, /v1/*
    v2: int  # the Open Inference Protocol routes, /v2/*
    grpc: str  # the protocol over gRPC: a grpc.StatusCode name (this module imports no grpc)


# The one table. V2 names the model in the path, so an unknown one is a missing resource (404);
# our routes name it in the body, which makes it a bad value (400). gRPC follows Triton's
# server: a full queue or a request timed out in it is UNAVAILABLE (retryable, with the same
# hint as a 503), something too big RESOURCE_EXHAUSTED (what gRPC itself answers for a message
# over its size limit).
STATUS: dict[type[ServiceError], Status] = {
    BadInput: Status(400, 400, "INVALID_ARGUMENT"),
    UnusableInput: Status(422, 400, "INVALID_ARGUMENT"),
    TooLarge: Status(413, 400, "RESOURCE_EXHAUSTED"),
    UnsupportedMedia: Status(415, 415, "INVALID_ARGUMENT"),
    UnknownModel: Status(400, 404, "NOT_FOUND"),
    NoCharModel: Status(404, 404, "NOT_FOUND"),
    Overloaded: Status(503, 503, "UNAVAILABLE"),
    NotReady: Status(503, 503, "UNAVAILABLE"),
    LoadRefused: Status(422, 400, "INVALID_ARGUMENT"),
    ControlRefused: Status(409, 409, "FAILED_PRECONDITION"),
}


def status_of(error: ServiceError) -> Status:
    for cls in type(error).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    raise TypeError(f"{type(error).__name__} has no row in the status table")


def retry_headers(status: int) -> list[tuple[bytes, bytes]]:
    return [(b"retry-after", str(RETRY_AFTER_S).encode())] if status == 503 else []


def error_body(message: str, detail: Any = None) -> bytes:
    """Our routes' error body."""
    return json.dumps({"error": message, "detail": detail}).encode()


def v2_error_body(message: str) -> bytes:
    """The Open Inference Protocol's error body."""
    return json.dumps({"error": message}).encode()


def ours(error: ServiceError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """(status, extra headers, body) of `error` on our routes."""
    status = status_of(error).ours
    return status, retry_headers(status), error_body(error.message, error.detail)


def v2(error: ServiceError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """(status, extra headers, body) of `error` on the V2 routes."""
    status = status_of(error).v2
    return status, retry_headers(status), v2_error_body(error.message)
