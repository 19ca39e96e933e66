"""The OpenAPI document at /docs.json, corrected to describe what the service really answers.

BentoML generates the document from the typed APIs, but documents errors as 400/404/500 with a
`detail` that is a string. This service answers every error in one shape,
`{"error": str, "detail": any}` (ErrorShapeMiddleware), where `detail` holds pydantic's list of
validation problems or null, and with more statuses: 401 (auth), 413 (body or image too large),
415 (not an image), 422 (understood but unusable, e.g. a blank picture), 503 (not ready). A client
generator, or a fuzzer checking responses against the schema (tests/test_fuzz.py), must see that.
The document is also extended with the GET routes mounted beside BentoML's (GET /v1/metadata).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from service import __version__
from service.http.asgi import send_bytes
from service.http.v2_openapi import V2_ERROR

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Error",
    "description": "Every error response: a message a person can act on, and details.",
    "required": ["error", "detail"],
    "properties": {
        "error": {"type": "string", "description": "what went wrong and what to change"},
        # any JSON value: a list of pydantic validation problems, or null
        "detail": {"description": "machine-readable details, or null", "nullable": True},
    },
}
ERROR_REF = {"$ref": "#/components/schemas/Error"}
BENTOML_ERROR_SCHEMAS = ("InvalidArgument", "NotFound", "InternalServerError")

ERROR_PHRASES = {
    400: "Invalid input: malformed JSON, wrong types or shapes, values out of range",
    401: "Missing or invalid bearer token (only when RNNSERVE_API_TOKENS is set)",
    404: "Unknown route",
    413: "Request body or image over the configured limit",
    415: "The upload is not a readable image",
    422: "Valid input the model cannot use (blank picture, characters outside the vocabulary)",
    500: "Unexpected server error",
    503: "Not ready yet, or overloaded: retry after the Retry-After header's seconds",
}
API_ERROR_STATUSES = (400, 401, 413, 422, 500, 503)
IMAGE_ROUTES = ("/classify_image",)


def _error_response(status: int) -> dict[str, Any]:
    return {
        "description": ERROR_PHRASES[status],
        "content": {"application/json": {"schema": ERROR_REF}},
    }


def openapi30(node: Any) -> Any:
    """pydantic writes JSON Schema 2020-12; BentoML declares OpenAPI 3.0, which spells two
    things differently: `X | None` (`anyOf: [X, {"type": "null"}]`) is `X` + `nullable: true`,
    and `exclusiveMinimum: 0` is `minimum: 0` + `exclusiveMinimum: true`."""
    if isinstance(node, list):
        return [openapi30(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: openapi30(value) for key, value in node.items()}
    options = node.get("anyOf")
    if isinstance(options, list) and len(options) == 2 and {"type": "null"} in options:
        other = next(o for o in options if o != {"type": "null"})
        node.pop("anyOf")
        node = {**other, **node, "nullable": True}
    for bound, limit in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        value = node.get(bound)
        if isinstance(value, int | float) and not isinstance(value, bool):
            node[limit] = value
            node[bound] = True
    return node


def _use_component_schemas(operation: dict[str, Any], schemas: dict[str, Any]) -> None:
    """BentoML inlines the request and response schemas into the paths with `X | None` fields
    flattened to plain `X` (so a null that the API accepts and returns looks invalid); the
    components keep them. Point the operation at the component schemas instead."""
    body = operation.get("requestBody", {})
    name = f"{operation['x-bentoml-name']}__Input"
    for media in body.get("content", {}).values():
        if name in schemas and media.get("schema", {}).get("properties"):
            media["schema"] = {"$ref": f"#/components/schemas/{name}"}
    for media in operation["responses"].get("200", {}).get("content", {}).values():
        title = media.get("schema", {}).get("title")
        if title in schemas:
            media["schema"] = {"$ref": f"#/components/schemas/{title}"}


def readable_schema_names(spec: dict[str, Any]) -> dict[str, Any]:
    """BentoML names its generated schemas after its internals (`classify_pixels__Input`,
    `NextCharResponseIODescriptor`) and keeps one for a task API this service has not
    (`TaskStatusResponse`): the page and generated clients show names of the service instead
    (`ClassifyPixelsRequest`, `NextCharResponse`)."""
    schemas = spec.get("components", {}).get("schemas", {})
    schemas.pop("TaskStatusResponse", None)
    renames = {}
    for name in list(schemas):
        new = name
        if name.endswith("__Input"):
            new = "".join(part.title() for part in name.removesuffix("__Input").split("_"))
            new += "Request"
        elif name.endswith("IODescriptor"):
            new = name.removesuffix("IODescriptor")
        if new != name and new not in schemas:
            renames[name] = new
            schemas[new] = {**schemas.pop(name), "title": new}
    text = json.dumps(spec)
    for old, new in renames.items():
        text = text.replace(f'"#/components/schemas/{old}"', f'"#/components/schemas/{new}"')
    return dict(json.loads(text))


def add_examples(spec: dict[str, Any], examples: dict[str, dict[str, Any]]) -> None:
    """Each route's documented request and the answer the served model gives for it."""
    for route, example in examples.items():
        operation = spec.get("paths", {}).get(route, {}).get("post")
        if operation is None:
            continue
        for media in operation.get("requestBody", {}).get("content", {}).values():
            media["example"] = example["request"]
        for media in operation["responses"].get("200", {}).get("content", {}).values():
            media["example"] = example["response"]


