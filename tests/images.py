"""Real MNIST test digits as image files, in the forms users send them."""

from __future__ import annotations

import io
import struct
import zlib
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


def declared_png(width: int, height: int) -> bytes:
    """A PNG header that declares width x height pixels over a few bytes of data: what a
    decompression bomb shows before a byte is decoded (made by hand: Pillow would allocate
    the whole picture to save it)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )
