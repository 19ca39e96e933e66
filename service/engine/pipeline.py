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
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from service import __version__
from service.engine.admission import CLIENT_LEFT, ContinuousBatcher, Lane
from service.engine.carried_state import Carried, ModelIdentity, StateCodec, StateError
from service.engine.parameters import text_parameters
from service.engine.text_loop import GenerationRequest, TextLoop
from service.engine.text_loop import Sequence as TextSequence
from service.engine.validation import char_ids, char_state, digit_images, text_length
from service.errors import BadInput, ClientGone, NotReady, ServiceError
from service.imaging.uploads import ImageLimits, read_upload
from service.metrics import MODEL_REQUEST_SECONDS, MODEL_REQUESTS
from service.model.inference import CharModel, DigitClassifier, LoadedModel, ModelRegistry
from service.model.numerics import softmax, top_k
from service.settings import Settings

if TYPE_CHECKING:
    from service.engine.control_plane import ControlPlane

T = TypeVar("T")
# Bodies above this size are parsed on the decoding thread, not on the event loop, so that
# health probes and small requests are not held up behind them.
LARGE_BODY_BYTES = 64 * 1024


@dataclass(frozen=True)
class Classified:
    model: DigitClassifier
    probabilities: np.ndarray  # (N, 10) float32
    typical: np.ndarray  # (N,) bool: each input looks like a digit (model/input_check.py)
    photo: bool = False  # read from an uploaded picture (its own calibrated threshold)

    @property
    def confident(self) -> np.ndarray:
        """(N,) bool: the top probability reaches the threshold calibrated for its source
        (photos, or pixel arrays), for an input that looks like a digit (a blank or noise
        array is never a confident answer)."""
        return self.model.confident(self.probabilities, photo=self.photo) & self.typical


