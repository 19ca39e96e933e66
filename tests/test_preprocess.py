"""Image and text preparation for the service (no HTTP)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.errors import BadInput, ServiceError, TooLarge, UnsupportedMedia, UnusableInput
from service.imaging.photo import ANALYSIS_SIDE, center_of_mass_shift, read_digit
from service.imaging.uploads import ImageLimits, decode_image
from service.model.numerics import encode_text, softmax, top_k
from tests.images import as_user_photo, mnist_test_digits, png_bytes

LIMIT = ImageLimits(max_pixels=4096 * 4096, max_side=16384, max_aspect=20)


def encoded(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def best_shifted_correlation(out: np.ndarray, original: np.ndarray) -> float:
    """Pixel correlation, forgiving a one-pixel shift (centring by mass rounds)."""
    return max(
        float(np.corrcoef(np.roll(out, (dy, dx), (0, 1)).ravel(), original.ravel())[0, 1])
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
    )


def test_mnist_digits_survive_the_pipeline(mnist_root: Path) -> None:
    """White-on-black MNIST digits (the fixture's 200) come out as they went in: measured
    0.82 at worst and 0.98 typically when this was written."""
    images, _ = mnist_test_digits(mnist_root, 200)
    scores = []
    for img in images:
        out = read_digit(decode_image(png_bytes(img), LIMIT)).pixels
        assert out.shape == (28, 28) and out.dtype == np.uint8
        scores.append(best_shifted_correlation(out.astype(float), img.astype(float)))
    assert min(scores) > 0.78 and float(np.median(scores)) > 0.96


def test_photo_like_input_is_inverted_cropped_and_centred(mnist_root: Path) -> None:
    images, _ = mnist_test_digits(mnist_root, 5)
    for img in images:
        out = read_digit(decode_image(as_user_photo(img), LIMIT)).pixels
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
    out = read_digit(decode_image(encoded(drawing, "PNG"), LIMIT)).pixels
    assert out[14, 14] > 200 and out[0, 0] == 0


def test_blank_image_is_refused() -> None:
    with pytest.raises(UnusableInput, match="no visible digit"):
        read_digit(Image.new("L", (50, 50), 255))


def test_decompression_bomb_refused_from_the_header() -> None:
    bomb = encoded(Image.new("L", (5000, 5000), 0), "PNG", optimize=True)
    assert len(bomb) < 100_000  # small on the wire, 25 megapixels declared
    with pytest.raises(TooLarge, match="over the limit of 16777216"):
        decode_image(bomb, LIMIT)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"GIF89a-broken", "not a readable image"),
        (b"%PDF-1.4 not an image", "unsupported image format PDF"),
        (b"\x00\x00\x00\x18ftypheic" + b"\x00" * 40, "unsupported image format HEIC"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "unsupported image format SVG"),
        (b"just some text", "unsupported image format unknown"),
        (b"", "empty"),
    ],
)
def test_bad_uploads(payload: bytes, message: str) -> None:
    with pytest.raises(ServiceError, match=message) as err:
        decode_image(payload, LIMIT)
    assert isinstance(err.value, BadInput if not payload else UnsupportedMedia)
    assert "0x" not in str(err.value)  # no object reprs in messages


def test_truncated_png_that_pil_would_half_decode_is_refused() -> None:
    whole = png_bytes(np.eye(28, dtype=np.uint8) * 255)
    with pytest.raises(UnsupportedMedia, match="not a readable image"):
        decode_image(whole[:60], LIMIT)  # PIL's load() alone accepts this prefix


def test_unsupported_but_valid_format_is_415() -> None:
    tiff = encoded(Image.new("L", (10, 10), 0), "TIFF")
    with pytest.raises(UnsupportedMedia, match="unsupported image format TIFF"):
        decode_image(tiff, LIMIT)


def test_animated_gif_uses_the_first_frame(mnist_root: Path) -> None:
    images, _ = mnist_test_digits(mnist_root, 2)
    frames = [Image.fromarray(images[0]), Image.fromarray(images[1])]
    gif = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    first = read_digit(decode_image(gif, LIMIT)).pixels
    single = read_digit(decode_image(png_bytes(images[0]), LIMIT)).pixels
    assert np.corrcoef(first.ravel(), single.ravel())[0, 1] > 0.95


def test_one_pixel_image_is_blank() -> None:
    with pytest.raises(UnusableInput, match="no visible digit"):
        read_digit(decode_image(encoded(Image.new("L", (1, 1), 0), "PNG"), LIMIT))


def test_center_of_mass_shift_moves_ink_to_the_centre() -> None:
    canvas = np.zeros((28, 28), np.float32)
    canvas[2:6, 2:6] = 255
    out = center_of_mass_shift(canvas)
    ys, xs = np.nonzero(out)
    assert abs(ys.mean() - 14) <= 1 and abs(xs.mean() - 14) <= 1


def test_text_encoding_names_every_unknown_character() -> None:
    stoi = {c: i for i, c in enumerate("abc ")}
    assert encode_text("ab c", stoi).tolist() == [0, 1, 3, 2]
    with pytest.raises(UnusableInput, match=r"2 character\(s\).*'x', 'z'"):
        encode_text("axbz", stoi)


def test_softmax_and_top_k() -> None:
    probs = softmax(np.array([1.0, 3.0, 2.0]))
    assert probs.sum() == pytest.approx(1) and top_k(probs, 2) == [1, 2]
    assert softmax(np.array([1.0, 3.0]), 0.1)[1] > softmax(np.array([1.0, 3.0]), 1.0)[1]


@pytest.mark.parametrize(
    ("size", "message"),
    [
        ((1, 16_777_216), "longest side is over the limit of 16384"),
        ((16_777_216, 1), "longest side is over the limit of 16384"),
        ((8000, 100), "more than 20 times apart"),
    ],
)
def test_sizes_are_refused_from_the_header_before_any_pixel(
    size: tuple[int, int], message: str
) -> None:
    """A 33 KB PNG of 1 x 16,777,216 pixels took 7 s and 1.5 GB when only the area was bounded."""
    picture = encoded(Image.new("1", size, 1), "PNG", optimize=True)
    assert len(picture) < 2_100_000
    with pytest.raises(TooLarge, match=message):
        decode_image(picture, LIMIT)


def test_a_large_jpeg_is_decoded_reduced() -> None:
    """12 megapixels on the wire, at most ANALYSIS_SIDE on a side once decoded (draft mode)."""
    photo = Image.new("RGB", (4000, 3000), (230, 230, 220))
    image = decode_image(encoded(photo, "JPEG", quality=80), LIMIT)
    assert max(image.size) <= ANALYSIS_SIDE
    assert image.size[0] / image.size[1] == pytest.approx(4 / 3)


@pytest.mark.parametrize("size", [(4000, 3000), (200, 150)])
def test_a_colour_jpeg_is_decoded_as_its_gray_levels(size: tuple[int, int]) -> None:
    """Reduced or not, a colour JPEG comes out as L (its luma, decoded without the chroma),
    within a couple of levels of Pillow's own RGB -> L of the same picture decoded in
    colour: coloured ink (blue, red) stays as dark against the paper as it was."""
    rng = np.random.default_rng(3)
    small = rng.integers(0, 256, (size[1] // 50, size[0] // 50, 3), dtype=np.uint8)
    photo = Image.fromarray(small).resize(size, Image.Resampling.NEAREST)
    data = encoded(photo, "JPEG", quality=90)
    gray = decode_image(data, LIMIT)
    assert gray.mode == "L"
    colour = Image.open(io.BytesIO(data))
    colour.draft("RGB", gray.size)  # the same reduction, in colour
    expected = np.asarray(colour.convert("L").resize(gray.size, Image.Resampling.BOX), float)
    assert np.abs(np.asarray(gray, float) - expected).mean() < 2.0


def test_a_cmyk_jpeg_is_still_read() -> None:
    """A print shop's CMYK JPEG has no luma channel to decode alone: it is converted."""
    image = decode_image(encoded(Image.new("CMYK", (400, 300), (0, 0, 0, 40)), "JPEG"), LIMIT)
    assert image.mode in ("RGB", "L")
    assert 150 < np.asarray(image.convert("L")).mean() < 250


def test_decoded_size_counts_not_declared_size_for_jpeg() -> None:
    """A JPEG over the pixel limit as declared, within it once reduced, is read."""
    limits = ImageLimits(max_pixels=2_000_000, max_side=16384, max_aspect=20)
    photo = encoded(Image.new("L", (4000, 3000), 200), "JPEG")
    assert max(decode_image(photo, limits).size) <= ANALYSIS_SIDE
    with pytest.raises(TooLarge):  # a PNG is decoded whole: its declared size counts
        decode_image(encoded(Image.new("L", (4000, 3000), 200), "PNG"), limits)


def test_a_many_frame_gif_costs_one_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import GifImagePlugin

    frames = [Image.new("L", (64, 64), i % 255) for i in range(300)]
    gif = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:])
    sought: list[int] = []
    seek = GifImagePlugin.GifImageFile.seek

    def counting_seek(self: GifImagePlugin.GifImageFile, frame: int) -> None:
        sought.append(frame)
        seek(self, frame)

    monkeypatch.setattr(GifImagePlugin.GifImageFile, "seek", counting_seek)
    image = decode_image(gif, LIMIT)
    assert image.size == (64, 64)
    assert all(frame == 0 for frame in sought), sought  # no later frame is ever decoded
