"""Property-based API fuzzing: schemathesis against the service's own OpenAPI document.

A real `bentoml serve` process; schemathesis reads /docs.json and generates valid and invalid
requests for every operation (at least 1,000 in all, counted), and checks each answer: no 5xx,
a documented status code and content type, a body that matches the documented schema, schema-
invalid input refused, and every error in the one shape {"error": str, "detail": any}.

Some operations skip `positive_data_acceptance` (a schema-valid request must succeed) because
they refuse some schema-valid input on purpose, with a 4xx that says why: a picture with no
visible digit (422), and pixels over 1 sent with scale "0-1" (400; the schema states the 0..255
bound that both scales share, JSON schema cannot tie the bound to the scale field). The lean
route is in the same case, and its binary body must match its X-Tensor-Shape header. The text
routes take a carried `state` that no schema can generate (SEMANTIC_REFUSALS says why).
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from loadtest.servers import Server

pytestmark = pytest.mark.slow

EXAMPLES_PER_OPERATION = 60
# a generation of up to 1,000 characters takes up to ~0.3 s: fewer examples keep the run short
FEWER_EXAMPLES = {"/generate": 40, "/v1/generate/stream": 40}
MIN_REQUESTS = 1_000
SEMANTIC_REFUSALS = {
    "/classify_image",
    "/classify_pixels",
    "/v1/digits",
    # a schema cannot tie a tensor's data to its shape and datatype, nor a tensor's name to
    # the model: schema-valid V2 requests are mostly refused with 400, saying why
    "/v2/models/{name}/infer",
    "/v2/models/{name}/versions/{version}/infer",
    # a carried `state` is an opaque string with an integrity tag: no schema can say which
    # strings are states (a generated one is refused with 400, saying so), and an empty text is
    # valid only with a state (OpenAPI 3.0 cannot tie one field to the other)
    "/next_char",
    "/generate",
    "/v1/generate/stream",
}
SENT: dict[str, int] = {}


@schemathesis.check
def one_error_shape(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx/5xx body is {"error": non-empty str, "detail": any} and nothing else (on the
    V2 routes, the protocol's {"error": non-empty str})."""
    if response.status_code < 400:
        return None
    body = response.json()
    keys = {"error"} if case.path.startswith("/v2") else {"error", "detail"}
    assert isinstance(body, dict) and set(body) == keys, body
    assert isinstance(body["error"], str) and body["error"].strip(), body
    return True


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    one_error_shape,
]


@pytest.fixture(scope="module")
def api_schema(default_server: Server) -> Any:
    schema = schemathesis.openapi.from_url(f"{default_server.url}/docs.json", timeout=30)
    schema.config.update(base_url=default_server.url)
    return schema


# Every operation of the document, by name, so that each is its own test; a route added to the
# service without being added here fails test_every_documented_operation_is_fuzzed.
OPERATIONS_WITH_INPUT = [
    ("POST", "/classify_pixels"),
    ("POST", "/classify_image"),
    ("POST", "/next_char"),
    ("POST", "/generate"),
    ("POST", "/metadata"),
    ("POST", "/v1/digits"),
    ("POST", "/v1/generate/stream"),
    ("POST", "/v2/models/{name}/infer"),
    ("POST", "/v2/models/{name}/versions/{version}/infer"),
    ("GET", "/v2/models/{name}"),
    ("GET", "/v2/models/{name}/ready"),
    ("GET", "/v2/models/{name}/versions/{version}"),
    ("GET", "/v2/models/{name}/versions/{version}/ready"),
    ("GET", "/v2/models/{name}/config"),
    ("GET", "/v2/models/{name}/versions/{version}/config"),
]
OPERATIONS_WITHOUT_INPUT = [
    ("GET", "/v1/metadata"),
    ("GET", "/healthz"),
    ("GET", "/livez"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/v2"),
    ("GET", "/v2/health/live"),
    ("GET", "/v2/health/ready"),
]
CASES = [(m, p, "positive") for m, p in OPERATIONS_WITH_INPUT + OPERATIONS_WITHOUT_INPUT] + [
    (m, p, "negative") for m, p in OPERATIONS_WITH_INPUT
]


def test_every_documented_operation_is_fuzzed(api_schema: Any) -> None:
    documented = {
        (result.ok().method.upper(), result.ok().path) for result in api_schema.get_all_operations()
    }
    assert documented == set(OPERATIONS_WITH_INPUT + OPERATIONS_WITHOUT_INPUT)


@pytest.mark.parametrize(("method", "path", "mode"), CASES, ids=[" ".join(c) for c in CASES])
def test_api_fuzzing(api_schema: Any, method: str, path: str, mode: str) -> None:
    operation = api_schema[path][method]
    checks = [
        c for c in CHECKS if not (c is positive_data_acceptance and path in SEMANTIC_REFUSALS)
    ]

    @given(case=operation.as_strategy(generation_mode=GenerationMode(mode)))
    @settings(
        max_examples=FEWER_EXAMPLES.get(path, EXAMPLES_PER_OPERATION),
        deadline=None,
        derandomize=True,  # the same requests on every run: CI cannot flake on a new draw
        database=None,  # no .hypothesis/ folder
        suppress_health_check=list(HealthCheck),
    )
    def call_and_check(case: Any) -> None:
        SENT[f"{method} {path}"] = SENT.get(f"{method} {path}", 0) + 1
        case.call_and_validate(checks=checks, timeout=30)

    call_and_check()


def test_fuzzing_sent_enough_requests_to_every_operation(default_server: Server) -> None:
    if len(SENT) < len(OPERATIONS_WITH_INPUT + OPERATIONS_WITHOUT_INPUT):
        pytest.skip("run the whole module to count the fuzzing requests")
    print(f"fuzzing requests per operation: {SENT} (total {sum(SENT.values())})")
    assert sum(SENT.values()) >= MIN_REQUESTS, SENT
    assert default_server.process.poll() is None, "the server died during fuzzing"
    assert "status=500" not in default_server.log()  # BentoML's access log line of every answer
