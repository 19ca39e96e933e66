"""Input preparation: uploaded images -> MNIST-style 28x28 digits, pixel arrays, text -> ids.

MNIST digits are white on black, their ink fitted into a 20x20 box (aspect ratio kept) and
centred by centre of mass in a 28x28 field. Photos, scans and canvas drawings look nothing
like that, so an upload goes through the same steps before the model sees it.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ALLOWED_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")
INK_THRESHOLD = 0.2  # fraction of the darkest-to-lightest range that counts as ink


class InputError(ValueError):
    """Bad input from the client; `status` is the HTTP status it maps to."""

    status = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Open an upload as an image, refusing unsupported, corrupt and oversized ones (415/413)."""
    if not data:
        raise InputError("the uploaded file is empty", 400)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            fmt = image.format
            if fmt not in ALLOWED_FORMATS:
                raise InputError(
                    f"unsupported image format {fmt or 'unknown'}; send one of "
                    f"{', '.join(ALLOWED_FORMATS)}",
                    415,
                )
            width, height = image.size
            if width * height > max_pixels:  # checked from the header, before decoding
                raise InputError(
                    f"image is {width}x{height} pixels, over the limit of {max_pixels} "
                    "(RNNSERVE_MAX_IMAGE_PIXELS)",
                    413,
                )
            # load() can succeed on a truncated file (PIL decodes what is there); verify()
            # checks the structure (chunk CRCs for PNG) but leaves the image unusable: reopen
            image.verify()
            image = Image.open(io.BytesIO(data))
            image.seek(0)  # animated GIF/WebP: the first frame
            image.load()
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(f"image refused as a decompression bomb: {exc}", 413) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InputError(
            f"the upload is not a readable image ({type(exc).__name__}: {exc}); send a "
            f"valid {', '.join(ALLOWED_FORMATS)} file",
            415,
        ) from None
    return image


def to_grayscale(image: Image.Image) -> np.ndarray:
    """Float gray levels in [0, 1]; transparent areas count as white paper."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(paper, rgba)
    gray = ImageOps.grayscale(image.convert("RGB") if image.mode not in ("L", "RGB") else image)
    return np.asarray(gray, dtype=np.float32) / 255.0


def mnist_style(image: Image.Image) -> np.ndarray:
    """Any digit picture -> uint8 (28, 28), white ink on black, MNIST-centred.

    Steps: grayscale; invert when the background (the border) is light; stretch contrast;
    crop to the ink; fit into 20x20 keeping the aspect ratio; place in 28x28 so that the
    centre of mass sits at the centre.
    """
    gray = to_grayscale(image)
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if np.median(border) > 0.5:  # dark digit on light paper
        gray = 1.0 - gray
    low, high = float(np.percentile(gray, 1)), float(gray.max())
    if high - low < 0.1:
        raise InputError("the image has no visible digit (it is blank or almost uniform)", 422)
    ink = np.clip((gray - low) / (high - low), 0.0, 1.0)
    ink[ink < INK_THRESHOLD] = 0.0
    rows = np.flatnonzero(ink.max(axis=1) > 0)
    cols = np.flatnonzero(ink.max(axis=0) > 0)
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = crop.shape
    scale = 20.0 / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    fitted = Image.fromarray((crop * 255).astype(np.uint8)).resize(
        (new_w, new_h), Image.Resampling.LANCZOS
    )
    box = np.asarray(fitted, dtype=np.float32)
    canvas = np.zeros((28, 28), dtype=np.float32)
    top, left = (28 - new_h) // 2, (28 - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = box
    return center_of_mass_shift(canvas)


def center_of_mass_shift(canvas: np.ndarray) -> np.ndarray:
    """Shift (whole pixels) so the ink's centre of mass lands at (14, 14), as MNIST did."""
    total = float(canvas.sum())
    if total <= 0:
        return canvas.astype(np.uint8)
    ys, xs = np.indices(canvas.shape)
    cy, cx = float((ys * canvas).sum() / total), float((xs * canvas).sum() / total)
    dy, dx = round(14 - cy), round(14 - cx)
    shifted = np.zeros_like(canvas)
    src_y = slice(max(0, -dy), min(28, 28 - dy))
    dst_y = slice(max(0, dy), min(28, 28 + dy))
    src_x = slice(max(0, -dx), min(28, 28 - dx))
    dst_x = slice(max(0, dx), min(28, 28 + dx))
    shifted[dst_y, dst_x] = canvas[src_y, src_x]
    return np.clip(shifted, 0, 255).astype(np.uint8)


def normalize(pixels_0_255: np.ndarray, normalization: dict[str, float]) -> np.ndarray:
    """(N, 28, 28) pixels on the 0..255 scale -> the model's float32 input (card formula)."""
    x = pixels_0_255.astype(np.float32) * np.float32(normalization["scale"])
    return (x - np.float32(normalization["mean"])) / np.float32(normalization["std"])


def encode_text(text: str, stoi: dict[str, int]) -> np.ndarray:
    """Text -> int64 ids; characters outside the vocabulary are refused, all named at once."""
    unknown = sorted({c for c in text if c not in stoi})
    if unknown:
        shown = ", ".join(repr(c) for c in unknown[:20])
        raise InputError(
            f"{len(unknown)} character(s) are not in the model's vocabulary: {shown}. "
            "The vocabulary is listed by the metadata endpoint.",
            422,
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
