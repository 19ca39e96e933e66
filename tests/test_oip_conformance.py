"""Conformance with the official Open Inference Protocol REST specification: schemathesis
fuzzes a real `bentoml serve` from kserve/open-inference-protocol's own OpenAPI document
(tests/fixtures/oip/open_inference_rest.yaml, Apache-2.0, vendored unchanged from commit
d49cc23f89d709d87b210ef9449e273ae243984e), not from ours: no server error, every answer the
document describes valid against its schema, and every 405 naming the allowed methods.

The document writes its path parameters as `${MODEL_NAME}` (a `$` before OpenAPI's braces,
which would make every generated path start its name with `$`); they are read as
`{MODEL_NAME}`. It documents no 404, so generated model names (unknown, answered 404 with
`{"error": ...}`) are checked for the error shape by our own check; requests for the real
models and versions show the 200 answers valid against its schemas.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from loadtest.servers import Server
from service.model.repository import discover_cards
from tests.conftest import FIXTURES, ROOT

pytestmark = pytest.mark.slow
SPEC = FIXTURES / "oip" / "open_inference_rest.yaml"
EXAMPLES = 50


@schemathesis.check
def protocol_error_shape(ctx: Any, response: Any, case: Any) -> bool | None:
    """A refusal is the protocol's `{"error": "..."}` (the document's error schemas), whatever
    its status; a 405 says which methods the path takes (RFC 9110)."""
    if response.status_code < 400:
        return None
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert isinstance(body["error"], str) and body["error"].strip(), body
    if response.status_code == 405:
        assert response.headers.get("allow"), "a 405 without Allow"
    return True


CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]


@pytest.fixture(scope="module")
def spec(default_server: Server) -> Any:
    document = yaml.safe_load(SPEC.read_text())
    document["paths"] = {path.replace("${", "{"): item for path, item in document["paths"].items()}
    schema = schemathesis.openapi.from_dict(document)
    schema.config.update(base_url=default_server.url)
    return schema


def operations(spec: Any) -> list[tuple[str, str]]:
    return sorted(
        (result.ok().method.upper(), result.ok().path) for result in spec.get_all_operations()
    )


def test_the_document_has_the_operations_we_fuzz(spec: Any) -> None:
    assert operations(spec) == sorted(OPERATIONS)


OPERATIONS = [
    ("GET", "/v2/health/live"),
    ("GET", "/v2/health/ready"),
    ("GET", "/v2/"),
    ("GET", "/v2/models/{MODEL_NAME}/versions/{MODEL_VERSION}"),
    ("GET", "/v2/models/{MODEL_NAME}/versions/{MODEL_VERSION}/ready"),
    ("POST", "/v2/models/{MODEL_NAME}/versions/{MODEL_VERSION}/infer"),
]
# invalid requests exist only where the document constrains something: the infer body (its
# path parameters are any string)
CASES = [(m, p, "positive") for m, p in OPERATIONS] + [
    (m, p, "negative") for m, p in OPERATIONS if m == "POST"
]


@pytest.mark.parametrize(("method", "path", "mode"), CASES, ids=[" ".join(c) for c in CASES])
def test_fuzzed_from_the_official_document(spec: Any, method: str, path: str, mode: str) -> None:
    operation = spec[path][method]

    @given(case=operation.as_strategy(generation_mode=GenerationMode(mode)))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,  # the same requests on every run
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def call_and_check(case: Any) -> None:
        case.call_and_validate(checks=[*CHECKS, protocol_error_shape], timeout=30)

    call_and_check()


def test_answers_for_the_real_models_are_valid_against_the_document(spec: Any) -> None:
    """The generated names never hit a model: the real ones, each answer of every documented
    operation validated against the document's schema for it."""
    infer = spec["/v2/models/{MODEL_NAME}/versions/{MODEL_VERSION}/infer"]["POST"]
    for card in discover_cards(ROOT / "models"):
        where = {"MODEL_NAME": card.name, "MODEL_VERSION": str(card.data["version"])}
        for path in (
            "/v2/models/{MODEL_NAME}/versions/{MODEL_VERSION}",
            "/v2/models/{MODEL_NAME}/versions/{MODEL_VERSION}/ready",
        ):
            response = (
                spec[path]["GET"]
                .Case(path_parameters=where)
                .call_and_validate(checks=CHECKS, timeout=30)
            )
            assert response.status_code == 200, response.text
        if "mnist" in card.name:
            tensor = {"name": "pixels", "datatype": "FP32", "shape": [1, 28, 28]}
            body = {"id": "7", "inputs": [{**tensor, "data": [0.0] * 784}]}
        else:
            body = {
                "inputs": [{"name": "ids", "datatype": "INT64", "shape": [1, 3], "data": [1, 2, 3]}]
            }
        response = infer.Case(path_parameters=where, body=body, media_type="application/json")
        answer = response.call_and_validate(checks=CHECKS, timeout=30)
        assert answer.status_code == 200, answer.text


def test_the_server_survived(default_server: Server) -> None:
    assert httpx.get(f"{default_server.url}/readyz", timeout=10).status_code == 200
    assert default_server.process.poll() is None
