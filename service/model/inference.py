"""Loaded models and what the endpoints ask of them, free of any HTTP or BentoML concern.

`ModelRegistry.load` verifies every card in the model directory (a bad or missing file stops
start-up with a message naming it), opens each model on the chosen device, and warms it up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.errors import NoCharModel, UnknownModel, short
from service.model.cards import ModelCard, discover_cards, short_name
from service.model.numerics import encode_text, normalize, softmax, top_k
from service.model.runtime import Backend, DeviceChoice, choose_device, load_backend
from service.settings import Settings

logger = logging.getLogger("bentoml.rnnserve")

# observer(model_name, seconds, batch_size): hooks inference timing into metrics
Observer = Callable[[str, float, int], None]


def _no_observer(model: str, seconds: float, batch: int) -> None:
    return None


def sample(
    logits: np.ndarray, temperature: np.ndarray, top_k: np.ndarray, uniform: np.ndarray
) -> np.ndarray:
    """The next id of every row: logits (B, V); per row a temperature (0: greedy), a top-k (V:
    none) and a uniform draw in [0, 1). Row-wise only (every reduction runs along a row), so a
    row's result does not depend on the other rows: the batched loop and a lone sequence agree
    to the bit."""
    rows, vocab = logits.shape
    z = logits.astype(np.float64)
    if (top_k < vocab).any():
        kth = np.sort(z, axis=1)[np.arange(rows), vocab - top_k]
        z = np.where(z < kth[:, None], -np.inf, z)
    greedy = temperature == 0
    scale = np.where(greedy, 1.0, temperature)
    z = (z - z.max(axis=1, keepdims=True)) / scale[:, None]
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    cdf = np.cumsum(p, axis=1)
    cdf /= cdf[:, -1:]
    drawn = np.minimum((cdf <= uniform[:, None]).sum(axis=1), vocab - 1)
    return np.where(greedy, logits.argmax(axis=1), drawn)


@dataclass
class LoadedModel:
    card: ModelCard
    backend: Backend
    backend_name: str
    observe: Observer = field(default=_no_observer, repr=False)

    def __post_init__(self) -> None:
        """Subclasses derive their lookup tables from the card here."""

    @property
    def name(self) -> str:
        return self.card.name

    def run(self, feeds: dict[str, np.ndarray], batch: int) -> list[np.ndarray]:
        started = time.perf_counter()
        outputs = self.backend.run(feeds)
        self.observe(self.name, time.perf_counter() - started, batch)
        return outputs

    def describe(self) -> dict[str, Any]:
        data = self.card.data
        return {
            "name": self.name,
            "version": data["version"],
            "task": self.card.task,
            "architecture": data["architecture"],
            "metrics": data["metrics"],
            "backend": self.backend_name,
            "provider": self.backend.provider,
            "inputs": data["inputs"],
            "outputs": data["outputs"],
        }


# For a card without a calibration (a model not evaluated by training/photo_eval.py).
UNCALIBRATED_THRESHOLD = 0.99


class DigitClassifier(LoadedModel):
    """A row-sequence MNIST classifier: (N, 28, 28) pixels on the 0..255 scale -> probabilities."""

    def predict(self, pixels_0_255: np.ndarray) -> np.ndarray:
        spec = self.card.input_spec("pixels")
        x = normalize(pixels_0_255, spec["normalization"])
        (logits,) = self.run({"pixels": np.ascontiguousarray(x, dtype=np.float32)}, len(x))
        return softmax(logits)

    @property
    def labels(self) -> list[str]:
        return list(self.card.data["outputs"][0]["labels"])

    @property
    def confidence_threshold(self) -> float:
        """The top probability from which an answer counts as confident: calibrated per model
        on photos and scans by training/photo_eval.py (the card's `calibration`), else
        UNCALIBRATED_THRESHOLD."""
        calibration = self.card.data.get("calibration") or {}
        return float(calibration.get("confidence_threshold", UNCALIBRATED_THRESHOLD))

    def confident(self, probabilities: np.ndarray) -> np.ndarray:
        """(N, 10) probabilities -> (N,) bool: is each answer's top probability calibrated-sure."""
        return np.asarray(probabilities.max(axis=-1) >= self.confidence_threshold)


class CharModel(LoadedModel):
    """Next-character model with carried recurrent state."""

    def __post_init__(self) -> None:
        self.vocab: list[str] = list(self.card.data["vocabulary"])
        self.stoi = {c: i for i, c in enumerate(self.vocab)}
        shape = self.card.input_spec("state")["shape"]
        self.state_rows, self.hidden = int(shape[0]), int(shape[2])

    def encode(self, text: str) -> np.ndarray:
        return encode_text(text, self.stoi)

    def step(self, ids: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """ids (B, T) and state -> the logits at the last position (B, V) and the new state."""
        logits, new_state = self.run({"ids": ids, "state": state}, ids.shape[0])
        return logits[:, -1, :], new_state

    def read_prompt(self, prompt_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A prompt (T,) read from a fresh state: the next-step logits (1, V) and the state."""
        return self.step(prompt_ids[None, :], self.fresh_state(1))

    def fresh_state(self, batch: int = 1) -> np.ndarray:
        return np.zeros((self.state_rows, batch, self.hidden), dtype=np.float32)

    def next_chars(self, text: str, k: int, temperature: float) -> list[tuple[str, float]]:
        last, _ = self.read_prompt(self.encode(text))
        probs = softmax(last[0], temperature)
        return [(self.vocab[i], float(probs[i])) for i in top_k(probs, k)]

    def generate(
        self, prompt: str, length: int, temperature: float, k: int | None, seed: int
    ) -> str:
        """One sequence alone, one step at a time with carried state (no re-reading of the
        prefix); temperature 0 means greedy decoding. The reference the batched text loop
        (service/engine/text_loop.py) must match for the same seed: both draw with `sample`."""
        rng = np.random.default_rng(seed)
        last, state = self.read_prompt(self.encode(prompt))
        temperatures = np.array([temperature])
        top_ks = np.array([k or len(self.vocab)])
        out: list[str] = []
        for _ in range(length):
            nxt = sample(last, temperatures, top_ks, np.array([rng.random()]))
            out.append(self.vocab[int(nxt[0])])
            if len(out) < length:
                last, state = self.step(nxt[:, None].astype(np.int64), state)
        return "".join(out)


def preflight(settings: Settings) -> tuple[list[ModelCard], DeviceChoice]:
    """Checks that need no model session: every card and file verified, device policy met.

    Run at import of the service module, so `bentoml serve` itself exits non-zero with the
    message when they fail (a failure inside a worker would leave the server process up with
    no worker). Each worker repeats the checks when it loads the models.
    """
    cards = discover_cards(settings.model_dir)  # verifies every file's sha256
    if not cards:
        raise FileNotFoundError(f"no models (*/card.json) under {settings.model_dir}")
    return cards, choose_device(settings.device)


class ModelRegistry:
    def __init__(self, settings: Settings, device: DeviceChoice) -> None:
        self.settings = settings
        self.device = device
        self.digits: dict[str, DigitClassifier] = {}
        self.char: CharModel | None = None
        self.aliases: dict[str, str] = {}

    @classmethod
    def load(
        cls,
        settings: Settings,
        observe: Observer = _no_observer,
        checked: tuple[list[ModelCard], DeviceChoice] | None = None,
    ) -> ModelRegistry:
        """`checked`: a preflight result this process already has (saves hashing twice)."""
        cards, device = checked if checked is not None else preflight(settings)
        registry = cls(settings, device)
        for card in cards:
            backend = load_backend(card, settings, device)
            if card.task == "digit-classification":
                model = DigitClassifier(card, backend, settings.backend, observe)
                registry.digits[card.name] = model
                registry.aliases[short_name(card.name)] = card.name
            else:
                if registry.char is not None:
                    raise ValueError(
                        f"two next-character models ({registry.char.name}, {card.name}) "
                        f"in {settings.model_dir}: keep one"
                    )
                registry.char = CharModel(card, backend, settings.backend, observe)
            logger.info(
                "model %s (%s): backend %s, provider %s; device %s (%s)",
                card.name,
                card.task,
                settings.backend,
                backend.provider,
                device.device,
                device.reason,
            )
        if settings.default_digit_model not in registry.digits and registry.digits:
            raise ValueError(
                f"RNNSERVE_DEFAULT_DIGIT_MODEL={settings.default_digit_model!r} is not among "
                f"the loaded classifiers {sorted(registry.digits)}"
            )
        registry.warm_up()
        return registry

    def warm_up(self) -> None:
        """One real inference per model (and per batch shape the hot path uses)."""
        for model in self.digits.values():
            for batch in (1, min(8, self.settings.max_batch_size)):
                model.predict(np.zeros((batch, 28, 28), dtype=np.uint8))
        if self.char is not None:
            self.char.generate(self.char.vocab[0], 2, 1.0, None, seed=0)

    def digit_model(self, requested: str | None) -> DigitClassifier:
        name = requested or self.settings.default_digit_model
        name = self.aliases.get(name, name)
        if name not in self.digits:
            raise UnknownModel(
                f"unknown model {short(requested)}; choose one of {self.digit_model_names()}"
            )
        return self.digits[name]

    def digit_model_names(self) -> list[str]:
        return sorted(self.aliases) + sorted(self.digits)

    def char_model(self) -> CharModel:
        if self.char is None:
            raise NoCharModel("no next-character model is loaded on this server")
        return self.char

    def describe(self) -> list[dict[str, Any]]:
        models: list[LoadedModel] = [*self.digits.values()]
        if self.char is not None:
            models.append(self.char)
        return [m.describe() for m in models]