def split_checked(checked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """predict_checked's (N, 11) -> probabilities (N, 10) and typical (N,) bool."""
    return checked[:, :10], checked[:, 10] > 0.5


@dataclass(frozen=True)
class NextChars:
    model: CharModel
    candidates: list[tuple[str, float]]  # most probable first
    state: str  # the carried state after everything read
    context_chars: int  # characters the state has read in all


@dataclass(frozen=True)
class CharSteps:
    """V2's raw step: logits at every position, the new state, and it as carried states."""

    logits: np.ndarray  # (rows, steps, vocab)
    state: np.ndarray  # (state_rows, rows, hidden)
    carried: list[str]  # one carried state per row


class Generation:
    """A validated, admitted generation: its text as it comes, then its carried state."""

    def __init__(
        self,
        model: CharModel,
        loop: TextLoop,
        sequence: TextSequence,
        codec: StateCodec,
        chars: int,
    ) -> None:
        self.model = model
        self.loop = loop
        self.sequence = sequence
        self.codec = codec
        self.context_chars = chars  # prompt, generated text and what the state had read

    def chunks(self) -> AsyncIterator[str]:
        return self.loop.chunks_of(self.sequence)

    def state(self) -> str:
        """The carried state after the prompt and the whole generated text (once ended)."""
        finished = self.sequence.finished
        assert finished is not None, "the generation has not ended"
        return self.codec.encode(finished.state, finished.logits, self.context_chars)


@dataclass
class TextLane:
    """One version of the character model behind its text loop, with its state codec."""

    model: CharModel
    loop: TextLoop
    codec: StateCodec


class Pipelines:
    """One worker's models behind their queues: what every route calls after decoding.

    Each served model version has its own queue (a digit batcher, or a text loop and state
    codec), so a batch never mixes versions. `sync` follows the registry after model control
    changes it: new versions get queues, unloaded ones finish what they hold and are let go.
    """

    def __init__(self, registry: ModelRegistry, settings: Settings) -> None:
        self.registry = registry
        self.settings = settings
        self.parameters = text_parameters(settings)
        self.rows = settings.max_batch_size if settings.batching else 1  # off: one a call
        # by model key (name/version), with the model object each queue runs
        self.batchers: dict[str, tuple[DigitClassifier, ContinuousBatcher]] = {}
        self.text_lanes: dict[int, TextLane] = {}  # by version of the character model
        self.decoding = Lane(
            "decoding", 1, settings.max_queued_decodes, "RNNSERVE_MAX_QUEUED_DECODES"
        )
        self.image_limits = ImageLimits(
            settings.max_image_pixels, settings.max_image_side, settings.max_image_aspect
        )
        self.sync()

    def sync(self) -> None:
        """Queues for every served version, none for the others (their queued work ends)."""
        s = self.settings
        served = self.registry.served.models()
        digits = {m.key: m for m in served if isinstance(m, DigitClassifier)}
        chars = {m.version: m for m in served if isinstance(m, CharModel)}
        for key in [k for k, (m, _) in self.batchers.items() if digits.get(k) is not m]:
            self.batchers.pop(key)  # its queued requests hold it until they are answered
        for key, model in digits.items():
            if key not in self.batchers:
                batcher = ContinuousBatcher(
                    key,
                    model.predict_checked,
                    self.rows,
                    s.max_queued_images,
                    s.max_queue_wait_ms / 1000,
                )
                self.batchers[key] = (model, batcher)
        for version in [v for v, lane in self.text_lanes.items() if chars.get(v) is not lane.model]:
            self.text_lanes.pop(version).loop.retire()
        for version, char in chars.items():
            if version not in self.text_lanes:
                loop = TextLoop(
                    char,
                    self.rows,
                    s.max_queued_text,
                    s.max_queue_wait_ms / 1000,
                    s.max_active_generations,
                    s.max_queued_generations,
                    s.generation_joins_per_step,
                )
                codec = StateCodec(identity_of(char), s.state_key_list)
                self.text_lanes[version] = TextLane(char, loop, codec)

    @property
    def text_loop(self) -> TextLoop | None:
        """The newest character model's text loop (None without one)."""
        char = self.registry.char
        return self.text_lanes[char.version].loop if char is not None else None

    @property
    def codec(self) -> StateCodec | None:
        char = self.registry.char
        return self.text_lanes[char.version].codec if char is not None else None

    # ------------------------------------------------------------------ decoding help

    async def parse(self, parse: Callable[[bytes], T], body: bytes) -> T:
        """`parse(body)`: inline for small bodies, on the decoding thread for large ones."""
        if len(body) <= LARGE_BODY_BYTES:
            return parse(body)
        return await self.decoding.run(parse, body)

    # ------------------------------------------------------------------ digits

    def digit_model(self, name: str | None, version: int | None = None) -> DigitClassifier:
        return self.registry.digit_model(name, version)

    def batcher(self, model: DigitClassifier) -> ContinuousBatcher:
        """The queue of `model`'s version (the one it was looked up as, even if model control
        has unloaded it since: it finishes there)."""
        lane = self.batchers.get(model.key)
        if lane is None or lane[0] is not model:
            raise NotReady(f"model {model.key} was just unloaded; retry to reach the newest")
        return lane[1]

    async def classify(
        self, images: np.ndarray, model_name: str | None, version: int | None = None
    ) -> Classified:
        """(28, 28) or (N, 28, 28) pixels on 0..255, one model -> probabilities (N, 10)."""
        model = self.digit_model(model_name, version)
        with served_by(model):  # a refusal of the pixels is counted against the model named
            images = digit_images(images, self.settings.max_images_per_request)
            return Classified(model, *split_checked(await self.batcher(model).predict(images)))

    async def classify_each(
        self, images: np.ndarray, model_names: Sequence[str | None]
    ) -> list[Classified]:
        """Images that each name their model: one batched call per distinct model, answers
        in the images' order, one image each."""
        images = digit_images(images, self.settings.max_images_per_request)
        models = [self.digit_model(name) for name in model_names]
        rows: dict[str, list[int]] = {}
        chosen: dict[str, DigitClassifier] = {}
        for i, model in enumerate(models):
            rows.setdefault(model.key, []).append(i)
            chosen[model.key] = model
        with contextlib.ExitStack() as counted:
            for model in chosen.values():
                counted.enter_context(served_by(model))
            results = await asyncio.gather(
                *(
                    self.batcher(chosen[key]).predict(images[indices])
                    for key, indices in rows.items()
                )
            )
        answers: list[Classified] = [None] * len(models)  # type: ignore[list-item]
        for (key, indices), checked in zip(rows.items(), results, strict=True):
            probs, typical = split_checked(checked)
            for j, i in enumerate(indices):
                answers[i] = Classified(chosen[key], probs[j : j + 1], typical[j : j + 1])
        return answers

    async def classify_upload(
        self, data: bytes, model_name: str | None
    ) -> tuple[Classified, np.ndarray]:
        """An uploaded picture -> (answer, the 28x28 uint8 the model saw)."""
        model = self.digit_model(model_name)  # before any decoding work
        with served_by(model):
            pixels = await self.decoding.run(self.read_digit, data)
            probs, _ = split_checked(
                await self.batcher(model).predict(pixels[None].astype(np.float32))
            )
        # a photo has its own checks (service/imaging/photo.py) and calibration: no input check
        return Classified(model, probs, np.ones(1, dtype=bool), photo=True), pixels

    def read_digit(self, data: bytes) -> np.ndarray:
        return read_upload(data, self.image_limits).pixels

    # ------------------------------------------------------------------ text

    def char_model(self, version: int | None = None) -> CharModel:
        return self.registry.char_model(version)

    def _text(
        self, version: int | None = None, state: object | None = None
    ) -> tuple[CharModel, TextLoop, StateCodec]:
        """The character model's lane: at `version`, else the version a carried `state` names
        when it is served (a text goes on where it began, through a rollout that keeps the
        old version), else the newest."""
        if version is None and state is not None:
            named = StateCodec.peek_version(state)
            if named in self.text_lanes:
                version = named
        model = self.char_model(version)
        lane = self.text_lanes.get(model.version)
        if lane is None or lane.model is not model:
            raise NotReady(f"model {model.key} was just unloaded; retry to reach the newest")
        return model, lane.loop, lane.codec

    def carried(self, codec: StateCodec, state: object | None) -> Carried | None:
        """A carried state sent back by a client, checked (StateError, a 400, says why)."""
        return None if state is None else codec.decode(state)

    async def next_chars(
        self, text: str, k: int, temperature: float, state: str | None = None
    ) -> NextChars:
        """The k most probable characters after `text` (after the carried `state`, then
        `text` holds only what follows it and may be empty), with the new state."""
        model, loop, codec = self._text(state=state)
        with served_by(model):
            text_length(text, self.settings.max_text_chars, empty_ok=state is not None)
            self.parameters.k.check(k)
            self.parameters.softmax_temperature.check(temperature)
            ids = model.encode(text)  # unknown characters: 422 before queueing
            start = self.carried(codec, state)
            if start is not None and len(ids) == 0:  # nothing new: the state has the answer
                last, after = start.logits, start.state
            else:
                result = await loop.read(ids[None, :], _state_of([start], model))
                last, after = result.last[0], result.state[:, 0]
            probs = softmax(last, temperature)
            chars = (start.chars if start else 0) + len(ids)
            return NextChars(
                model,
                [(model.vocab[i], float(probs[i])) for i in top_k(probs, k)],
                codec.encode(after, last, chars),
                chars,
            )

    async def char_logits(
        self,
        ids: np.ndarray,
        state: np.ndarray | None,
        carried: list[object] | None = None,
        carried_out: bool = True,
        version: int | None = None,
    ) -> CharSteps:
        """V2's raw step: ids (rows, steps) from a fresh state, a raw `state` (state_rows,
        rows, hidden) or one carried state per row -> logits (rows, steps, vocab), the new
        state, and (with `carried_out`) the new carried states."""
        model, loop, codec = self._text(version, carried[0] if carried else None)
        with served_by(model):
            s = self.settings
            ids = char_ids(ids, len(model.vocab), s.max_char_rows, s.max_text_chars, s.max_char_ids)
            rows = ids.shape[0]
            chars = [0] * rows
            if state is not None and carried is not None:
                raise BadInput(
                    "send either 'state' (raw FP32) or 'carried_state' (BYTES), not both"
                )
            if carried is not None:
                if len(carried) != rows:
                    raise BadInput(
                        f"'carried_state' has {len(carried)} state(s) for {rows} row(s) of ids: "
                        "one per row"
                    )
                starts = [self._row_state(codec, c, i) for i, c in enumerate(carried)]
                chars = [c.chars for c in starts]
                begin = _state_of(starts, model)
            elif state is not None:
                begin = char_state(state, (model.state_rows, rows, model.hidden))
            else:
                begin = model.fresh_state(rows)
            result = await loop.read(ids, begin, every_position=True)
            assert result.logits is not None
            out = (
                [
                    codec.encode(result.state[:, i], result.last[i], chars[i] + ids.shape[1])
                    for i in range(rows)
                ]
                if carried_out
                else []
            )
            return CharSteps(result.logits, result.state, out)

    @staticmethod
    def _row_state(codec: StateCodec, token: object, row: int) -> Carried:
        try:
            return codec.decode(token)
        except StateError as exc:
            raise StateError(f"carried_state[{row}]: {exc.message}") from None

    def generation(
        self,
        prompt: str,
        length: int,
        temperature: float,
        top_k: int | None,
        seed: int,
        state: str | None = None,
        streaming: bool = True,
    ) -> Generation:
        """Validate and admit a generation (after the carried `state`, if any: `prompt` then
        holds only what follows it and may be empty). Every check happens here, before the
        first character, so a stream never starts for a request that would fail."""
        model, loop, codec = self._text(state=state)
        text_length(prompt, self.settings.max_text_chars, "prompt", empty_ok=state is not None)
        for parameter, value in zip(
            self.parameters.generation(), (length, temperature, top_k, seed), strict=True
        ):
            parameter.check(value)
        with served_by(model):  # admission counted here; a stream's time is its own metric
            ids = model.encode(prompt)
            carried = self.carried(codec, state)
            request = GenerationRequest(ids, length, temperature, top_k, seed, carried, streaming)
            sequence = loop.submit(request, CLIENT_LEFT.get())  # 503 here when full
        chars = (carried.chars if carried else 0) + len(ids) + length
        return Generation(model, loop, sequence, codec, chars)

    async def generate(
        self,
        prompt: str,
        length: int,
        temperature: float,
        top_k: int | None,
        seed: int,
        state: str | None = None,
    ) -> tuple[Generation, str]:
        """The whole text at once (the same loop as the stream; posted once, at the end)."""
        generation = self.generation(prompt, length, temperature, top_k, seed, state, False)
        return generation, "".join([chunk async for chunk in generation.chunks()])

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
            "model_control": self.settings.model_control,
            "version_policy": self.settings.version_policy,
            "models": registry.describe(),  # every served version, newest first
            "versions": {name: registry.version_list(name) for name in registry.served.versions},
            # what a client may ask for: the demo page sizes its inputs from these
            "limits": {
                "max_images_per_request": self.settings.max_images_per_request,
                "max_text_chars": self.settings.max_text_chars,
                "max_generate_chars": self.settings.max_generate_chars,
                "max_top_k": self.settings.max_top_k,
                "max_request_bytes": self.settings.max_request_bytes,
            },
        }


