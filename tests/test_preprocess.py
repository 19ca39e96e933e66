"""Image and text preparation for the service (no HTTP)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.preprocess import (
    InputError,
    center_of_mass_shift,
    decode_image,
    encode_text,
    mnist_style,
    softmax,
    top_k,
)
from tests.images import as_user_photo, mnist_test_digits, png_bytes

LIMIT = 4096 * 4096


def encoded(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def test_mnist_digit_survives_the_pipeline(mnist_root: Path) -> None:
    images, _ = mnist_test_digits(mnist_root, 20)
    for img in images:
        out = mnist_style(decode_image(png_bytes(img), LIMIT))
        assert out.shape == (28, 28) and out.dtype == np.uint8
        # MNIST digits are already centred: the pipeline keeps them close to the original
        corr = np.corrcoef(out.ravel().astype(float), img.ravel().astype(float))[0, 1]
        assert corr > 0.8


def test_photo_like_input_is_inverted_cropped_and_centred(mnist_root: Path) -> None:
    images, _ = mnist_test_digits(mnist_root, 5)
    for img in images:
        out = mnist_style(decode_image(as_user_photo(img), LIMIT))
        assert out[0].max() == 0 and out[:, 0].max() == 0  # black background
        ys, xs = np.nonzero(out)
        assert ys.max() - ys.min() <= 20 or xs.max() - xs.min() <= 20  # fits in a 20px box
        weights = out.astype(float)
        cy = (np.indices(out.shape)[0] * weights).sum() / weights.sum()
        cx = (np.indices(out.shape)[1] * weights).sum() / weights.sum()
        assert abs(cy - 14) <= 1 and abs(cx - 14) <= 1
        corr = np.corrcoef(out.ravel().astype(float), img.ravel().astype(float))[0, 1]
        assert corr > 0.6


def test_transparent_canvas_drawing_counts_as_white_paper() -> None:
    drawing = Image.new("RGBA", (100, 100), (0, 0, 0, 0))
    for y in range(20, 80):
        for x in range(45, 55):
            drawing.putpixel((x, y), (0, 0, 0, 255))  # black stroke on transparency
    out = mnist_style(decode_image(encoded(drawing, "PNG"), LIMIT))
    assert out[14, 14] > 200 and out[0, 0] == 0


def test_blank_image_is_refused() -> None:
    with pytest.raises(InputError, match="no visible digit") as err:
        mnist_style(Image.new("L", (50, 50), 255))
    assert err.value.status == 422


def test_decompression_bomb_refused_from_the_header() -> None:
    bomb = encoded(Image.new("L", (5000, 5000), 0), "PNG", optimize=True)
    assert len(bomb) < 100_000  # small on the wire, 25 megapixels declared
    with pytest.raises(InputError, match="over the limit") as err:
        decode_image(bomb, LIMIT)
    assert err.value.status == 413


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"GIF89a-broken", "not a readable image"),
        (b"%PDF-1.4 not an image", "not a readable"),
        (b"", "empty"),
    ],
)
def test_bad_uploads(payload: bytes, message: str) -> None:
    with pytest.raises(InputError, match=message):
        decode_image(payload, LIMIT)


def test_truncated_png_that_pil_would_half_decode_is_refused() -> None:
    whole = png_bytes(np.eye(28, dtype=np.uint8) * 255)
    with pytest.raises(InputError, match="not a readable image") as err:
        decode_image(whole[:60], LIMIT)  # PIL's load() alone accepts this prefix
    assert err.value.status == 415


def test_unsupported_but_valid_format_is_415() -> None:
    tiff = encoded(Image.new("L", (10, 10), 0), "TIFF")
    with pytest.raises(InputError, match="unsupported image format TIFF") as err:
        decode_image(tiff, LIMIT)
    assert err.value.status == 415


def test_animated_gif_uses_the_first_frame(mnist_root: Path) -> None:
    images, _ = mnist_test_digits(mnist_root, 2)
    frames = [Image.fromarray(images[0]), Image.fromarray(images[1])]
    gif = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    first = mnist_style(decode_image(gif, LIMIT))
    single = mnist_style(decode_image(png_bytes(images[0]), LIMIT))
    assert np.corrcoef(first.ravel(), single.ravel())[0, 1] > 0.95


def test_one_pixel_image_is_blank() -> None:
    with pytest.raises(InputError, match="no visible digit"):
        mnist_style(decode_image(encoded(Image.new("L", (1, 1), 0), "PNG"), LIMIT))


def test_center_of_mass_shift_moves_ink_to_the_centre() -> None:
    canvas = np.zeros((28, 28), np.float32)
    canvas[2:6, 2:6] = 255
    out = center_of_mass_shift(canvas)
    ys, xs = np.nonzero(out)
    assert abs(ys.mean() - 14) <= 1 and abs(xs.mean() - 14) <= 1


def test_text_encoding_names_every_unknown_character() -> None:
    stoi = {c: i for i, c in enumerate("abc ")}
    assert encode_text("ab c", stoi).tolist() == [0, 1, 3, 2]
    with pytest.raises(InputError, match=r"2 character\(s\).*'x', 'z'") as err:
        encode_text("axbz", stoi)
    assert err.value.status == 422


def test_softmax_and_top_k() -> None:
    probs = softmax(np.array([1.0, 3.0, 2.0]))
    assert probs.sum() == pytest.approx(1) and top_k(probs, 2) == [1, 2]
    assert softmax(np.array([1.0, 3.0]), 0.1)[1] > softmax(np.array([1.0, 3.0]), 1.0)[1]
