"""Uploads -> small upright images (service/imaging/photo.py reads the digit out of them).

An upload is checked before it is decoded (format, declared size, structure) and decoded no
larger than the digit reading needs, so its cost follows the limits, not the file.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from service.errors import BadInput, ServiceError, TooLarge, UnsupportedMedia, UnusableInput
from service.imaging.photo import ANALYSIS_SIDE, DigitReading, read_digit, shrink

# The only parsers an upload ever reaches. Phones' multi-picture JPEGs (MPO) come in as JPEG.
ALLOWED_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")
# Pillow refuses, in Image.open and in its own words, any image declaring more than twice
# its global MAX_IMAGE_PIXELS (89,478,485), before our limits are checked: a 16000x16000 PNG
# got "Image size (256000000 pixels) exceeds limit of 178956970 pixels, could be
# decompression bomb DOS attack", naming no setting. Our limits (side and aspect from the
# header, pixels after JPEG's reduced decoding) are checked before a pixel is decoded
# (decode_image), so Pillow's cruder guard is turned off and ours speak;
# tests/test_uploads_limits.py reproduces Pillow's refusal with its default.
Image.MAX_IMAGE_PIXELS = None
# JPEGs are decoded at 1/2, 1/4 or 1/8 scale while that leaves at least 3/4 of the side
# asked for (draft mode): a 12-megapixel photo costs the decoding of 0.2 megapixels.
# A colour JPEG is decoded straight to gray, all the reading uses (photo.luminance):
# libjpeg outputs its Y channel (Pillow's RGB -> L weights, within a level) and skips the
# chroma's inverse DCT, upsampling and colour conversion, and one channel is shrunk, not
# three (loadtest/bench_photo.py measures what a 12 MP photo costs).
# The second, finer look at a picture where nothing was found (read_upload): a digit 3% of
# a phone photo's height is ~17 pixels tall there, its fine pen's strokes a pixel or two.
FINER_SIDE = 768
FINER_SMALLEST = 0.025  # of the shorter side: a smaller mark there is a speck
SOURCE_SIZE = "rnnserve.source_size"  # info key: the picture's size as sent
# File signatures, for a useful 415: a damaged file of ours, or a format we do not read.
KNOWN_SIGNATURES = (
    (b"\x89PNG", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF8", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"%PDF", "PDF"),
    (b"8BPS", "PSD"),
    (b"\x00\x00\x01\x00", "ICO"),
)
_OBJECT_REPR = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")


@dataclass(frozen=True)
class ImageLimits:
    """What an upload may cost (each a setting, see service/settings.py)."""

    max_pixels: int  # decoded width x height (after JPEG's reduced decoding)
    max_side: int  # longest side, as declared in the file
    max_aspect: float  # longest side / shortest side

    def check(self, width: int, height: int) -> None:
        if width < 1 or height < 1:
            raise UnsupportedMedia(f"the image declares {width}x{height} pixels")
        if max(width, height) > self.max_side:
            raise TooLarge(
                f"image is {width}x{height} pixels: its longest side is over the limit of "
                f"{self.max_side} (RNNSERVE_MAX_IMAGE_SIDE)"
            )
        if max(width, height) / min(width, height) > self.max_aspect:
            raise TooLarge(
                f"image is {width}x{height} pixels: sides more than {self.max_aspect:g} times "
                "apart (RNNSERVE_MAX_IMAGE_ASPECT); crop it to the digit"
            )


def _format_of(data: bytes) -> str:
    """The name of a format we do not read, from its signature, for the error message."""
    head = data[:16]
    for signature, name in KNOWN_SIGNATURES:
        if head.startswith(signature):
            return name
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "WEBP"
    if head[4:8] == b"ftyp":  # ISO media: HEIC/HEIF/AVIF photos
        brand = head[8:12].decode("latin-1").strip().upper()
        return "HEIC" if brand.startswith(("HEI", "HEV", "MIF")) else brand or "ISO media"
    if head.lstrip().startswith((b"<svg", b"<?xml")):
        return "SVG"
    return "unknown"


def _clean(exc: BaseException) -> str:
    """An exception's message without object reprs (`<_io.BytesIO object at 0x...>`)."""
    return _OBJECT_REPR.sub("the upload", str(exc)) or type(exc).__name__