@contextlib.contextmanager
def served_by(model: LoadedModel) -> Iterator[None]:
    """Counts and times one request on the model version that answers it (every protocol):
    rnnserve_model_requests by outcome, rnnserve_model_request_seconds for the answered."""
    started = time.perf_counter()
    outcome = "ok"
    try:
        yield
    except ServiceError as exc:
        outcome = type(exc).__name__
        raise
    except (asyncio.CancelledError, ClientGone):
        outcome = "cancelled"
        raise
    finally:
        version = str(model.version)
        MODEL_REQUESTS.labels(model=model.name, version=version, outcome=outcome).inc()
        if outcome == "ok":
            MODEL_REQUEST_SECONDS.labels(model=model.name, version=version).observe(
                time.perf_counter() - started
            )


def identity_of(model: CharModel) -> ModelIdentity:
    """What a carried state of `model` must match: name, version, files, shape."""
    files = model.card.data.get("files", {})
    digests = [str(entry.get("sha256", "")) for entry in files.values()]
    return ModelIdentity(
        model.name,
        str(model.card.data.get("version", "")),
        ModelIdentity.fingerprint_of(digests),
        model.state_rows,
        model.hidden,
        len(model.vocab),
    )


def _state_of(starts: Sequence[Carried | None], model: CharModel) -> np.ndarray:
    """The (state_rows, rows, hidden) state to read from: each row's carried state, or a
    fresh one."""
    if all(s is None for s in starts):
        return model.fresh_state(len(starts))
    fresh = model.fresh_state(1)[:, 0]
    return np.stack([fresh if s is None else s.state for s in starts], axis=1)


class ServingState:
    """The worker's pipelines, filled in when the service instance has loaded and warmed up
    its models. The mounted apps are built at import time and hold this object (explicit
    wiring), so they need no lookup per request; before start-up ends they answer 503."""

    def __init__(self) -> None:
        self.pipelines: Pipelines | None = None
        self.control: ControlPlane | None = None  # model control (engine/control_plane.py)

    def require(self) -> Pipelines:
        if self.pipelines is None:
            raise NotReady("the server is not ready yet (loading models); retry shortly")
        return self.pipelines
