"""POST /v1/generate/stream: generation streamed as Server-Sent Events, a lean ASGI route.

The request body is the one of POST /generate (`prompt`, `length`, `temperature`, `top_k`,
`seed`, `state`). Every check runs before the stream starts, so a bad request is a plain JSON
4xx (or a 503 when the text loop is full). Then:

    data: {"text": "W"}                  one event per chunk: the first character at once,
    data: {"text": "hat li"}             then what the text loop made in the last 20 ms
                                         (STREAM_EVERY_S in service/engine/text_loop.py)
    ...
    event: end
    data: {"chars": 200, "seed": 7, "seconds": 0.31, "first_char_ms": 2.4, ..., "state": "rs1..."}

A client that disconnects stops its sequence: it leaves the batch at the next step. An error
after the stream started (the model failed) ends it with `event: error`.

Why a lean route rather than BentoML's streaming API: the status line must wait until the
request is admitted (4xx/503 as JSON), the event format needs its own framing, and the route
skips BentoML's per-request middleware like the other lean paths.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

from service.engine.carried_state import MAX_STATE_CHARS
from service.engine.pipeline import Generation, ServingState
from service.errors import BadInput, ClientGone, ServiceError
from service.http.asgi import read_body, send_bytes
from service.http.kernel import (
    JSON,
    accepted_media_type,
    error_responses,
    internal_error,
    json_object,
    refusal,
)
from service.http.schemas import CARDS, DEFAULT_LENGTH, TEXT, text_schema
from service.metrics import observe_lean_request

ROUTE = "/v1/generate/stream"
logger = logging.getLogger("rnnserve")
FIELDS = ("prompt", *(p.name for p in TEXT.generation()), "state")
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # tells nginx-style proxies not to buffer the stream
]


def parse_generation(body: bytes) -> dict[str, Any]:
    """The body of POST /generate, strictly typed and within the bounds of
    service/engine/parameters.py (no true/false or "5" for numbers)."""
    data = json_object(body, FIELDS, '{"prompt": "...", "length": 200, ...}')
    prompt = data.get("prompt")
    if not isinstance(prompt, str):
        raise BadInput("'prompt' must be a string")
    state = data.get("state")
    if state is not None and not isinstance(state, str):
        raise BadInput("'state' must be a string, exactly as an earlier answer gave it")
    seed = TEXT.seed.read(data)
    return {
        "prompt": prompt,
        "length": TEXT.length.read(data),
        "temperature": TEXT.temperature.read(data),
        "top_k": TEXT.top_k.read(data),
        "seed": secrets.randbelow(2**31) if seed is None else seed,
        "state": state,
    }


def event(data: dict[str, Any], name: str | None = None) -> bytes:
    head = f"event: {name}\n".encode() if name else b""
    return head + b"data: " + orjson.dumps(data) + b"\n\n"


class GenerationStreamApp:
    """ASGI app for POST /v1/generate/stream (see the module docstring)."""

    def __init__(self, state: ServingState) -> None:
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        try:  # every check before the stream starts: a refusal is a plain answer
            pipelines = self.state.require()
            accepted_media_type(scope.get("headers", ()), (JSON,))
            params = parse_generation(await read_body(receive))
            generation = pipelines.generation(**params)
        except ServiceError as exc:
            status, headers, payload = refusal(ROUTE, exc)
        except ClientGone:
            return
        except Exception:
            status, headers, payload = internal_error(ROUTE)
        else:
            await self._stream(send, started, params, generation)
            return
        await send_bytes(send, status, payload, headers)
        observe_lean_request(ROUTE, status, started)

    async def _stream(
        self,
        send: Send,
        started: float,
        params: dict[str, Any],
        generation: Generation,
    ) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        produced = 0
        first_char_s: float | None = None
        try:
            async for chunk in generation.chunks():
                if first_char_s is None:
                    first_char_s = time.perf_counter() - started
                produced += len(chunk)
                await send(
                    {
                        "type": "http.response.body",
                        "body": event({"text": chunk}),
                        "more_body": True,
                    }
                )
        except ClientGone:
            observe_lean_request(ROUTE, 499, started)
            return
        except Exception as exc:  # the model failed mid-stream: say so in the stream
            logger.exception("%s: the generation failed after the stream started", ROUTE)
            await send({"type": "http.response.body", "body": event({"error": str(exc)}, "error")})
            observe_lean_request(ROUTE, 500, started)
            return
        seconds = time.perf_counter() - started
        model = generation.model
        totals = {
            "chars": produced,
            "seed": params["seed"],
            "temperature": params["temperature"],
            "top_k": params["top_k"],
            "model": model.name,
            "model_version": model.version,
            "provider": model.backend.provider,
            "seconds": round(seconds, 4),
            "first_char_ms": round((first_char_s or seconds) * 1000, 2),
            "chars_per_s": round(produced / seconds, 1) if seconds else None,
            "state": generation.state(),
            "context_chars": generation.context_chars,
        }
        await send({"type": "http.response.body", "body": event(totals, "end")})
        observe_lean_request(ROUTE, 200, started)


# The route's OpenAPI fragment (service/http/openapi.py adds it to /docs.json)
STREAM_DOC = {
    "post": {
        "tags": ["Service APIs"],
        "operationId": "rnnserve__generate_stream",
        "description": "Generation streamed as Server-Sent Events (the same text loop and the "
        'same answer as POST /generate for the same seed): `data: {"text": ...}` events as '
        "characters come, then `event: end` with the totals (chars, seed, seconds, first_char_ms, "
        "chars_per_s, and the carried `state` to continue from). Every check runs before the "
        "stream starts; a client that disconnects stops its sequence. Try it with `curl -N`.",
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["prompt"],
                        "additionalProperties": False,
                        "properties": {
                            "prompt": {
                                "type": "string",
                                "maxLength": TEXT.max_text_chars,
                                "description": "the text to continue; with a `state`, only "
                                "the characters that follow it (then it may be empty)",
                                **(text_schema(CARDS) or {}),
                            },
                            **{p.name: p.schema() for p in TEXT.generation()},
                            "state": {
                                "type": "string",
                                "maxLength": MAX_STATE_CHARS,
                                "description": "the `state` of an earlier answer or stream "
                                "end, exactly as received: the text continues from it",
                            },
                        },
                    },
                    "example": {
                        "prompt": "ROMEO:\n",
                        "length": DEFAULT_LENGTH,
                        "temperature": TEXT.temperature.default,
                        "seed": 7,
                    },
                }
            },
        },
        "responses": {
            "200": {
                "description": "the event stream",
                "content": {
                    "text/event-stream": {
                        # each event's data: a chunk {"text"}, the totals (event: end), or
                        # {"error"} (event: error)
                        "schema": {
                            "type": "object",
                            "properties": {
                                "text": {"type": "string"},
                                "chars": {"type": "integer"},
                                "seed": {"type": "integer"},
                                "temperature": {"type": "number"},
                                "top_k": {"type": "integer", "nullable": True},
                                "model": {"type": "string"},
                                "model_version": {"type": "integer"},
                                "provider": {"type": "string"},
                                "seconds": {"type": "number"},
                                "first_char_ms": {"type": "number"},
                                "chars_per_s": {"type": "number", "nullable": True},
                                "state": {
                                    "type": "string",
                                    "description": "the carried state after the prompt and "
                                    "the generated text (event: end)",
                                },
                                "context_chars": {"type": "integer"},
                                "error": {"type": "string"},
                            },
                        }
                    }
                },
            },
            **error_responses(
                (400, "Invalid input (the message says what to change)"),
                (401, "Missing or invalid bearer token"),
                (413, "Body over RNNSERVE_MAX_REQUEST_BYTES"),
                (415, "Not JSON"),
                (422, "Characters outside the model's vocabulary"),
                (503, "Not ready, or the text loop is full (see Retry-After)"),
            ),
        },
    }
}
