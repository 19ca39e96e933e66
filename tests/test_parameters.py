"""The text parameters, declared once (service/engine/parameters.py), and every reader of them:
the pydantic types of the BentoML routes, the stream route's parser, the OpenAPI document and
the pipeline agree on bounds, defaults and names."""

from __future__ import annotations

import math
from typing import Annotated, Any

import pytest
from pydantic import Field, TypeAdapter, ValidationError

from service.engine.parameters import MAX_SEED, Number, text_parameters
from service.errors import BadInput
from service.http import schemas
from service.http.meta_app import META_PATHS, STREAM_PATH
from service.http.stream_app import parse_generation
from service.settings import Settings

TEXT = text_parameters(Settings.from_env({}))


@pytest.mark.parametrize(
    ("parameter", "good", "bad"),
    [
        (TEXT.k, [1, 5, 20], [0, 21, 2.0, True, "5", None]),
        (TEXT.top_k, [1, 20, None], [0, 21, 1.5, False]),
        (TEXT.length, [1, 1000], [0, 1001, "10"]),
        (TEXT.temperature, [0, 0.0, 2.5, 5], [-0.1, 5.01, math.inf, math.nan, True]),
        (TEXT.softmax_temperature, [1e-9, 1, 5.0], [0, 0.0, -1, 5.5]),
        (TEXT.seed, [0, MAX_SEED, None], [-1, MAX_SEED + 1, 1.0]),
    ],
)
def test_check_and_the_pydantic_type_agree(
    parameter: Number, good: list[Any], bad: list[Any]
) -> None:
    kind: Any = int if parameter.integer else float
    if parameter.default is None:
        kind = kind | None
    adapter: TypeAdapter[Any] = TypeAdapter(Annotated[kind, Field(**parameter.pydantic_bounds())])
    for value in good:
        assert parameter.check(value) == value
        adapter.validate_python(value)
    for value in bad:
        with pytest.raises(BadInput, match=parameter.name):
            parameter.check(value)
        if not (isinstance(value, float) and not math.isfinite(value)):  # the route adds finite()
            with pytest.raises(ValidationError):
                adapter.validate_python(value)


def test_messages_name_the_parameter_its_bounds_and_the_setting() -> None:
    with pytest.raises(BadInput, match=r"top_k must lie in 1\.\.20 \(RNNSERVE_MAX_TOP_K\)"):
        TEXT.top_k.check(99)
    with pytest.raises(BadInput, match=r"temperature must lie in \(0, 5\]"):
        TEXT.softmax_temperature.check(0)
    with pytest.raises(BadInput, match=r"'length' must be a whole number"):
        TEXT.length.check(True)


def test_defaults_follow_a_lowered_limit() -> None:
    low = text_parameters(
        Settings.from_env({"RNNSERVE_MAX_TOP_K": "3", "RNNSERVE_MAX_GENERATE_CHARS": "50"})
    )
    assert low.k.default == 3 and low.k.maximum == 3 and low.top_k.maximum == 3
    assert low.length.default == 50 and low.length.maximum == 50
    assert TEXT.k.default == 5 and TEXT.length.default == 200


def test_the_stream_parser_reads_defaults_and_bounds_from_the_declaration() -> None:
    params = parse_generation(b'{"prompt": "ROMEO"}')
    assert params["length"] == TEXT.length.default
    assert params["temperature"] == TEXT.temperature.default and params["top_k"] is None
    assert 0 <= params["seed"] < 2**31
    with pytest.raises(BadInput, match="top_k must lie"):
        parse_generation(b'{"prompt": "R", "top_k": 0}')


def test_the_stream_route_documents_the_declared_bounds() -> None:
    body = META_PATHS[STREAM_PATH]["post"]["requestBody"]["content"]["application/json"]
    properties = body["schema"]["properties"]
    for parameter in TEXT.generation():
        documented = properties[parameter.name]
        assert documented["minimum"] == parameter.minimum
        assert documented["maximum"] == parameter.maximum
        assert documented.get("nullable", False) == (parameter.default is None)


def test_the_bentoml_routes_use_the_declared_defaults() -> None:
    assert TEXT.k.default == schemas.DEFAULT_K
    assert TEXT.length.default == schemas.DEFAULT_LENGTH
    assert TEXT.temperature.default == schemas.DEFAULT_TEMPERATURE
    assert TEXT.softmax_temperature.default == schemas.DEFAULT_SOFTMAX_TEMPERATURE
