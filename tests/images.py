"""Real MNIST test digits as image files, in the forms users send them."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from training.data import load_mnist_split


def mnist_test_digits(root: Path, count: int) -> tuple[np.ndarray, np.ndarray]:
    split = load_mnist_split(root, train=False)
    return split.images[:count], split.labels[:count]


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def as_user_photo(pixels: np.ndarray, fmt: str = "JPEG", size: int = 180) -> bytes:
    """Dark ink on light paper, larger, off-centre, in colour: what a phone picture gives."""
    canvas = Image.new("RGB", (size, int(size * 1.2)), (235, 232, 220))
    digit = Image.fromarray(255 - pixels).resize((size // 2, size // 2)).convert("RGB")
    canvas.paste(digit, (size // 5, size // 3))
    buffer = io.BytesIO()
    canvas.save(buffer, format=fmt)
    return buffer.getvalue()


def big_blank_png(side: int) -> bytes:
    """A tiny file that declares side x side pixels: the shape of a decompression bomb."""
    buffer = io.BytesIO()
    Image.new("L", (side, side), 0).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
