"""Typed request and response bodies; their constraints and examples feed the OpenAPI page.

Limits come from the settings (read once at import), and the list of classifier names from the
model directory, so the Swagger page shows exactly what this server accepts.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal, cast

import numpy as np
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from service.engine.carried_state import MAX_STATE_CHARS
from service.engine.parameters import Number, text_parameters
from service.engine.pipeline import Classified, NextChars
from service.errors import short
from service.model.cards import CardError, ModelCard, short_name
from service.model.inference import CharModel
from service.model.repository import discover_cards
from service.settings import get_settings

SETTINGS = get_settings()
TEXT = text_parameters(SETTINGS)


def _cards() -> list[ModelCard]:
    try:
        return discover_cards(SETTINGS.model_dir, verify=False)  # start-up verifies later
    except CardError:
        return []


def _classifier_names(cards: list[ModelCard]) -> list[str]:
    names = [c.name for c in cards if c.task == "digit-classification"]
    return sorted({short_name(n) for n in names}) + sorted(names)


def vocabulary_pattern(vocabulary: list[str]) -> str:
    """A JSON-schema (ECMA-262) pattern matching text made only of `vocabulary`'s characters."""
    escaped = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
    chars = "".join(
        escaped.get(c, "\\" + c if c in "\\]^-[" else c) for c in sorted(set(vocabulary))
    )
    return f"^[{chars}]*$"


def text_schema(cards: list[ModelCard]) -> dict[str, Any] | None:
    """Documents the characters the text model knows (others are refused with 422)."""
    char_cards = [c for c in cards if c.task == "next-character"]
    if not char_cards:
        return None
    return {"pattern": vocabulary_pattern(list(char_cards[0].data.get("vocabulary", [])))}


CARDS = _cards()
DIGIT_MODEL_NAMES = _classifier_names(CARDS)
DEFAULT_DIGIT_MODEL = short_name(SETTINGS.default_digit_model)


def _known_model(name: str) -> str:
    """With the models fixed at start-up the schema knows their names; under model control
    a model may arrive later, and the registry answers for unknown names (400 either way)."""
    if SETTINGS.model_control == "none" and DIGIT_MODEL_NAMES and name not in DIGIT_MODEL_NAMES:
        raise ValueError(f"unknown model {short(name)}; choose one of {DIGIT_MODEL_NAMES}")
    return name


DigitModelName = Annotated[
    str,
    AfterValidator(_known_model),
    Field(
        description="which digit classifier answers (short or full name)",
        json_schema_extra=(
            {"enum": DIGIT_MODEL_NAMES}
            if DIGIT_MODEL_NAMES and SETTINGS.model_control == "none"
            else None
        ),
    ),
]

ROW_SCHEMA: dict[str, Any] = {
    "type": "array",
    "minItems": 28,
    "maxItems": 28,
    "items": {"type": "number", "minimum": 0, "maximum": 255},
}
EXAMPLE_DIGIT = [[0.0] * 28 for _ in range(28)]
for _r in range(6, 22):  # a rough "1": a vertical bar of ink
    EXAMPLE_DIGIT[_r][13] = EXAMPLE_DIGIT[_r][14] = 255.0


class DigitPixels(BaseModel):
    """One 28x28 digit as rows of pixel values, white ink on black as in MNIST."""

    model_config = ConfigDict(
        strict=True,  # numbers must be JSON numbers (not true/false or strings)
        # BentoML's OpenAPI schema takes a single `example` (not `examples`)
        json_schema_extra={
            "example": cast(
                Any, {"pixels": EXAMPLE_DIGIT, "model": DEFAULT_DIGIT_MODEL, "scale": "0-255"}
            )
        },
    )

    pixels: Annotated[
        list[list[float]],
        Field(
            min_length=28,
            max_length=28,
            description="28 rows of 28 values, 0..255 (or 0..1 with scale '0-1')",
            # the row length and value range are checked by _check_pixels (with messages
            # that name the row); this documents them in the schema as well
            json_schema_extra={"items": ROW_SCHEMA},
        ),
    ]
    model: DigitModelName = DEFAULT_DIGIT_MODEL
    scale: Literal["0-255", "0-1"] = Field(
        "0-255", description="value range of the pixels: 0..255 (bytes) or 0..1 (fractions)"
    )

    _array: np.ndarray = PrivateAttr()

    @model_validator(mode="after")
    def _check_pixels(self) -> DigitPixels:
        """Shape, finiteness and range are checked here, per request, before batching: a bad
        image must fail its own request, never a batch it would have shared with others."""
        rows = self.pixels
        bad_rows = [i for i, row in enumerate(rows) if len(row) != 28]
        if bad_rows:
            raise ValueError(
                f"every row needs 28 values; row {bad_rows[0]} has {len(rows[bad_rows[0]])}"
            )
        array = np.asarray(rows, dtype=np.float32)
        if not np.isfinite(array).all():
            raise ValueError("pixels must be finite numbers (no NaN or infinity)")
        top = 255.0 if self.scale == "0-255" else 1.0
        low, high = float(array.min()), float(array.max())
        if low < 0 or high > top:
            raise ValueError(
                f"pixel values must lie in 0..{top:g} for scale {self.scale!r}; got "
                f"{low:g}..{high:g}"
            )
        self._array = array if top == 255.0 else array * np.float32(255.0)
        return self

    def as_0_255(self) -> np.ndarray:
        """The validated (28, 28) float32 image on the 0..255 scale."""
        return self._array