def _open(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)


def read_upload(data: bytes, limits: ImageLimits) -> DigitReading:
    """An upload -> what the classifiers see: decoded and read at ANALYSIS_SIDE, and where
    that refuses it but the picture has more pixels (a small digit, a fine pen, a light
    pencil may be a few faint pixels there), decoded again and read at FINER_SIDE, where it
    still is `FINER_SMALLEST` of the frame. Only refused pictures pay for the second look
    (blank paper is one); what it refuses is refused with the first look's reason, which
    speaks of the picture as sent."""
    image = decode_image(data, limits)
    try:
        return read_digit(image)
    except UnusableInput as first:
        if max(image.info.get(SOURCE_SIZE, image.size)) < FINER_SIDE * 3 // 4:
            raise
        try:
            finer = decode_image(data, limits, FINER_SIDE)
            return read_digit(finer, FINER_SIDE, FINER_SMALLEST, small_digit=True)
        except UnusableInput:
            raise first from None


def decode_image(data: bytes, limits: ImageLimits, side: int = ANALYSIS_SIDE) -> Image.Image:
    """Open an upload as an upright L/RGB/F image no larger than `side`, refusing what is
    unsupported, corrupt or oversized (415/413) before any pixel is decoded.

    Only the allowed formats' parsers ever see the bytes; the declared size is checked from
    the header; JPEGs are decoded at 1/2, 1/4 or 1/8 scale when that still leaves 3/4 of
    `side` pixels (draft mode: cheaper than decoding everything and shrinking), colour
    JPEGs as gray; only the first frame of an animated or multi-picture file is read.
    Memory then follows the limits, not the file. The picture's size as sent is in its
    info[SOURCE_SIZE].
    """
    if not data:
        raise BadInput("the uploaded file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                image = _open(data)
            except UnidentifiedImageError:
                claimed = _format_of(data)
                if claimed in ALLOWED_FORMATS:
                    raise UnsupportedMedia(
                        f"the upload is not a readable image: it starts like a {claimed} file "
                        "but is damaged or truncated"
                    ) from None
                raise UnsupportedMedia(
                    f"unsupported image format {claimed}: send one of {', '.join(ALLOWED_FORMATS)}"
                ) from None
            limits.check(*image.size)
            source = image.size
            # load() can succeed on a truncated file (PIL decodes what is there); verify()
            # checks the structure (chunk CRCs for PNG) but leaves the image unusable: reopen
            image.verify()
            image = _open(data)
            if image.format in ("JPEG", "MPO"):
                width, height = image.size
                scale = max(width, height) / (side * 3 // 4)
                if scale >= 2:
                    width, height = max(1, int(width / scale)), max(1, int(height / scale))
                image.draft("L", (width, height))  # gray: see the note at the top
            width, height = image.size
            if width * height > limits.max_pixels:
                raise TooLarge(
                    f"image is {width}x{height} pixels, over the limit of {limits.max_pixels} "
                    "(RNNSERVE_MAX_IMAGE_PIXELS)"
                )
            image.load()
            image = shrink(image, side)
            image.info[SOURCE_SIZE] = source
    except ServiceError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise TooLarge(f"image refused as a decompression bomb: {_clean(exc)}") from None
    except Exception as exc:  # any parser failure on hostile bytes is the upload's fault
        raise UnsupportedMedia(
            f"the upload is not a readable image ({type(exc).__name__}: {_clean(exc)}); send "
            f"a valid {', '.join(ALLOWED_FORMATS)} file"
        ) from None
    return image
