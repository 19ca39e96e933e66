"""Validate and cost-check decoded inputs: numpy arrays in, domain errors out, no HTTP.

Every protocol's decoder ends here, so the same image, id sequence or shape header is judged the
same way whichever route brought it. The checks run before any work is queued, and they look at
sizes before values, so that a request's cost is known before it is paid. A parameter over its
limit (images, characters, ids) is a 400 naming the setting, as the typed routes' validation
answers it; 413 is kept for bodies and pictures that are too large.
"""

from __future__ import annotations

import math

import numpy as np

from service.errors import BadInput, UnusableInput

MAX_TENSOR_DIMS = 8  # more than any input of ours has: a longer shape is a malformed request


def parse_count(text: bytes | str) -> int | None:
    """A non-negative whole number written in ASCII digits, or None. (`str.isdigit` is true
    for '²' and other digits `int` refuses, and `int` takes '+1', ' 1', '1_0' and non-ASCII
    digits: none of them belongs in an HTTP header.)"""
    if isinstance(text, bytes):
        if not text or len(text) > 19 or not text.isdigit():  # bytes.isdigit: ASCII only
            return None
        return int(text)
    if not text or len(text) > 19 or not (text.isascii() and text.isdecimal()):
        return None
    return int(text)


def parse_shape(text: str, what: str) -> tuple[int, ...]:
    """A shape like "N,28,28" (a header or a query value) as non-negative ints, refusing
    what numpy could not hold (too many dimensions, sizes beyond int64) before using it."""
    parts = text.split(",") if text.strip() else []
    if not 1 <= len(parts) <= MAX_TENSOR_DIMS:
        raise BadInput(f"{what} must be 1 to {MAX_TENSOR_DIMS} comma-separated sizes, e.g. 1,28,28")
    try:
        shape = tuple(int(p.strip()) for p in parts)
    except ValueError:
        raise BadInput(f"{what} must hold whole numbers, e.g. 1,28,28; got {text[:80]!r}") from None
    if any(d < 0 or d > 2**31 for d in shape):
        raise BadInput(f"{what}: sizes must lie in 0..2^31; got {text[:80]!r}")
    return shape


def digit_images(images: np.ndarray, max_images: int) -> np.ndarray:
    """(28, 28) or (N, 28, 28) pixels on the 0..255 scale -> float32 (N, 28, 28), checked."""
    if images.shape == (28, 28):
        images = images[None]
    if images.ndim != 3 or images.shape[1:] != (28, 28) or len(images) < 1:
        raise BadInput(
            f"pixels must be 28x28 or Nx28x28 with N >= 1; got shape {list(images.shape)}"
        )
    if len(images) > max_images:
        raise BadInput(
            f"{len(images)} images in one request, over the limit of {max_images} "
            "(RNNSERVE_MAX_IMAGES_PER_REQUEST); split the request"
        )
    images = images.astype(np.float32, copy=False)
    pixel_values(images)
    return images


def pixel_values(images: np.ndarray) -> None:
    """Finite and on the 0..255 scale."""
    low, high = float(images.min()), float(images.max())
    if not (math.isfinite(low) and math.isfinite(high)):
        raise BadInput("pixels must be finite numbers (no NaN or infinity)")
    if low < 0 or high > 255:
        raise BadInput(f"pixel values must lie in 0..255; got {low:g}..{high:g}")


def text_length(text: str, max_chars: int, what: str = "text", empty_ok: bool = False) -> None:
    """`empty_ok`: the request carries a state, so no new characters is a valid request."""
    if not text and not empty_ok:
        raise BadInput(f"{what} must not be empty (it may be, with a carried 'state')")
    if len(text) > max_chars:
        raise BadInput(
            f"{what} has {len(text)} characters, over the limit of {max_chars} "
            "(RNNSERVE_MAX_TEXT_CHARS)"
        )


def char_ids(
    ids: np.ndarray, vocab_size: int, max_rows: int, max_steps: int, max_ids: int
) -> np.ndarray:
    """A (rows, steps) int64 array of vocabulary indices, within every bound."""
    if ids.ndim != 2 or ids.shape[0] < 1 or ids.shape[1] < 1:
        raise BadInput(f"ids must have shape [rows, steps], both >= 1; got {list(ids.shape)}")
    rows, steps = ids.shape
    if rows > max_rows:
        raise BadInput(
            f"{rows} sequences in one request, over the limit of {max_rows} "
            "(RNNSERVE_MAX_CHAR_ROWS)"
        )
    if steps > max_steps:
        raise BadInput(
            f"sequences of {steps} steps, over the limit of {max_steps} (RNNSERVE_MAX_TEXT_CHARS)"
        )
    if rows * steps > max_ids:
        raise BadInput(
            f"{rows}x{steps} = {rows * steps} ids in one request, over the limit of {max_ids} "
            "(RNNSERVE_MAX_CHAR_IDS)"
        )
    if ids.min() < 0 or ids.max() >= vocab_size:
        raise UnusableInput(f"ids must lie in 0..{vocab_size - 1} (the model's vocabulary)")
    return np.ascontiguousarray(ids, dtype=np.int64)


def char_state(state: np.ndarray, expected: tuple[int, int, int]) -> np.ndarray:
    if state.shape != expected:
        raise BadInput(f"state must have shape {list(expected)}; got {list(state.shape)}")
    state = np.ascontiguousarray(state, dtype=np.float32)
    if not np.isfinite(state).all():
        raise BadInput("state values must be finite")
    return state
