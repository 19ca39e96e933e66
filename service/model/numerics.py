"""The numbers around a model call: pixel arrays -> the models' normalized input, text -> ids,
logits -> probabilities and the top candidates."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from service.errors import UnusableInput


def normalize(pixels_0_255: np.ndarray, normalization: dict[str, float]) -> np.ndarray:
    """(N, 28, 28) pixels on the 0..255 scale -> the model's float32 input (card formula)."""
    x = pixels_0_255.astype(np.float32) * np.float32(normalization["scale"])
    return (x - np.float32(normalization["mean"])) / np.float32(normalization["std"])


def encode_text(text: str, stoi: dict[str, int]) -> np.ndarray:
    """Text -> int64 ids; characters outside the vocabulary are refused, all named at once."""
    unknown = sorted({c for c in text if c not in stoi})
    if unknown:
        shown = ", ".join(repr(c) for c in unknown[:20])
        raise UnusableInput(
            f"{len(unknown)} character(s) are not in the model's vocabulary: {shown}. "
            "The vocabulary is listed by the metadata endpoint."
        )
    return np.fromiter((stoi[c] for c in text), dtype=np.int64, count=len(text))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Probabilities of `logits / temperature`, stable for any temperature above 0.

    The maximum is subtracted before dividing: for a tiny temperature (1e-300, found by the
    fuzzer) `logits / temperature` overflows to inf and inf - inf gave NaN probabilities.
    """
    z = logits.astype(np.float64)
    z = (z - z.max(axis=-1, keepdims=True)) / temperature
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def top_k(probabilities: Sequence[float] | np.ndarray, k: int) -> list[int]:
    """Indices of the k largest probabilities, largest first (ties: lower index first)."""
    p = np.asarray(probabilities)
    return [int(i) for i in np.argsort(-p, kind="stable")[:k]]
