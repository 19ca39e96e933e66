"""The one way a hand-made route reads a request and answers it.

Every route the service writes itself (`/v1/digits`, `/v1/generate/stream`, the V2 model
routes) and every BentoML API method goes through these few functions, so that a change to
how the service answers is made once:

- `accepted_media_type`: the one content-type rule (a media type is compared in lower case,
  without parameters; no Content-Type is read as JSON; two are refused);
- `json_object`: a strict JSON object with known fields only (an unknown field is a 400 that
  names it and the fields the route takes);
- `refusal`: a domain error -> the status of the one table (service/errors.py) and the body in
  the route's protocol shape, logged as one rate-limited line (service/log_bounds.py) and
  counted;
- `answer`: runs a route's work and sends what it gives, or its refusal, or nothing when the
  client has left; an error that is not a domain error is logged with its traceback and
  answered 500 without its text; the route's request metric is observed in every case.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Send

from service import errors
from service.errors import BadInput, ClientGone, ServiceError, UnsupportedMedia
from service.http.asgi import log_refusal, media_type, send_bytes
from service.metrics import observe_lean_request

logger = logging.getLogger("rnnserve")
JSON = "application/json"
OCTET_STREAM = "application/octet-stream"
Headers = list[tuple[bytes, bytes]]
INTERNAL = "internal error; see the server log"
# Every error answer's OpenAPI content: the one error shape (service/http/openapi.py defines it)
ERROR_CONTENT = {JSON: {"schema": {"$ref": "#/components/schemas/Error"}}}


def error_responses(*statuses: tuple[int, str]) -> dict[str, Any]:
    """The OpenAPI `responses` entries of a route's refusals, each in the one error shape."""
    return {str(status): {"description": why, "content": ERROR_CONTENT} for status, why in statuses}


def accepted_media_type(
    headers: Iterable[tuple[bytes, bytes]], accepted: Collection[str], hint: str = ""
) -> str:
    """The request's media type when the route takes it (none counts as JSON), else
    UnsupportedMedia naming what the route takes (and `hint`, how to send it)."""
    given = [value for name, value in headers if name == b"content-type"]
    if len(given) > 1:
        raise BadInput("more than one Content-Type header; send one")
    kind = media_type(given[0]) if given else ""
    kind = kind or JSON
    if kind not in accepted:
        takes = " or ".join(sorted(accepted)) + (f" ({hint})" if hint else "")
        raise UnsupportedMedia(f"Content-Type must be {takes}, not {kind[:100]}")
    return kind


def json_object(
    body: bytes, fields: Collection[str], usage: str, required: Collection[str] = ()
) -> dict[str, Any]:
    """`body` as a JSON object that has the `required` keys and no key outside `fields`;
    `usage` shows the shape the route wants when the body is something else."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadInput(f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or any(key not in data for key in required):
        raise BadInput(f"send {usage}")
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise BadInput(f"unknown field(s) {errors.short(unknown)}; use {', '.join(fields)}")
    return data


def refusal(route: str, error: ServiceError, v2: bool = False) -> tuple[int, Headers, bytes]:
    """`error` as (status, headers, body) in the route's protocol shape, logged and counted."""
    status, headers, body = errors.v2(error) if v2 else errors.ours(error)
    log_refusal(route, status, error.message)
    return status, headers, body


async def send_refusal(route: str, send: Send, error: ServiceError, v2: bool = False) -> int:
    """Send `refusal`'s answer (for middleware that answers before any route); its status."""
    status, headers, body = refusal(route, error, v2)
    await send_bytes(send, status, body, headers)
    return status


def as_response(status: int, headers: Headers, body: bytes) -> Response:
    """(status, headers, body) as a Starlette response (for the routes that return one)."""
    extra = {name.decode(): value.decode() for name, value in headers}
    return Response(body, status, extra, media_type=JSON)


def refusal_response(route: str, error: ServiceError, v2: bool = False) -> Response:
    return as_response(*refusal(route, error, v2))


def internal_error(route: str, v2: bool = False) -> tuple[int, Headers, bytes]:
    """The answer to a defect of ours: logged with its traceback (call it from an `except`),
    answered without its text."""
    logger.exception("%s: internal error", route)
    body = errors.v2_error_body(INTERNAL) if v2 else errors.error_body(INTERNAL)
    return 500, [], body


Work = Callable[[], Awaitable[tuple[bytes, Headers]]]


async def answer(route: str, send: Send, work: Work, v2: bool = False) -> int:
    """Run `work` (which gives the 200 body and its extra headers) and send the answer; the
    status sent, 499 when the client left (nothing is sent then)."""
    started = time.perf_counter()
    try:
        payload, headers = await work()
        status = 200
    except ServiceError as exc:
        status, headers, payload = refusal(route, exc, v2)
    except ClientGone:
        observe_lean_request(route, 499, started)
        return 499
    except Exception:
        status, headers, payload = internal_error(route, v2)
    await send_bytes(send, status, payload, headers)
    observe_lean_request(route, status, started)
    return status