class DigitPrediction(BaseModel):
    digit: int = Field(description="the most probable digit")
    confident: bool = Field(
        description="whether the top probability reaches the model's calibrated threshold "
        "for the input's source (its card's calibration: for photos and scans, calibrated on "
        "rendered photos, confident answers right at least 99.5% of the time; for pixel "
        "arrays, on MNIST validation digits, at least 99.7%) and, for pixel arrays, whether "
        "the array looks like a digit "
        "at all (a blank, constant or noise array never is: the card's input_check); false: "
        "look at the probabilities, or ask for a clearer picture"
    )
    probabilities: list[float] = Field(description="probability of each digit 0..9")
    model: str = Field(description="the model that answered")
    model_version: int = Field(description="the version of the model that computed this answer")
    provider: str = Field(description="where it ran, e.g. CPUExecutionProvider")


class ImagePrediction(DigitPrediction):
    seen: list[list[int]] | None = Field(
        default=None,
        description="only with show_input=true: the 28x28 picture the model saw (0..255, "
        "white digit on black), as read out of the upload",
    )

    @model_serializer(mode="wrap")
    def _leave_out_unasked_seen(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """`seen` is in the answer only when asked for: BentoML's own client (SyncHTTPClient)
        decodes a null where its schema says array by iterating it, and crashed on every
        classify_image answer without show_input (`'NoneType' object is not iterable`)."""
        data: dict[str, Any] = handler(self)
        if data.get("seen") is None:
            data.pop("seen", None)
        return data


class CharCandidate(BaseModel):
    char: str
    probability: float


STATE_DESCRIPTION = (
    "the carried state after everything read: send it back as `state` with only the characters "
    "that follow, on any worker or replica (opaque; it names its model and version)"
)


class NextCharResponse(BaseModel):
    text: str = Field(description="the characters read by this request")
    candidates: list[CharCandidate] = Field(description="most probable first")
    model: str
    model_version: int = Field(description="the version of the model that computed this answer")
    provider: str
    state: str = Field(description=STATE_DESCRIPTION)
    context_chars: int = Field(description="characters the state has read in all")


class GenerateResponse(BaseModel):
    prompt: str
    text: str = Field(description="the generated continuation (without the prompt)")
    seed: int = Field(description="the seed used: send it again to get the same text")
    temperature: float
    top_k: int | None
    model: str
    model_version: int = Field(description="the version of the model that computed this answer")
    provider: str
    state: str = Field(
        description="the carried state after the prompt and the generated text: send it back "
        "as `state` to continue (opaque; it names its model and version)"
    )
    context_chars: int = Field(description="characters the state has read in all")


def finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


# Bounds, defaults and descriptions: service/engine/parameters.py, the one place they live.
# The bounds come first in each Field, so that they reach the JSON schema as minimum/maximum.
Temperature = Annotated[float, Field(**TEXT.temperature.pydantic_bounds()), AfterValidator(finite)]
SoftmaxTemperature = Annotated[
    float, Field(**TEXT.softmax_temperature.pydantic_bounds()), AfterValidator(finite)
]
TopK = Annotated[int, Field(**TEXT.k.pydantic_bounds())]
SamplingTopK = Annotated[int, Field(**TEXT.top_k.pydantic_bounds())]
PromptText = Annotated[
    str,
    Field(
        max_length=TEXT.max_text_chars,
        examples=["ROMEO:\n"],
        description="text in the model's vocabulary (GET /v1/metadata lists it); with a "
        "`state`, only the characters that follow it (then it may be empty)",
        json_schema_extra=text_schema(CARDS),
    ),
]
CarriedState = Annotated[
    str,
    Field(
        max_length=MAX_STATE_CHARS,
        description="the `state` of an earlier answer, exactly as received: the text then "
        "continues from it (400 when it belongs to another model or version, or was changed)",
    ),
]
Seed = Annotated[int, Field(**TEXT.seed.pydantic_bounds())]
GenerateLength = Annotated[int, Field(**TEXT.length.pydantic_bounds())]


# The bounds the BentoML routes' pydantic types take from settings, by route and field, so that
# a refusal names the setting as the lean and stream routes' do (`describe_limit`).
BOUNDED_NUMBERS: dict[str, dict[str, Number]] = {
    "/next_char": {"k": TEXT.k, "temperature": TEXT.softmax_temperature},
    "/generate": {
        "length": TEXT.length,
        "temperature": TEXT.temperature,
        "top_k": TEXT.top_k,
        "seed": TEXT.seed,
    },
}
TEXT_FIELDS = {"/next_char": "text", "/generate": "prompt"}
NUMBER_ERRORS = {"less_than_equal", "less_than", "greater_than_equal", "greater_than"}
_ACTUAL = re.compile(r"\bnot (\d+)\b")


def describe_limit(path: str, field: str, error_type: str, message: str) -> str | None:
    """pydantic's refusal of a bounded field, in the words the engine uses for the same limit
    (naming the setting behind it); None for any other error."""
    number = BOUNDED_NUMBERS.get(path, {}).get(field)
    if number is not None and error_type in NUMBER_ERRORS:
        setting = f" ({number.setting})" if number.setting else ""
        return f"{number.name} must lie in {number.bounds()}{setting}"
    if TEXT_FIELDS.get(path) == field and error_type == "string_too_long":
        return (
            f"{field} is over the limit of {TEXT.max_text_chars} characters "
            "(RNNSERVE_MAX_TEXT_CHARS)"
        )
    if path == "/classify_pixels" and field == "images" and error_type == "too_long":
        actual = _ACTUAL.search(message)
        count = f"{actual.group(1)} images" if actual else "more images"
        return (
            f"{count} in one request, over the limit of {SETTINGS.max_images_per_request} "
            "(RNNSERVE_MAX_IMAGES_PER_REQUEST); split the request"
        )
    return None


DEFAULT_K = int(TEXT.k.default or 1)
DEFAULT_LENGTH = int(TEXT.length.default or 1)
DEFAULT_TEMPERATURE = float(TEXT.temperature.default or 0.0)
DEFAULT_SOFTMAX_TEMPERATURE = float(TEXT.softmax_temperature.default or 1.0)


# ---------------------------------------------------------------------- answers
# Built without validation (model_construct): the values are ours. One builder per answer, for
# the routes and for the Swagger page's examples (openapi_examples.py) alike.


def digit_answer(answer: Classified) -> DigitPrediction:
    """One digit answer (`answer` holds one image)."""
    model, probs = answer.model, answer.probabilities[0]
    return DigitPrediction.model_construct(
        digit=int(probs.argmax()),
        confident=bool(answer.confident[0]),
        probabilities=probs.round(6).tolist(),
        model=model.name,
        model_version=model.version,
        provider=model.backend.provider,
    )


def next_char_answer(text: str, answer: NextChars) -> NextCharResponse:
    return NextCharResponse.model_construct(
        text=text,
        candidates=[
            CharCandidate.model_construct(char=c, probability=round(p, 6))
            for c, p in answer.candidates
        ],
        model=answer.model.name,
        model_version=answer.model.version,
        provider=answer.model.backend.provider,
        state=answer.state,
        context_chars=answer.context_chars,
    )


def generate_answer(
    prompt: str,
    text: str,
    seed: int,
    temperature: float,
    top_k: int | None,
    model: CharModel,
    state: str,
    context_chars: int,
) -> GenerateResponse:
    return GenerateResponse.model_construct(
        prompt=prompt,
        text=text,
        seed=seed,
        temperature=temperature,
        top_k=top_k,
        model=model.name,
        model_version=model.version,
        provider=model.backend.provider,
        state=state,
        context_chars=context_chars,
    )
