"""Is a 28x28 array the kind of picture the classifiers were trained on?

A classifier answers something for any array: an all-black one came back as a "confident" 4,
uniform noise as a confident 8. The softmax cannot say "this is not a digit", so the pixel
and V2 routes look at the input itself, as the upload route does with a photo: a few
statistics of white-on-black MNIST digits, with bounds measured on the MNIST training set
(training/input_check.py writes them into each classifier's card as `input_check`). An array
outside them is answered as usual, with `confident: false`.

The statistics, per image on the 0..255 scale (ink: a pixel >= 128):
- `ink`: the share of ink pixels (blank and constant arrays, and inverted digits, fall out);
- `midtones`: the share of pixels strictly between dark and bright (26..229): a pen stroke has
  a thin antialiased edge, noise is midtones nearly everywhere;
- `border_ink`: the share of ink in the outer two-pixel ring (MNIST digits sit in the central
  20x20 box; noise, constants and photos of a page reach the border);
- `isolated_ink`: the share of ink pixels with no ink 4-neighbour (strokes are connected; salt
  and pepper noise is not).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

FEATURES = ("ink", "midtones", "border_ink", "isolated_ink")
INK = 128  # 0..255: a pixel this bright is ink
DARK, BRIGHT = 25, 230  # midtones lie strictly between

_RING = np.ones((28, 28), dtype=bool)
_RING[2:-2, 2:-2] = False


def features(pixels_0_255: np.ndarray) -> dict[str, np.ndarray]:
    """(N, 28, 28) on 0..255 -> each statistic, (N,) float."""
    p = np.asarray(pixels_0_255)
    ink = p >= INK
    count = ink.sum(axis=(1, 2))
    padded = np.pad(ink, ((0, 0), (1, 1), (1, 1)))
    neighbours = (
        padded[:, :-2, 1:-1] | padded[:, 2:, 1:-1] | padded[:, 1:-1, :-2] | padded[:, 1:-1, 2:]
    )
    isolated = (ink & ~neighbours).sum(axis=(1, 2))
    return {
        "ink": count / 784.0,
        "midtones": ((p > DARK) & (p < BRIGHT)).mean(axis=(1, 2)),
        "border_ink": ink[:, _RING].mean(axis=1),
        "isolated_ink": np.where(count > 0, isolated / np.maximum(count, 1), 0.0),
    }


@dataclass(frozen=True)
class InputCheck:
    """Bounds per statistic: an image is typical when every statistic lies within its own."""

    bounds: Mapping[str, tuple[float, float]]

    @classmethod
    def from_card(cls, section: object) -> InputCheck | None:
        """The card's `input_check` (None when the card has none: no check)."""
        if not isinstance(section, dict) or not isinstance(section.get("bounds"), dict):
            return None
        bounds = {}
        for name, pair in section["bounds"].items():
            if name in FEATURES and isinstance(pair, list) and len(pair) == 2:
                bounds[name] = (float(pair[0]), float(pair[1]))
        return cls(bounds) if bounds else None

    def typical(self, pixels_0_255: np.ndarray) -> np.ndarray:
        """(N, 28, 28) -> (N,) bool: does each image look like a digit as trained on."""
        found = features(pixels_0_255)
        ok = np.ones(len(pixels_0_255), dtype=bool)
        for name, (low, high) in self.bounds.items():
            ok &= (found[name] >= low) & (found[name] <= high)
        return ok

    def reasons(self, pixels_0_255: np.ndarray) -> list[list[str]]:
        """Per image, the statistics outside their bounds (for logs and tests)."""
        found = features(pixels_0_255)
        return [
            [name for name, (low, high) in self.bounds.items() if not low <= found[name][i] <= high]
            for i in range(len(pixels_0_255))
        ]
