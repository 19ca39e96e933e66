"""The text routes' numeric parameters, declared once: name, type, bounds (with the setting
behind a bound), default and description.

Every reader takes them from here: the BentoML routes' pydantic types
(service/http/schemas.py), the stream route's parser (service/http/stream_app.py), its OpenAPI
fragment (service/http/meta_app.py), the pipeline's own checks (service/engine/pipeline.py) and
the metadata's `limits`. A bound that follows a setting follows it everywhere at once; a
default above a lowered limit is the limit (RNNSERVE_MAX_TOP_K=3 must not turn a request that
names no k into a 400).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from service.errors import BadInput
from service.settings import Settings

MAX_SEED = 2**63 - 1
MAX_TEMPERATURE = 5.0


@dataclass(frozen=True)
class Number:
    """One numeric parameter of a request."""

    name: str
    integer: bool  # a whole number (JSON integer), else any JSON number
    minimum: float
    maximum: float
    default: float | None  # None: optional, absent means "not used"
    description: str
    above_minimum: bool = False  # the minimum itself is excluded (softmax temperature: > 0)
    setting: str | None = None  # the RNNSERVE_* setting the maximum comes from

    def check(self, value: Any) -> Any:
        """`value` as the parameter's type, or BadInput naming the parameter and its bounds.
        Strict: JSON true/false and strings are no numbers."""
        if value is None and self.default is None:
            return None
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or (self.integer and not isinstance(value, int))
        ):
            raise BadInput(f"'{self.name}' must be a {'whole ' if self.integer else ''}number")
        low_ok = value > self.minimum if self.above_minimum else value >= self.minimum
        if not (math.isfinite(value) and low_ok and value <= self.maximum):
            raise BadInput(f"{self.name} must lie in {self.bounds()}{self._why()}")
        return value if self.integer else float(value)

    def read(self, data: Mapping[str, Any]) -> Any:
        """The parameter from a JSON object: its value, or its default when absent."""
        return self.check(data.get(self.name, self.default))

    def bounds(self) -> str:
        low = f"{self.minimum:g}" if not self.integer else str(int(self.minimum))
        high = f"{self.maximum:g}" if not self.integer else _integer_text(self.maximum)
        return f"({low}, {high}]" if self.above_minimum else f"{low}..{high}"

    def _why(self) -> str:
        return f" ({self.setting})" if self.setting else ""

    def schema(self) -> dict[str, Any]:
        """The parameter's schema as the service's OpenAPI 3.0 document writes it (a null
        allowed: `nullable`; an excluded minimum: `exclusiveMinimum: true`)."""
        number = int if self.integer else float
        schema: dict[str, Any] = {
            "type": "integer" if self.integer else "number",
            "minimum": number(self.minimum),
            "maximum": number(self.maximum),
        }
        if self.above_minimum:
            schema["exclusiveMinimum"] = True
        if self.default is None:
            schema["nullable"] = True
        schema["description"] = self.description
        return schema

    def pydantic_bounds(self) -> dict[str, Any]:
        """The keyword arguments of a pydantic `Field` with these bounds (strict: no true/false
        and no strings for numbers, which the schema does not allow either)."""
        number = int if self.integer else float
        low = "gt" if self.above_minimum else "ge"
        return {
            low: number(self.minimum),
            "le": number(self.maximum),
            "strict": True,
            "description": self.description,
        }


def _integer_text(value: float) -> str:
    return "2^63-1" if value == MAX_SEED else str(int(value))


@dataclass(frozen=True)
class TextParameters:
    """The parameters of next-character prediction and generation under one set of limits."""

    k: Number  # next_char: how many candidates
    softmax_temperature: Number  # next_char: the probabilities' temperature
    length: Number  # generate: characters to generate
    temperature: Number  # generate: sampling temperature (0: greedy)
    top_k: Number  # generate: sample among the k most probable (absent: all)
    seed: Number  # generate: the random seed (absent: one is drawn)
    max_text_chars: int  # the text and the prompt

    def generation(self) -> tuple[Number, ...]:
        return (self.length, self.temperature, self.top_k, self.seed)


@lru_cache(maxsize=8)
def _text_parameters(
    max_top_k: int, max_generate_chars: int, max_text_chars: int
) -> TextParameters:
    return TextParameters(
        k=Number(
            "k",
            True,
            1,
            max_top_k,
            min(5, max_top_k),
            "how many candidates, most probable first",
            setting="RNNSERVE_MAX_TOP_K",
        ),
        softmax_temperature=Number(
            "temperature",
            False,
            0.0,
            MAX_TEMPERATURE,
            1.0,
            "softmax temperature for the probabilities (above 0)",
            above_minimum=True,
        ),
        length=Number(
            "length",
            True,
            1,
            max_generate_chars,
            min(200, max_generate_chars),
            "characters to generate",
            setting="RNNSERVE_MAX_GENERATE_CHARS",
        ),
        temperature=Number(
            "temperature",
            False,
            0.0,
            MAX_TEMPERATURE,
            0.8,
            "sampling temperature; 0 means greedy",
        ),
        top_k=Number(
            "top_k",
            True,
            1,
            max_top_k,
            None,
            "sample among the k most probable characters only (absent: all)",
            setting="RNNSERVE_MAX_TOP_K",
        ),
        seed=Number(
            "seed",
            True,
            0,
            MAX_SEED,
            None,
            "the random seed: the same seed and settings give the same text (absent: drawn)",
        ),
        max_text_chars=max_text_chars,
    )


def text_parameters(settings: Settings) -> TextParameters:
    """The text parameters under `settings`' limits."""
    return _text_parameters(
        settings.max_top_k, settings.max_generate_chars, settings.max_text_chars
    )
