"""What the BentoML routes accept, decided before BentoML reads a byte of the body.

BentoML 1.4 is generous in ways a service cannot be (tests/test_bentoml_compat.py reproduces
each on BentoML itself):
- a file field whose form value is text is taken for a URL and downloaded by the server
  (`MultipartSerde.ensure_file`: httpx, no size limit; its private-address guard patches the
  event loop for the whole process and the first request to finish removes it), and a JSON
  body sent to a route whose only input is a file is fetched the same way;
- a form sent as `application/x-www-form-urlencoded` goes the same way as multipart;
- media types are compared case-sensitively, and any type it does not know (text/plain, none)
  is read as JSON;
- fields the route does not declare are silently ignored.

`InputGuard` applies one rule to every BentoML route instead, the same as the hand-made
routes': a JSON route takes `application/json` (any case, parameters allowed) or no
Content-Type, and refuses anything else with 415; an upload route takes `multipart/form-data`
only, whose parts must be the route's own fields, each once: a file field an uploaded file
part (a filename, not `filename*=`, not nested multipart, not empty) and nothing else, every
other field a plain value. Anything else is a 400 naming the field. `forbid_unknown_fields`
makes BentoML's input models refuse undeclared JSON fields the same way.
"""

from __future__ import annotations

import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import BadInput, ClientGone, ServiceError, UnsupportedMedia
from service.http.asgi import media_type, read_body, replay_body
from service.http.kernel import JSON, accepted_media_type, send_refusal

MULTIPART = "multipart/form-data"


@dataclass(frozen=True)
class RouteInputs:
    """The inputs one BentoML route declares."""

    path: str
    fields: tuple[str, ...]
    file_fields: frozenset[str]
    list_fields: frozenset[str]  # may be given more than once

    def describe(self) -> str:
        return ", ".join(self.fields) if self.fields else "no fields"


def _is_list(annotation: Any) -> bool:
    for candidate in (annotation, *typing.get_args(annotation)):
        if typing.get_origin(candidate) in (list, tuple, set):
            return True
    return False


def declared_inputs(apis: Iterable[Any]) -> dict[str, RouteInputs]:
    """Each BentoML API's route and the fields of its input model."""
    routes = {}
    for api in apis:
        spec = api.input_spec
        fields = tuple(spec.model_fields)
        routes[api.route] = RouteInputs(
            path=api.route,
            fields=fields,
            file_fields=frozenset(getattr(spec, "multipart_fields", ()) or ()),
            list_fields=frozenset(
                name for name, info in spec.model_fields.items() if _is_list(info.annotation)
            ),
        )
    return routes


def forbid_unknown_fields(apis: Iterable[Any]) -> None:
    """BentoML's input models ignore fields they do not declare (`max_tokens` on /generate
    would be dropped without a word): make them refuse them, as the hand-made routes do."""
    for api in apis:
        spec = api.input_spec
        if spec.model_config.get("extra") != "forbid":
            spec.model_config["extra"] = "forbid"
            spec.model_rebuild(force=True)


class FormError(ValueError):
    """A form that is not what the route declares (the message names the field)."""


def check_form(items: list[tuple[str, str | UploadFile]], route: RouteInputs) -> None:
    """Raise FormError unless every part is one of the route's fields, given once (lists
    excepted), file fields as uploaded files and every other field as a plain value."""
    seen: dict[str, int] = {}
    for name, value in items:
        if name not in route.fields:
            raise FormError(
                f"unknown form field {name[:100]!r}; {route.path} takes {route.describe()}"
            )
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1 and name not in route.list_fields:
            raise FormError(f"form field {name!r} given more than once; send it once")
        if name in route.file_fields:
            _check_file(name, value)
        elif isinstance(value, UploadFile):
            raise FormError(f"form field {name!r} is a plain value, not a file (-F {name}=...)")


def _check_file(name: str, value: str | UploadFile) -> None:
    if not isinstance(value, UploadFile):
        raise FormError(
            f"form field {name!r} must be an uploaded file: a part with a filename "
            f"(curl -F {name}=@digit.png); text, URLs and empty values are refused (the server "
            "never fetches anything)"
        )
    disposition = value.headers.get("content-disposition", "").lower()
    if "filename*" in disposition:
        raise FormError(
            f"form field {name!r}: send the file name as filename=, not filename*= "
            "(RFC 7578 section 4.2)"
        )
    if media_type(value.headers.get("content-type", "")).startswith("multipart/"):
        raise FormError(f"form field {name!r} holds a nested multipart body; send the file")
    if not value.size:
        raise FormError(f"form field {name!r}: the uploaded file is empty")


class InputGuard:
    """Applies the module's rules to the BentoML routes (`routes`: path -> inputs); other
    paths pass untouched. Content types are normalised to lower case on the way in, so that
    BentoML's case-sensitive lookup finds the serde the rule chose."""

    def __init__(self, app: ASGIApp, routes: Mapping[str, RouteInputs], max_parts: int = 16):
        self.app = app
        self.routes = dict(routes)
        self.max_parts = max_parts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get(scope.get("path", "")) if scope["type"] == "http" else None
        if route is None or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers", ())
        raw = next((v for k, v in headers if k == b"content-type"), b"").decode("latin-1")
        try:  # the one content-type rule, as the lean routes'
            kind = accepted_media_type(headers, (MULTIPART,) if route.file_fields else (JSON,))
        except ServiceError as exc:
            if route.file_fields and isinstance(exc, UnsupportedMedia):
                exc = self._not_a_form(route, raw)
            await send_refusal(route.path, send, exc)
            return
        if raw:
            normalised = _normalised(raw, kind)
            if normalised != raw:
                scope = _with_content_type(scope, normalised)
        if not route.file_fields:
            await self.app(scope, receive, send)
            return
        try:
            body = await read_body(receive)  # capped by BodyLimitMiddleware, outside
        except ClientGone:
            return
        problem = await self._form_problem(scope, body, route)
        if problem is not None:
            await send_refusal(route.path, send, BadInput(problem))
            return
        await self.app(scope, replay_body(body, receive), send)

    @staticmethod
    def _not_a_form(route: RouteInputs, raw: str) -> UnsupportedMedia:
        files = ", ".join(sorted(route.file_fields))
        example = min(route.file_fields)
        given = media_type(raw) or "a body without Content-Type"
        return UnsupportedMedia(
            f"{route.path} takes multipart/form-data with the file in {files} "
            f"(curl -F {example}=@digit.png), not {given[:100]}"
        )

    async def _form_problem(self, scope: Scope, body: bytes, route: RouteInputs) -> str | None:
        request = Request(scope, replay_body(body, _no_more))
        try:
            form = await request.form(max_files=self.max_parts, max_fields=self.max_parts)
        except (HTTPException, MultiPartException) as exc:
            reason = exc.detail if isinstance(exc, HTTPException) else exc.message
            return f"malformed multipart body: {reason}"
        try:
            check_form(form.multi_items(), route)
        except FormError as exc:
            return str(exc)
        finally:
            await form.close()
        return None


async def _no_more() -> dict[str, Any]:
    return {"type": "http.disconnect"}


def _normalised(raw: str, kind: str) -> str:
    """The media type in lower case, its parameters (a multipart boundary is case-sensitive)
    as they came."""
    _, sep, params = raw.partition(";")
    return kind + (sep + params if sep else "")


def _with_content_type(scope: Scope, value: str) -> Scope:
    headers = [(k, v) for k, v in scope.get("headers", ()) if k != b"content-type"]
    headers.append((b"content-type", value.encode("latin-1")))
    return {**scope, "headers": headers}
