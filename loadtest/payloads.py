"""Realistic request payloads for load tests: real MNIST test digits and Shakespeare prompts.

Digits come from the committed test fixture (real t10k images) and are kept only where every
committed classifier answers correctly, so a load test can treat a wrong digit as a failure.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from service.model.numerics import normalize, softmax
from service.model.repository import discover_cards
from training.data import load_mnist_split

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
PROMPTS = (
    "ROMEO:\nWhat light through yonder window bre",
    "First Citizen:\nWe are accounted poor citizens, the patricians goo",
    "KING RICHARD III:\nNow is the winter of our disconte",
    "JULIET:\nO Romeo, Romeo! wherefore art thou Rom",
    "MENENIUS:\nEither you must confess yourselves wondrous malicio",
)


@dataclass(frozen=True)
class Digit:
    label: int
    pixels: list[list[float]]  # 28x28, 0..255
    png: bytes


@lru_cache(maxsize=1)
def digits(count: int = 64, models: Path = ROOT / "models") -> tuple[Digit, ...]:
    split = load_mnist_split(FIXTURES, train=False)
    images, labels = split.images, split.labels
    agree = np.ones(len(labels), dtype=bool)
    for card in discover_cards(models):
        if card.task != "digit-classification":
            continue
        session = ort.InferenceSession(
            str(card.file_path("onnx")), providers=["CPUExecutionProvider"]
        )
        x = normalize(images, card.input_spec("pixels")["normalization"])
        (logits,) = session.run(None, {"pixels": x.astype(np.float32)})
        agree &= softmax(logits).argmax(1) == labels
    chosen = np.flatnonzero(agree)[:count]
    out = []
    for i in chosen:
        buffer = io.BytesIO()
        Image.fromarray(images[i]).save(buffer, format="PNG")
        out.append(Digit(int(labels[i]), images[i].astype(float).tolist(), buffer.getvalue()))
    return tuple(out)
