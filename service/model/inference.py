"""Loaded models and what the endpoints ask of them, free of any HTTP or BentoML concern.

`open_model` turns a verified card into a served model: runtime session, the checks of
service/model/verify.py (contract, recorded examples), warm-up. `ModelRegistry` holds what a
worker serves as one immutable `Served` snapshot (every loaded version of every model), which
model control replaces in a single assignment: a request holds the model object it looked up,
so it finishes on that version whatever is loaded meanwhile.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.errors import NoCharModel, UnknownModel, short
from service.model.cards import CardError, ModelCard, short_name
from service.model.input_check import InputCheck
from service.model.numerics import encode_text, normalize, softmax, top_k
from service.model.repository import VersionPolicy, discover_cards
from service.model.runtime import Backend, DeviceChoice, choose_device, load_backend
from service.model.verify import verify_loaded
from service.settings import Settings

logger = logging.getLogger("bentoml.rnnserve")

# observer("name/version", seconds, batch_size): hooks inference timing into metrics
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

    @property
    def version(self) -> int:
        return self.card.version

    @property
    def key(self) -> str:
        """'name/version': what queues and logs call this model version."""
        return f"{self.name}/{self.version}"

    def run(self, feeds: dict[str, np.ndarray], batch: int) -> list[np.ndarray]:
        started = time.perf_counter()
        outputs = self.backend.run(feeds)
        self.observe(self.key, time.perf_counter() - started, batch)
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

    def __post_init__(self) -> None:
        # what a digit looks like, measured on MNIST (training/input_check.py; none: no check)
        self.input_check = InputCheck.from_card(self.card.data.get("input_check"))

    def typical(self, pixels_0_255: np.ndarray) -> np.ndarray:
        """(N, 28, 28) -> (N,) bool: does each array look like a digit the model was trained
        on (service/model/input_check.py); always true for a card without bounds."""
        if self.input_check is None:
            return np.ones(len(pixels_0_255), dtype=bool)
        return self.input_check.typical(pixels_0_255)

    def predict_checked(self, pixels_0_255: np.ndarray) -> np.ndarray:
        """(N, 28, 28) -> (N, 11): the probabilities, then 1.0 where the array is typical,
        0.0 where not. One array for the batcher, so the check runs on its thread with the
        model call, over the whole batch at once."""
        probabilities = self.predict(pixels_0_255)
        flags = self.typical(pixels_0_255).astype(probabilities.dtype)
        return np.concatenate([probabilities, flags[:, None]], axis=1)

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
        """The top probability from which an answer about a photo counts as confident:
        calibrated per model on rendered photos and scans by training/photo_eval.py (the
        card's `calibration`), else UNCALIBRATED_THRESHOLD."""
        calibration = self.card.data.get("calibration") or {}
        return float(calibration.get("confidence_threshold", UNCALIBRATED_THRESHOLD))

    @property
    def pixel_confidence_threshold(self) -> float:
        """The same for pixel arrays (MNIST-like digits, already 28x28): calibrated apart, on
        MNIST validation digits (`pixel_confidence_threshold`), since a photo's threshold is
        stricter than clean digits need; a card without it uses the photo threshold."""
        calibration = self.card.data.get("calibration") or {}
        return float(calibration.get("pixel_confidence_threshold", self.confidence_threshold))

    def confident(self, probabilities: np.ndarray, photo: bool = True) -> np.ndarray:
        """(N, 10) probabilities -> (N,) bool: is each answer's top probability calibrated-sure,
        by the threshold for photos (`photo`) or for pixel arrays."""
        threshold = self.confidence_threshold if photo else self.pixel_confidence_threshold
        return np.asarray(probabilities.max(axis=-1) >= threshold)


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
    """Checks that need no model session: every served card and file verified, device policy
    met.

    Run at import of the service module, so `bentoml serve` itself exits non-zero with the
    message when they fail (a failure inside a worker would leave the server process up with
    no worker). Each worker repeats the checks when it loads the models.
    """
    policy = VersionPolicy.parse(settings.version_policy)
    cards = discover_cards(settings.model_dir, policy=policy)  # verifies every file's sha256
    if not cards:
        raise FileNotFoundError(
            f"no models (<name>/<version>/card.json) under {settings.model_dir}"
        )
    return cards, choose_device(settings.device)


def open_model(
    card: ModelCard, settings: Settings, device: DeviceChoice, observe: Observer = _no_observer
) -> LoadedModel:
    """A card (its files already checked against their sha256) as a model ready to serve:
    the runtime session on the verified bytes, the contract and recorded examples checked
    (CardError says what failed), then a warm-up of the shapes the hot path uses."""
    backend = load_backend(card, settings, device)
    verify_loaded(card, backend)
    model: LoadedModel
    if card.task == "digit-classification":
        digits = DigitClassifier(card, backend, settings.backend, observe)
        for batch in (1, min(8, settings.max_batch_size)):
            digits.predict(np.zeros((batch, 28, 28), dtype=np.uint8))
        model = digits
    else:
        char = CharModel(card, backend, settings.backend, observe)
        char.generate(char.vocab[0], 2, 1.0, None, seed=0)
        model = char
    logger.info(
        "model %s version %s (%s): backend %s, provider %s; device %s (%s)",
        card.name,
        card.version,
        card.task,
        settings.backend,
        backend.provider,
        device.device,
        device.reason,
    )
    return model


@dataclass(frozen=True)
class Served:
    """Every model version one worker serves, at one moment. Never changed: model control
    builds a new one (`with_model`, `without`) and the registry swaps it in."""

    versions: dict[str, dict[int, LoadedModel]]  # name -> version -> model
    # derived once (every request looks models up): newest by name, classifiers, aliases
    newest_of: dict[str, LoadedModel] = field(init=False, repr=False)
    digits: dict[str, DigitClassifier] = field(init=False, repr=False)
    char: CharModel | None = field(init=False, repr=False)
    aliases: dict[str, str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        newest = {n: v[max(v)] for n, v in sorted(self.versions.items()) if v}
        digits = {n: m for n, m in newest.items() if isinstance(m, DigitClassifier)}
        chars = [m for m in newest.values() if isinstance(m, CharModel)]
        object.__setattr__(self, "newest_of", newest)
        object.__setattr__(self, "digits", digits)
        object.__setattr__(self, "char", chars[0] if chars else None)
        object.__setattr__(self, "aliases", {short_name(n): n for n in digits})

    def newest(self, name: str) -> LoadedModel | None:
        return self.newest_of.get(name)

    def find(self, name: str, version: int | None) -> LoadedModel | None:
        """`name` at `version`, or its newest served version when `version` is None."""
        if version is None:
            return self.newest(name)
        return self.versions.get(name, {}).get(version)

    def with_model(self, model: LoadedModel) -> Served:
        versions = {name: dict(v) for name, v in self.versions.items()}
        versions.setdefault(model.name, {})[model.version] = model
        return Served(versions)

    def without(self, name: str, version: int | None = None) -> Served:
        """Without `name` at `version` (every version when None)."""
        versions = {n: dict(v) for n, v in self.versions.items()}
        if version is None:
            versions.pop(name, None)
        else:
            versions.get(name, {}).pop(version, None)
            if not versions.get(name):
                versions.pop(name, None)
        return Served(versions)

    def models(self) -> list[LoadedModel]:
        """Every served version, by name, newest version first."""
        return [
            self.versions[name][v]
            for name in sorted(self.versions)
            for v in sorted(self.versions[name], reverse=True)
        ]


class ModelRegistry:
    """What one worker serves: the current `Served` snapshot, and lookups by name, alias and
    version. The newest served version of a model answers requests that name no version."""

    def __init__(self, settings: Settings, device: DeviceChoice, observe: Observer) -> None:
        self.settings = settings
        self.device = device
        self.observe = observe
        self.served = Served({})

    @classmethod
    def load(
        cls,
        settings: Settings,
        observe: Observer = _no_observer,
        checked: tuple[list[ModelCard], DeviceChoice] | None = None,
    ) -> ModelRegistry:
        """`checked`: a preflight result this process already has (saves hashing twice)."""
        cards, device = checked if checked is not None else preflight(settings)
        registry = cls(settings, device, observe)
        served = Served({})
        for card in cards:
            served = served.with_model(open_model(card, settings, device, observe))
        registry.check(served)
        registry.served = served
        return registry

    def check(self, served: Served) -> None:
        """What a snapshot must hold to be served (CardError otherwise): one next-character
        model at most, and the default classifier among the classifiers when there are any."""
        kinds: dict[str, list[str]] = {}
        for model in served.models():
            kinds.setdefault(model.card.task, []).append(model.name)
        chars = sorted(set(kinds.get("next-character", [])))
        if len(chars) > 1:
            raise CardError(
                f"two next-character models ({', '.join(chars)}) in {self.settings.model_dir}: "
                "keep one (several versions of it are fine)"
            )
        digits = set(kinds.get("digit-classification", []))
        if digits and self.settings.default_digit_model not in digits:
            raise CardError(
                f"RNNSERVE_DEFAULT_DIGIT_MODEL={self.settings.default_digit_model!r} is not "
                f"among the loaded classifiers {sorted(digits)}"
            )

    # ------------------------------------------------------------------ lookups

    @property
    def digits(self) -> dict[str, DigitClassifier]:
        """Each classifier's newest served version, by name."""
        return self.served.digits

    @property
    def char(self) -> CharModel | None:
        """The next-character model's newest served version."""
        return self.served.char

    @property
    def aliases(self) -> dict[str, str]:
        return self.served.aliases

    def find(self, name: str, version: int | None = None) -> LoadedModel | None:
        """A model by name or alias, at `version` or its newest."""
        return self.served.find(self.aliases.get(name, name), version)

    def digit_model(self, requested: str | None, version: int | None = None) -> DigitClassifier:
        name = requested or self.settings.default_digit_model
        model = self.find(name, version)
        if not isinstance(model, DigitClassifier):
            if version is not None and isinstance(self.find(name), DigitClassifier):
                raise UnknownModel(
                    f"model {short(requested)} has no version {version} loaded; it serves "
                    f"{self.version_list(self.aliases.get(name, name))}"
                )
            raise UnknownModel(
                f"unknown model {short(requested)}; choose one of {self.digit_model_names()}"
            )
        return model

    def version_list(self, name: str) -> list[int]:
        """The served versions of `name`, newest first."""
        return sorted(self.served.versions.get(name, {}), reverse=True)

    def digit_model_names(self) -> list[str]:
        return sorted(self.aliases) + sorted(self.digits)

    def char_model(self, version: int | None = None) -> CharModel:
        char = self.char
        if char is None:
            raise NoCharModel("no next-character model is loaded on this server")
        model = self.served.find(char.name, version)
        if not isinstance(model, CharModel):
            raise UnknownModel(
                f"model {char.name} has no version {version} loaded; it serves "
                f"{self.version_list(char.name)}"
            )
        return model

    def describe(self) -> list[dict[str, Any]]:
        return [m.describe() for m in self.served.models()]