def require_bearer(spec: dict[str, Any], open_path: Callable[[str], bool]) -> None:
    """With tokens set: the bearer scheme, needed by every operation whose path is not exempt,
    so that the Swagger page offers "Authorize" and sends the token with "Try it out"."""
    spec.setdefault("components", {})["securitySchemes"] = {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "one of RNNSERVE_API_TOKENS (model control: RNNSERVE_ADMIN_TOKENS)",
        }
    }
    for route, item in spec.get("paths", {}).items():
        for operation in item.values():
            if isinstance(operation, dict) and "responses" in operation:
                operation["security"] = [] if open_path(route) else [{"bearer": []}]


def document_errors(
    spec: dict[str, Any],
    extra_paths: dict[str, Any] | None = None,
    examples: dict[str, dict[str, Any]] | None = None,
    open_path: Callable[[str], bool] | None = None,
) -> dict[str, Any]:
    """A copy of BentoML's `spec` with the one error shape, every status the service uses,
    OpenAPI 3.0 nullables, required request bodies, readable schema names, and `examples`
    (openapi_examples.py) where given."""
    spec = openapi30(copy.deepcopy(spec))
    spec["info"] = INFO
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for name in BENTOML_ERROR_SCHEMAS:
        schemas.pop(name, None)
    schemas["Error"] = ERROR_SCHEMA
    schemas["V2Error"] = V2_ERROR
    for route, item in spec.get("paths", {}).items():
        operation = item.get("post")
        if operation is None or "x-bentoml-name" not in operation:
            continue
        responses = {str(k): v for k, v in operation["responses"].items() if int(k) < 400}
        statuses = API_ERROR_STATUSES + ((415,) if route in IMAGE_ROUTES else ())
        for status in sorted(statuses):
            responses[str(status)] = _error_response(status)
        operation["responses"] = responses
        body = operation.get("requestBody")
        if body and any(m.get("schema", {}).get("required") for m in body["content"].values()):
            body["required"] = True  # no body at all is as invalid as one without a field
        _use_component_schemas(operation, schemas)
    for route, field in HEALTH_FIELDS.items():  # bodies of HealthBodyMiddleware (middleware.py)
        operation = spec.get("paths", {}).get(route, {}).get("get")
        if operation is not None:
            operation["responses"] = {
                "200": {
                    "description": f'`{{"{field}": true}}`',
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {field: {"type": "boolean"}},
                                "required": [field],
                            }
                        }
                    },
                },
                "503": _error_response(503),
            }
    image = spec.get("paths", {}).get("/classify_image", {}).get("post")
    if image is not None and "ImagePredictionIODescriptor" in schemas:
        # BentoML documents the answer as any object; it is an ImagePrediction
        for media in image["responses"].get("200", {}).get("content", {}).values():
            media["schema"] = {"$ref": "#/components/schemas/ImagePredictionIODescriptor"}
    spec["paths"].update(copy.deepcopy(extra_paths or {}))
    spec = readable_schema_names(spec)
    add_examples(spec, examples or {})
    if open_path is not None:
        require_bearer(spec, open_path)
    return spec


HEALTH_FIELDS = {"/livez": "live", "/healthz": "live", "/readyz": "ready"}


INFO = {
    "title": "rnnserve",
    "version": __version__,
    "description": "Recurrent networks served with BentoML: digits from 28x28 pixel arrays or "
    "pictures (`/classify_pixels`, `/classify_image`, the lean `/v1/digits`), next characters "
    "and generation from a Shakespeare character model (`/next_char`, `/generate`, the "
    "streamed `/v1/generate/stream`), and the Open Inference Protocol (KServe V2) under `/v2`. "
    'Every error is `{"error", "detail"}` (`{"error"}` on `/v2`); 503s carry '
    "`Retry-After`. The demo page is at [/ui/](/ui/).",
    "license": {"name": "MIT"},
}

# The Swagger page at /, BentoML's own (main-openapi.html) without its Google Tag Manager script
# and the link to BentoML's repository: the page loads nothing from any other host (the assets
# are BentoML's local copies under /static_content).
SWAGGER_PAGE = b"""<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="UTF-8">
    <title>rnnserve API</title>
    <link rel="stylesheet" type="text/css" href="./static_content/swagger-ui.css" />
    <link rel="stylesheet" type="text/css" href="./static_content/index.css" />
    <link rel="icon" type="image/png" href="./static_content/favicon-light-32x32.png" />
    <!-- BentoML's index.css hides the title (it shows BentoML's name elsewhere): show ours -->
    <style>.swagger-ui .info .main .title { visibility: visible; }</style>
  </head>
  <body>
    <div id="swagger-ui"></div>
    <script src="./static_content/swagger-ui-bundle.js" charset="UTF-8"></script>
    <script src="./static_content/swagger-ui-standalone-preset.js" charset="UTF-8"></script>
    <script src="./static_content/swagger-initializer.js" charset="UTF-8"></script>
  </body>
</html>
"""


class OpenApiMiddleware:
    """Answers GET /docs.json with the corrected document (built once, on the first request
    after start-up) and GET / with the Swagger page that reads it."""

    def __init__(
        self,
        app: ASGIApp,
        build: Callable[[], dict[str, Any]],
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self.app = app
        self.build = build
        self.ready = ready  # kept once built ready: its examples come from the loaded models
        self.body: bytes | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path") if scope["type"] == "http" else None
        if scope.get("method") != "GET" or path not in ("/docs.json", "/"):
            await self.app(scope, receive, send)
            return
        if path == "/":
            await send_bytes(send, 200, SWAGGER_PAGE, content_type=b"text/html; charset=utf-8")
            return
        body = self.body
        if body is None:
            ready = self.ready()
            body = json.dumps(self.build()).encode()
            if ready:
                self.body = body
        await send_bytes(send, 200, body)
