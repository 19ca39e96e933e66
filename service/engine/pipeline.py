"""The request pipeline after decoding, the same for every protocol:

    validate + cost check -> admit (bounded queue) -> batch -> model -> result

The front-ends (service/http/: service.py for the BentoML APIs, lean_digits.py, stream_app.py,
v2_app.py) decode their wire format into numpy arrays and plain values and call one method
here; what comes back is numpy arrays
and plain values, which they encode. Nothing here knows HTTP: problems are domain errors
(service/errors.py), which each protocol maps to its status codes and error body.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from service import __version__
from service.engine.admission import CLIENT_LEFT, ContinuousBatcher, Lane
from service.engine.generation import DecodeLoop, GenerationRequest
from service.engine.parameters import text_parameters
from service.engine.validation import char_ids, char_state, digit_images, text_length
from service.errors import NotReady
from service.imaging.photo import read_digit
from service.imaging.uploads import ImageLimits, decode_image
from service.model.inference import CharModel, DigitClassifier, ModelRegistry
from service.settings import Settings

T = TypeVar("T")
# Bodies above this size are parsed on the decoding thread, not on the event loop, so that
# health probes and small requests are not held up behind them.
LARGE_BODY_BYTES = 64 * 1024


@dataclass(frozen=True)
class Classified:
    model: DigitClassifier
    probabilities: np.ndarray  # (N, 10) float32


class Pipelines:
    """One worker's models behind their queues: what every route calls after decoding."""

    def __init__(self, registry: ModelRegistry, settings: Settings) -> None:
        self.registry = registry
        self.settings = settings
        self.parameters = text_parameters(settings)
        rows = settings.max_batch_size if settings.batching else 1  # off: one request a call
        self.batchers = {
            name: ContinuousBatcher(
                name,
                model.predict,
                rows,
                settings.max_queued_images,
                settings.max_queue_wait_ms / 1000,
            )
            for name, model in registry.digits.items()
        }
        self.decoding = Lane(
            "decoding", 1, settings.max_queued_decodes, "RNNSERVE_MAX_QUEUED_DECODES"
        )
        self.text = Lane("text", 1, settings.max_queued_text, "RNNSERVE_MAX_QUEUED_TEXT")
        self.decode_loop = (
            DecodeLoop(
                registry.char,
                settings.max_active_generations,
                settings.max_queued_generations,
                settings.generation_joins_per_step,
            )
            if registry.char is not None
            else None
        )
        self.image_limits = ImageLimits(
            settings.max_image_pixels, settings.max_image_side, settings.max_image_aspect
        )

    # ------------------------------------------------------------------ decoding help

    async def parse(self, parse: Callable[[bytes], T], body: bytes) -> T:
        """`parse(body)`: inline for small bodies, on the decoding thread for large ones."""
        if len(body) <= LARGE_BODY_BYTES:
            return parse(body)
        return await self.decoding.run(parse, body)

    # ------------------------------------------------------------------ digits

    def digit_model(self, name: str | None) -> DigitClassifier:
        return self.registry.digit_model(name)

    async def classify(self, images: np.ndarray, model_name: str | None) -> Classified:
        """(28, 28) or (N, 28, 28) pixels on 0..255, one model -> probabilities (N, 10)."""
        images = digit_images(images, self.settings.max_images_per_request)
        model = self.digit_model(model_name)
        return Classified(model, await self.batchers[model.name].predict(images))

    async def classify_each(
        self, images: np.ndarray, model_names: Sequence[str | None]
    ) -> list[tuple[DigitClassifier, np.ndarray]]:
        """Images that each name their model: one batched call per distinct model, answers
        in the images' order as (model, probabilities (10,))."""
        images = digit_images(images, self.settings.max_images_per_request)
        models = [self.digit_model(name) for name in model_names]
        rows: dict[str, list[int]] = {}
        for i, model in enumerate(models):
            rows.setdefault(model.name, []).append(i)
        results = await asyncio.gather(
            *(self.batchers[name].predict(images[indices]) for name, indices in rows.items())
        )
        answers: list[tuple[DigitClassifier, np.ndarray]] = [None] * len(models)  # type: ignore[list-item]
        for (name, indices), probs in zip(rows.items(), results, strict=True):
            for i, row in zip(indices, probs, strict=True):
                answers[i] = (self.registry.digits[name], row)
        return answers

    async def classify_upload(
        self, data: bytes, model_name: str | None
    ) -> tuple[Classified, np.ndarray]:
        """An uploaded picture -> (answer, the 28x28 uint8 the model saw)."""
        model = self.digit_model(model_name)  # before any decoding work
        pixels = await self.decoding.run(self.read_digit, data)
        probs = await self.batchers[model.name].predict(pixels[None].astype(np.float32))
        return Classified(model, probs), pixels

    def read_digit(self, data: bytes) -> np.ndarray:
        return read_digit(decode_image(data, self.image_limits)).pixels

    # ------------------------------------------------------------------ text

    def char_model(self) -> CharModel:
        return self.registry.char_model()

    async def next_chars(
        self, text: str, k: int, temperature: float
    ) -> tuple[CharModel, list[tuple[str, float]]]:
        model = self.char_model()
        text_length(text, self.settings.max_text_chars)
        self.parameters.k.check(k)
        self.parameters.softmax_temperature.check(temperature)
        model.encode(text)  # unknown characters: 422 before queueing
        return model, await self.text.run(model.next_chars, text, k, temperature)

    async def char_logits(
        self, ids: np.ndarray, state: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """V2's raw step: ids (rows, steps) and an optional carried state -> logits
        (rows, steps, vocab) and the new state."""
        model = self.char_model()
        s = self.settings
        ids = char_ids(ids, len(model.vocab), s.max_char_rows, s.max_text_chars, s.max_char_ids)
        expected = (model.state_rows, ids.shape[0], model.hidden)
        state = model.fresh_state(ids.shape[0]) if state is None else char_state(state, expected)
        logits, state_out = await self.text.run(
            model.run, {"ids": ids, "state": state}, ids.shape[0]
        )
        return logits, state_out

    def generation(
        self, prompt: str, length: int, temperature: float, top_k: int | None, seed: int
    ) -> tuple[CharModel, AsyncIterator[str]]:
        """Validate a generation, then its text as it comes (chunks, from the decode loop).
        Every check happens here, before the first character, so a stream never starts for a
        request that would fail."""
        model = self.char_model()
        text_length(prompt, self.settings.max_text_chars, "prompt")
        for parameter, value in zip(
            self.parameters.generation(), (length, temperature, top_k, seed), strict=True
        ):
            parameter.check(value)
        request = GenerationRequest(model.encode(prompt), length, temperature, top_k, seed)
        assert self.decode_loop is not None  # there is a char model
        sequence = self.decode_loop.submit(request, CLIENT_LEFT.get())  # 503 here when full
        return model, self.decode_loop.chunks_of(sequence)

    async def generate(
        self, prompt: str, length: int, temperature: float, top_k: int | None, seed: int
    ) -> tuple[CharModel, str]:
        """The whole text at once (the same decode loop as the stream)."""
        model, chunks = self.generation(prompt, length, temperature, top_k, seed)
        return model, "".join([chunk async for chunk in chunks])

    # ------------------------------------------------------------------ metadata

    def describe(self) -> dict[str, Any]:
        registry = self.registry
        return {
            "service": "rnnserve",
            "version": __version__,
            "backend": self.settings.backend,
            "device": registry.device.device,
            "device_reason": registry.device.reason,
            # the ONNX path must stay torch-free: this makes it observable
            "torch_imported": "torch" in sys.modules,
            "default_digit_model": self.settings.default_digit_model,
            "digit_model_names": registry.digit_model_names(),
            "vocabulary": registry.char.vocab if registry.char else None,
            "models": registry.describe(),
            # what a client may ask for: the demo page sizes its inputs from these
            "limits": {
                "max_images_per_request": self.settings.max_images_per_request,
                "max_text_chars": self.settings.max_text_chars,
                "max_generate_chars": self.settings.max_generate_chars,
                "max_top_k": self.settings.max_top_k,
                "max_request_bytes": self.settings.max_request_bytes,
            },
        }


class ServingState:
    """The worker's pipelines, filled in when the service instance has loaded and warmed up
    its models. The mounted apps are built at import time and hold this object (explicit
    wiring), so they need no lookup per request; before start-up ends they answer 503."""

    def __init__(self) -> None:
        self.pipelines: Pipelines | None = None

    def require(self) -> Pipelines:
        if self.pipelines is None:
            raise NotReady("the server is not ready yet (loading models); retry shortly")
        return self.pipelines
