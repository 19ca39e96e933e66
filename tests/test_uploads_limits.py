"""Uploads declaring huge pictures are refused by our limits, in our words, naming the setting,
before a pixel is decoded, whatever Pillow's own guard would have said."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import pytest
from PIL import Image

from service.errors import TooLarge
from service.imaging.uploads import ImageLimits, decode_image
from service.settings import Settings
from tests.images import declared_png

if TYPE_CHECKING:
    from starlette.testclient import TestClient

DEFAULTS = Settings.from_env({})
LIMITS = ImageLimits(DEFAULTS.max_image_pixels, DEFAULTS.max_image_side, DEFAULTS.max_image_aspect)
PILLOW_DEFAULT_MAX_PIXELS = 89_478_485  # PIL.Image.MAX_IMAGE_PIXELS as Pillow ships it


def test_pillow_refuses_big_headers_in_its_own_words(monkeypatch: pytest.MonkeyPatch) -> None:
    """Upstream: with its default guard Pillow's Image.open refuses a 16000x16000 header with
    its own message (no setting named), before our checks could run; service/imaging/uploads.py
    turns the guard off. When this fails, Pillow changed the guard: look again."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", PILLOW_DEFAULT_MAX_PIXELS)
    with pytest.raises(Image.DecompressionBombError, match="could be decompression bomb"):
        Image.open(io.BytesIO(declared_png(16000, 16000)))


@pytest.mark.parametrize(
    ("width", "height", "setting"),
    [
        (16000, 16000, "RNNSERVE_MAX_IMAGE_PIXELS"),  # over Pillow's 2x guard, sides allowed
        (20000, 20000, "RNNSERVE_MAX_IMAGE_SIDE"),
        (65535, 4000, "RNNSERVE_MAX_IMAGE_SIDE"),
        (16000, 400, "RNNSERVE_MAX_IMAGE_ASPECT"),
        (5000, 5000, "RNNSERVE_MAX_IMAGE_PIXELS"),
    ],
)
def test_huge_headers_are_refused_by_our_limits(width: int, height: int, setting: str) -> None:
    with pytest.raises(TooLarge) as refused:
        decode_image(declared_png(width, height), LIMITS)
    assert setting in refused.value.message and "decompression" not in refused.value.message
    assert f"{width}x{height}" in refused.value.message


def test_the_route_answers_413_naming_the_setting(app_client: TestClient) -> None:
    r = app_client.post(
        "/classify_image", files={"image": ("b.png", declared_png(16000, 16000), "image/png")}
    )
    assert r.status_code == 413, r.text
    assert "RNNSERVE_MAX_IMAGE_PIXELS" in r.json()["error"]
