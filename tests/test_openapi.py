"""The Swagger page's document: readable schema names, the real answer schema of every route,
and examples whose documented answer is what the service answers (service/http/openapi.py,
service/http/openapi_examples.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

ROUTES = ("/classify_pixels", "/next_char", "/generate")


@pytest.fixture(scope="module")
def document(app_client: Any) -> dict[str, Any]:
    return dict(app_client.get("/docs.json").json())


def test_schema_names_are_the_services_not_bentomls(document: dict[str, Any]) -> None:
    names = set(document["components"]["schemas"])
    assert {"ClassifyPixelsRequest", "NextCharRequest", "GenerateRequest"} <= names
    assert {"NextCharResponse", "GenerateResponse", "ImagePrediction"} <= names
    leftovers = [n for n in names if "__" in n or n.endswith("IODescriptor")]
    assert not leftovers and "TaskStatusResponse" not in names
    text = json.dumps(document)
    refs = {part.split('"')[0] for part in text.split('"#/components/schemas/')[1:]}
    assert refs <= names, refs - names  # every reference resolves after the renames
    image = document["paths"]["/classify_image"]["post"]["responses"]["200"]
    assert image["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ImagePrediction"
    }


@pytest.mark.parametrize("route", ROUTES)
def test_each_documented_answer_is_what_the_service_answers(
    document: dict[str, Any], app_client: Any, route: str
) -> None:
    operation = document["paths"][route]["post"]
    request = operation["requestBody"]["content"]["application/json"]["example"]
    shown = operation["responses"]["200"]["content"]["application/json"]["example"]
    answer = app_client.post(route, json=request)
    assert answer.status_code == 200, answer.text
    got = answer.json()
    if route == "/classify_pixels":
        (one,), (expected,) = got, shown
        assert one["digit"] == expected["digit"] == 1 and one["confident"] is expected["confident"]
        assert one["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-5)
        assert {k: one[k] for k in ("model", "model_version", "provider")} == {
            k: expected[k] for k in ("model", "model_version", "provider")
        }
        return
    assert got["state"].startswith(shown["state"].removesuffix("..."))
    for key in ("model", "model_version", "provider", "context_chars"):
        assert got[key] == shown[key], key
    if route == "/next_char":
        assert [c["char"] for c in got["candidates"]] == [c["char"] for c in shown["candidates"]]
        assert [c["probability"] for c in got["candidates"]] == pytest.approx(
            [c["probability"] for c in shown["candidates"]], abs=1e-5
        )
    else:  # the same seed: the same text
        assert got["text"] == shown["text"] and len(got["text"]) == request["length"]


def test_the_page_shows_the_title(app_client: Any) -> None:
    page = app_client.get("/").text
    assert ".info .main .title { visibility: visible; }" in page
