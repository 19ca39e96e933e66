"""The Swagger page's examples, computed by the served models when the document is built.

A hand-written answer goes stale the day a model is retrained (the page once offered an
all-black array whose answer was a "confident" 4). So each documented request is run through
this worker's models as the route would run it, and its answer is the documented one: the
same digit, probabilities, version and provider; the same candidates; the same generated text
for the same seed (CharModel.generate is the reference the text loop matches).
tests/test_openapi.py posts every example and compares.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from service.engine.pipeline import Classified, NextChars, Pipelines, split_checked
from service.http.schemas import EXAMPLE_DIGIT, digit_answer, generate_answer, next_char_answer
from service.model.numerics import softmax, top_k

EXAMPLE_TEXT = "ROMEO:\nWhat light thro"
EXAMPLE_PROMPT = "ROMEO:\n"
EXAMPLE_SEED = 7
EXAMPLE_LENGTH = 60
STATE_SHOWN = 24  # characters of a carried state shown (it is 11,000 long: opaque anyway)


def live_examples(pipelines: Pipelines) -> dict[str, dict[str, Any]]:
    """route -> {"request": body, "response": answer}, for the routes with JSON examples;
    the answers built by the routes' own builders (schemas.py)."""
    examples: dict[str, dict[str, Any]] = {}
    registry = pipelines.registry
    if registry.digits:
        model = registry.digit_model(None)
        probs, typical = split_checked(model.predict_checked(np.asarray([EXAMPLE_DIGIT])))
        answer = digit_answer(Classified(model, probs, typical))
        examples["/classify_pixels"] = {
            "request": {"images": [{"pixels": EXAMPLE_DIGIT, "model": model.name}]},
            "response": [answer.model_dump()],
        }
    char = registry.char
    codec = pipelines.codec
    if char is not None and codec is not None:
        k = 3
        last, state = char.read_prompt(char.encode(EXAMPLE_TEXT))
        probs = softmax(last[0], 1.0)
        carried = codec.encode(state[:, 0], last[0], len(EXAMPLE_TEXT))
        read = NextChars(
            char,
            [(char.vocab[i], float(probs[i])) for i in top_k(probs, k)],
            carried[:STATE_SHOWN] + "...",
            len(EXAMPLE_TEXT),
        )
        examples["/next_char"] = {
            "request": {"text": EXAMPLE_TEXT, "k": k},
            "response": next_char_answer(EXAMPLE_TEXT, read).model_dump(),
        }
        text = char.generate(EXAMPLE_PROMPT, EXAMPLE_LENGTH, 0.8, None, EXAMPLE_SEED)
        examples["/generate"] = {
            "request": {
                "prompt": EXAMPLE_PROMPT,
                "length": EXAMPLE_LENGTH,
                "temperature": 0.8,
                "seed": EXAMPLE_SEED,
            },
            "response": generate_answer(
                EXAMPLE_PROMPT,
                text,
                EXAMPLE_SEED,
                0.8,
                None,
                char,
                "rs1...",
                len(EXAMPLE_PROMPT) + EXAMPLE_LENGTH,
            ).model_dump(),
        }
    return examples
