"""Binding API methods once (service/bound_apis.py) keeps BentoML's calling convention."""

from __future__ import annotations

import inspect
from typing import Any, cast

import bentoml
import pytest

from service.bound_apis import bind_api_methods


@bentoml.service
class Tiny:
    @bentoml.api
    def double(self, x: int, scale: int = 2) -> int:
        return x * scale

    @bentoml.api(batchable=True)
    def lengths(self, words: list[str]) -> list[int]:
        return [len(w) for w in words]


def test_bentoml_rebuilds_the_wrapper_on_every_lookup() -> None:
    """The cost this module removes: without binding, every read is a new object."""
    instance: Any = cast(Any, Tiny).inner()
    assert instance.double is not instance.double


def test_bound_methods_are_built_once_and_behave_the_same() -> None:
    service = cast(Any, Tiny)
    instance: Any = service.inner()
    unbound = {name: getattr(instance, name) for name in service.apis}
    bind_api_methods(instance, service.apis)
    for name in service.apis:
        method = getattr(instance, name)
        assert method is getattr(instance, name)  # a dict hit from now on
        assert method.local is method  # what BentoML's request path calls
        assert inspect.signature(method) == inspect.signature(unbound[name])
    assert instance.double(3) == unbound["double"](3) == 6  # defaults filled in as before
    assert instance.double.local(x=3, scale=5) == 15
    assert instance.lengths(["ab", "c"]) == [2, 1]


def test_an_unknown_name_is_refused() -> None:
    with pytest.raises(AttributeError, match="no API method 'missing'"):
        bind_api_methods(cast(Any, Tiny).inner(), ["missing"])
