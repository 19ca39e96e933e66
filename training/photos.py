"""MNIST digits rendered as phone photos and scans of a digit written on paper, and pictures
of blank paper: for training the classifiers on what users send, and for measuring it.

A rendered photo: paper of some tint with sensor noise and texture; optionally ruled (or
squared) lines and a margin line; the digit re-drawn as a pen stroke of chosen width and
ink colour (the MNIST digit's shape is thinned to its centre line and widened again to the
pen's width), rotated, filling 15-40% of the frame; the page slightly tilted; uneven light
and a shadow; camera blur; JPEG. A scan: white paper, even light, crisp dark ink.

Each picture records which conditions it has, so the evaluation (training/photo_eval.py)
can report accuracy per condition. Everything is seeded: the same seed gives the same bytes.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from scipy import ndimage as ndi

INKS = {
    "black": (28.0, 28.0, 34.0),
    "blue": (30.0, 52.0, 150.0),
    "dark-blue": (38.0, 44.0, 100.0),
    "gray": (80.0, 80.0, 86.0),  # pencil
}
# Kinds of picture; a "photo" draws each condition at random, the others force one on.
CONDITIONS = (
    "lines",
    "squared",
    "shadow",
    "blue-ink",
    "rotation",
    "small",
    "thin",
    "jpeg",
    "pencil",  # graphite: light pressure, grainy, thin, often small
    "tiny",  # a digit 4-10% of the frame's height, written with a fine pen
    "desk",  # the page's edge in view, the desk or table beyond it
    "oblique",  # the camera looks at the page at an angle: foreshortened, the desk in view
)
# What lies beyond the page's edge: wood, a dark desk, grey or near-white laminate, a weave.
DESKS = ("wood", "dark", "grey", "light", "woven")


@dataclass(frozen=True)
class Style:
    """How one picture looks. Fractions are of the frame's height unless said otherwise."""

    width: int = 1008
    height: int = 756
    scan: bool = False
    lines: bool = False
    squared: bool = False
    margin: bool = False
    shadow: bool = False
    ink: str = "black"
    pressure: float = 1.0  # how much of the ink's darkness reaches the paper
    graphite: bool = False  # pencil: the stroke is grainy (the paper's tooth shows through)
    digit_fraction: float = 0.3  # digit height / frame height
    pen_fraction: float = 0.05  # pen width / digit height
    digit_angle: float = 0.0  # degrees
    page_angle: float = 0.0  # degrees: the whole sheet, lines included
    blur: float = 0.0  # Gaussian sigma in pixels
    noise: float = 3.0  # sensor noise, gray levels
    jpeg_quality: int | None = 90  # None: PNG
    desk: str | None = None  # one of DESKS: the page does not fill the frame
    oblique: float = 0.0  # degrees between the camera's axis and the page's normal
    conditions: tuple[str, ...] = field(default=())


def random_style(
    rng: np.random.Generator,
    kind: str = "photo",
    width: int = 1008,
    height: int = 756,
) -> Style:
    """A style for `kind`: "photo" (conditions at random), "scan", "blank", "varied" (a
    photo from widened ranges, for training) or one of CONDITIONS (a photo with that
    condition forced on, strongly)."""
    scan = kind == "scan"
    lines = not scan and (kind in ("lines", "squared") or rng.random() < 0.6)
    squared = kind == "squared" or (lines and kind == "photo" and rng.random() < 0.15)
    shadow = not scan and (kind == "shadow" or rng.random() < 0.5)
    if kind == "blue-ink":
        ink = str(rng.choice(["blue", "dark-blue"]))
    elif scan:
        ink = str(rng.choice(["black", "blue", "dark-blue"], p=[0.6, 0.2, 0.2]))
    elif kind == "pencil":
        ink = "gray"
    else:
        ink = str(rng.choice(list(INKS), p=[0.45, 0.3, 0.15, 0.1]))
    if kind == "small":
        digit_fraction = rng.uniform(0.15, 0.2)
    elif kind == "tiny":
        digit_fraction = rng.uniform(0.04, 0.1)
    elif kind == "pencil":
        digit_fraction = rng.uniform(0.06, 0.3)
    elif scan:
        digit_fraction = rng.uniform(0.3, 0.7)
    else:
        digit_fraction = rng.uniform(0.15, 0.4)
    if kind in ("thin", "pencil"):
        pen = rng.uniform(0.02, 0.045)
    elif kind == "tiny":
        pen = rng.uniform(0.05, 0.12)  # a fine pen on a digit this small
    else:
        pen = rng.uniform(0.025, 0.11)
    if scan:
        pressure = 1.0
    elif kind == "pencil":
        pressure = rng.uniform(0.35, 0.75)  # graphite laid lightly
    else:
        pressure = rng.uniform(0.8, 1.0)
    strong_rotation = kind == "rotation"
    digit_angle = rng.uniform(-15, 15) if strong_rotation else rng.normal(0, 5)
    page_angle = rng.uniform(-6, 6) if strong_rotation else rng.uniform(-3, 3)
    if scan:
        page_angle = rng.uniform(-2, 2)
    quality: int | None
    if kind == "jpeg":
        quality = int(rng.integers(25, 50))
    elif scan:
        quality = None if rng.random() < 0.5 else int(rng.integers(85, 96))
    else:
        quality = int(rng.integers(60, 96))
    conditions = [kind] if kind in CONDITIONS else []
    # drawn only for the kinds that use them, so every other kind's pictures stay as they were
    desk = str(rng.choice(DESKS)) if kind in ("desk", "oblique", "varied") else None
    oblique = float(rng.uniform(20, 45)) if kind == "oblique" else 0.0
    if kind == "varied":  # the page's edge in a third, a slanted camera in a quarter
        oblique = float(rng.uniform(10, 45)) if rng.random() < 0.25 else 0.0
        desk = desk if oblique or rng.random() < 0.35 else None
    style = Style(
        width=width,
        height=height,
        scan=scan,
        lines=lines,
        squared=squared,
        margin=lines and rng.random() < 0.3,
        shadow=shadow,
        ink=ink,
        pressure=float(pressure),
        graphite=kind == "pencil" or (ink == "gray" and rng.random() < 0.5),
        digit_fraction=float(digit_fraction),
        pen_fraction=float(pen),
        digit_angle=float(np.clip(digit_angle, -20, 20)),
        page_angle=float(page_angle),
        blur=float(rng.uniform(0.0, 0.4 if scan else 1.6)),
        noise=float(rng.uniform(0.5, 1.5) if scan else rng.uniform(1.5, 6.0)),
        jpeg_quality=quality,
        desk=desk,
        oblique=oblique,
        conditions=tuple(conditions),
    )
    return widened(style, rng) if kind == "varied" else style


def widened(style: Style, rng: np.random.Generator) -> Style:
    """A photo drawn from ranges wider than any evaluated condition's, for training only:
    stroke darkness from a light pencil to full ink, pens from hairline to marker, digits from
    small to most of the frame, graphite on any ink, more blur and sensor noise, steeper
    slants. The classifier then meets, somewhere in training, what the reading leaves of
    handwriting our conditions do not draw (thick strokes whose loops nearly close, faint
    broken ones); the evaluation rows stay the fixed conditions."""
    return replace(
        style,
        pressure=float(rng.uniform(0.35, 1.0)),
        graphite=bool(rng.random() < 0.3),
        digit_fraction=float(rng.uniform(0.08, 0.6)),
        pen_fraction=float(rng.uniform(0.015, 0.18)),
        digit_angle=float(np.clip(rng.normal(0, 9), -25, 25)),
        blur=float(rng.uniform(0.0, 3.0)),
        noise=float(rng.uniform(1.5, 9.0)),
    )


# --------------------------------------------------------------------------- layers


def pen_stroke(digit: np.ndarray, height: int, pen_width: float) -> np.ndarray:
    """An MNIST digit (uint8 28x28) as a pen would draw it `height` pixels tall: its shape
    upsampled, its strokes brought to `pen_width` around their centre line (the ridge of the
    distance to the shape's edge). Returns alpha in 0..1 over the digit's box.

    Where the shape is thicker than its strokes (a small loop its writer filled in, a
    blob-headed 9) it stays filled, thinned by as much as a stroke is: a centre line alone
    turns a filled loop into a spur, the 8 into a 'δ' or a 9 into a 'J', shapes nobody
    writes, and the evaluation then measured the renderer more than the reading."""
    box = digit[(digit > 40).any(1)][:, (digit > 40).any(0)] if (digit > 40).any() else digit
    scale = height / box.shape[0]
    width = max(1, round(box.shape[1] * scale))
    big = np.asarray(
        Image.fromarray(box).resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32
    )
    shape = big >= 110
    distance = ndi.distance_transform_edt(np.pad(shape, 1))[1:-1, 1:-1]
    ridge = shape & (distance >= ndi.maximum_filter(distance, size=3) - 0.5) & (distance >= 1)
    radius = max(0.5, pen_width / 2)
    to_ridge = ndi.distance_transform_edt(~ridge) if ridge.any() else distance
    alpha = np.clip(radius + 0.5 - to_ridge, 0.0, 1.0)
    # the typical stroke's half width; the shape eroded by what thins such a stroke to the
    # pen keeps only what is thicker than a stroke (blobs), with a pen-sized rim
    half = float(np.median(distance[ridge])) if ridge.any() else radius
    core = np.clip(distance - max(0.0, half - radius) + 0.5, 0.0, 1.0) * shape
    alpha = np.maximum(alpha, core)
    pad = math.ceil(radius) + 2
    return np.pad(alpha, pad).astype(np.float32)


def _rotate(alpha: np.ndarray, degrees: float) -> np.ndarray:
    image = Image.fromarray(alpha, mode="F")
    return np.asarray(image.rotate(degrees, Image.Resampling.BILINEAR, expand=True))


def _line_alpha(
    shape: tuple[int, int],
    spacing: float,
    thickness: float,
    angle: float,
    offset: float,
    vertical: bool = False,
) -> np.ndarray:
    """Parallel anti-aliased lines `spacing` apart, tilted by `angle` degrees."""
    h, w = shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    t = math.tan(math.radians(angle))
    coordinate = (xs + ys * t) if vertical else (ys - xs * t)
    phase = np.mod(coordinate - offset, spacing)
    distance = np.minimum(phase, spacing - phase) * math.cos(math.radians(angle))
    return np.clip(thickness / 2 + 0.5 - distance, 0.0, 1.0)


def _illumination(rng: np.random.Generator, shape: tuple[int, int], shadow: bool) -> np.ndarray:
    """Light falling on the page: a gentle gradient, and a soft-edged shadow if asked."""
    h, w = shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    direction = rng.uniform(0, 2 * math.pi)
    ramp = (np.cos(direction) * xs / w + np.sin(direction) * ys / h).astype(np.float32)
    ramp -= ramp.min()
    light = 1.0 - rng.uniform(0.0, 0.25) * ramp / max(float(ramp.max()), 1e-6)
    if shadow:
        angle = rng.uniform(0, 2 * math.pi)
        cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
        signed = np.cos(angle) * (xs - cx) + np.sin(angle) * (ys - cy)
        softness = rng.uniform(0.01, 0.12) * max(h, w)
        inside = 1.0 / (1.0 + np.exp(np.clip(signed / softness, -50, 50)))
        light = light * (1.0 - rng.uniform(0.3, 0.6) * inside)
    return light.astype(np.float32)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Noise of about unit spread varying smoothly over `cell` pixels."""
    h, w = shape
    coarse = rng.normal(0, 1, (max(2, int(h / cell) + 2), max(2, int(w / cell) + 2)))
    image = Image.fromarray(coarse.astype(np.float32), mode="F")
    return np.asarray(image.resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)


def desk_texture(rng: np.random.Generator, desk: str, shape: tuple[int, int]) -> np.ndarray:
    """What lies beyond the page (one of DESKS), float RGB (h, w, 3): wood with its grain,
    a dark desk, grey or near-white laminate (hardly darker than the paper), a woven cloth."""
    h, w = shape
    scale = h / 756
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    fine = rng.normal(0, 1, (h, w)).astype(np.float32)
    if desk == "wood":
        base = np.array([rng.uniform(110, 190), rng.uniform(70, 130), rng.uniform(35, 80)])
        angle = rng.uniform(0, math.pi)
        across = -math.sin(angle) * xs + math.cos(angle) * ys
        period = rng.uniform(4, 20) * scale
        wobble = _smooth_noise(rng, shape, 40 * scale)
        grain = np.sin(2 * math.pi * across / period + 3.0 * wobble)
        shade = 1 + rng.uniform(0.05, 0.15) * grain + 0.04 * fine
    elif desk == "woven":
        base = np.full(3, rng.uniform(60, 200)) + rng.uniform(-25, 25, 3)
        period = rng.uniform(3, 8) * scale
        weave = np.sin(2 * math.pi * xs / period) * np.sin(2 * math.pi * ys / period)
        shade = 1 + rng.uniform(0.05, 0.15) * weave + 0.03 * fine
    else:
        level = {"dark": (25, 70), "grey": (110, 190), "light": (205, 240)}[desk]
        base = np.full(3, rng.uniform(*level)) + rng.uniform(-10, 10, 3)
        patches = _smooth_noise(rng, shape, 80 * scale)
        shade = 1 + 0.04 * patches + rng.uniform(0.01, 0.03) * fine
    return (base[None, None, :] * shade[..., None]).astype(np.float32)


def _edge_band(
    rng: np.random.Generator, shape: tuple[int, int], box: tuple[int, int, int, int]
) -> np.ndarray:
    """Where the page is, in the frame (alpha 0..1): one edge, two (a corner) or the whole
    sheet lying within the frame, each edge slanted a little and crossing the frame at 2-30%
    of its side from the frame's edge, never over the digit's `box` (top, left, bottom,
    right, in frame pixels)."""
    h, w = shape
    top, left, bottom, right = box
    gap = 0.03 * h
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    room = {
        "top": top - gap,
        "bottom": h - bottom - gap,
        "left": left - gap,
        "right": w - right - gap,
    }
    sides = [side for side in room if room[side] >= 0.02 * h]
    if not sides:
        sides = [max(room, key=lambda side: room[side])]
    edges = int(rng.choice([1, 2, 4], p=[0.5, 0.25, 0.25]))
    first = str(rng.choice(sides))
    chosen = [first]
    across = {"top": ("left", "right"), "bottom": ("left", "right")}
    across |= {"left": ("top", "bottom"), "right": ("top", "bottom")}
    second = [side for side in across[first] if side in sides]
    if edges == 2 and second:
        chosen.append(str(rng.choice(second)))
    elif edges == 4:
        chosen = sides
    page = np.ones((h, w), dtype=np.float32)
    for side in chosen:
        slope = math.tan(math.radians(rng.uniform(-8, 8)))
        extent = h if side in ("top", "bottom") else w
        depth = min(rng.uniform(0.02, 0.3) * extent, max(1.0, room[side]))
        if side in ("top", "bottom"):
            reach = max(abs(slope) * abs(x - w / 2) for x in (left, right))
            depth = max(1.0, min(depth, room[side] - reach))
            line = (ys - depth) if side == "top" else (h - depth - ys)
            signed = (line - slope * (xs - w / 2)) / math.hypot(1, slope)
        else:
            reach = max(abs(slope) * abs(y - h / 2) for y in (top, bottom))
            depth = max(1.0, min(depth, room[side] - reach))
            line = (xs - depth) if side == "left" else (w - depth - xs)
            signed = (line - slope * (ys - h / 2)) / math.hypot(1, slope)
        page = np.minimum(page, np.clip(signed + 0.5, 0.0, 1.0))
    return page


def _perspective(
    corners_from: list[tuple[float, float]], corners_to: list[tuple[float, float]]
) -> np.ndarray:
    """The homography (3x3) taking four points to four others."""
    rows, values = [], []
    for (x, y), (u, v) in zip(corners_from, corners_to, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        values += [u, v]
    solved = np.linalg.solve(np.array(rows, dtype=np.float64), np.array(values))
    return np.append(solved, 1.0).reshape(3, 3)


def _oblique_view(rng: np.random.Generator, size: tuple[int, int], degrees: float) -> np.ndarray:
    """Where a camera slanted `degrees` from the page's normal sees the page's corners: the
    page foreshortened by cos(degrees) across the slant, its far side narrower (which side
    is far is drawn). Returns the homography from the page to the picture."""
    pw, ph = size
    slant = math.radians(degrees)
    squeeze = math.cos(slant)
    far = 1.0 - rng.uniform(0.3, 0.7) * math.sin(slant)  # far side's width / the page's
    near = 1.0 + 0.3 * (1.0 - far)
    page = [(0.0, 0.0), (pw, 0.0), (pw, ph), (0.0, ph)]  # TL, TR, BR, BL
    side = str(rng.choice(["top", "bottom", "left", "right"]))
    if side in ("top", "bottom"):
        y0, y1 = ph * (1 - squeeze) / 2, ph * (1 + squeeze) / 2
        top_w, bottom_w = (far, near) if side == "top" else (near, far)
        seen = [
            (pw * (1 - top_w) / 2, y0),
            (pw * (1 + top_w) / 2, y0),
            (pw * (1 + bottom_w) / 2, y1),
            (pw * (1 - bottom_w) / 2, y1),
        ]
    else:
        x0, x1 = pw * (1 - squeeze) / 2, pw * (1 + squeeze) / 2
        left_h, right_h = (far, near) if side == "left" else (near, far)
        seen = [
            (x0, ph * (1 - left_h) / 2),
            (x1, ph * (1 - right_h) / 2),
            (x1, ph * (1 + right_h) / 2),
            (x0, ph * (1 + left_h) / 2),
        ]
    return _perspective(page, seen)


def _through(homography: np.ndarray, x: float, y: float) -> tuple[float, float]:
    u, v, scale = homography @ np.array([x, y, 1.0])
    return float(u / scale), float(v / scale)


def _rotated_box(
    box: tuple[int, int, int, int], degrees: float, centre: tuple[float, float]
) -> tuple[int, int, int, int]:
    """The bounding box (top, left, bottom, right) of `box` once the page is turned by
    `degrees` about `centre` as PIL's rotate turns it (counter-clockwise on screen)."""
    cx, cy = centre
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    seen = [
        (cx + (x - cx) * c + (y - cy) * s, cy - (x - cx) * s + (y - cy) * c)
        for y in box[::2]
        for x in box[1::2]
    ]
    return _bounding_box(seen)


def _bounding_box(points: list[tuple[float, float]]) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) in whole pixels around (x, y) points."""
    return (
        int(min(y for _, y in points)),
        int(min(x for x, _ in points)),
        int(max(y for _, y in points)) + 1,
        int(max(x for x, _ in points)) + 1,
    )


def _on_desk(
    rng: np.random.Generator, pixels: np.ndarray, page: np.ndarray, desk: str
) -> np.ndarray:
    """The page (float RGB) where `page` (alpha) is, the desk beyond it, darkened near the
    page's edge by the page's own soft shadow."""
    shape = (int(page.shape[0]), int(page.shape[1]))
    surface = desk_texture(rng, desk, shape)
    outside = ndi.distance_transform_edt(page < 0.5).astype(np.float32)
    softness = rng.uniform(0.005, 0.03) * shape[0]
    surface *= (1.0 - rng.uniform(0.15, 0.5) * np.exp(-outside / softness))[..., None]
    a = page[..., None]
    return (pixels * a + surface * (1 - a)).astype(np.float32)


def render(digit: np.ndarray | None, style: Style, rng: np.random.Generator) -> tuple[bytes, str]:
    """One picture as encoded bytes and its format ("JPEG" or "PNG"). `digit` None: blank."""
    h, w = style.height, style.width
    # Work on a page larger than the frame so that tilting it leaves no empty corners.
    margin = int(0.08 * max(h, w))
    ph, pw = h + 2 * margin, w + 2 * margin
    box = (margin + h // 3, margin + w // 3, margin + 2 * h // 3, margin + 2 * w // 3)
    tint = (
        np.array([250.0, 250.0, 250.0]) - rng.uniform(0, 6, 3)
        if style.scan
        else np.array([rng.uniform(225, 250), rng.uniform(222, 248), rng.uniform(205, 240)])
    )
    page = np.broadcast_to(tint, (ph, pw, 3)).astype(np.float32).copy()
    if not style.scan:
        grain = ndi.gaussian_filter(rng.normal(0, 1, (ph // 8 + 1, pw // 8 + 1)), 1.0)
        grain = np.kron(grain, np.ones((8, 8)))[:ph, :pw]
        page += (grain * rng.uniform(1.0, 4.0))[..., None].astype(np.float32)
    if style.lines or style.squared:
        spacing = rng.uniform(0.06, 0.1) * h
        thickness = rng.uniform(0.8, 2.5) * h / 756
        colour = np.array(
            [rng.uniform(130, 190), rng.uniform(165, 210), rng.uniform(200, 240)]
            if rng.random() < 0.7
            else [rng.uniform(140, 190)] * 3
        )
        strength = rng.uniform(0.5, 0.9)
        alpha = _line_alpha((ph, pw), spacing, thickness, 0.0, rng.uniform(0, spacing))
        if style.squared:
            vertical = _line_alpha(
                (ph, pw), spacing, thickness, 0.0, rng.uniform(0, spacing), vertical=True
            )
            alpha = np.maximum(alpha, vertical)
        alpha = (alpha * strength)[..., None]
        page = (page * (1 - alpha) + colour * alpha).astype(np.float32)
        if style.margin:
            x = int(margin + rng.uniform(0.04, 0.2) * w)
            red = np.array([220.0, 90.0, 95.0])
            line_w = max(1, round(thickness))
            page[:, x : x + line_w] = page[:, x : x + line_w] * 0.2 + red * 0.8
    if digit is not None:
        height = max(8, round(style.digit_fraction * h))
        alpha = pen_stroke(digit, height, style.pen_fraction * height)
        alpha = _rotate(alpha, style.digit_angle)
        alpha = alpha * style.pressure
        if style.graphite:  # the paper's tooth: graphite catches on its ridges only
            tooth = ndi.gaussian_filter(rng.normal(0, 1, alpha.shape), 0.7)
            alpha = alpha * np.clip(0.75 + 0.9 * tooth, 0.15, 1.0).astype(np.float32)
        ah, aw = alpha.shape
        top = margin + int(rng.uniform(0.05, 0.95) * max(1, h - ah))
        left = margin + int(rng.uniform(0.05, 0.95) * max(1, w - aw))
        box = (top, left, top + ah, left + aw)
        region = page[top : top + ah, left : left + aw]
        a = alpha[: region.shape[0], : region.shape[1], None]
        ink = np.array(INKS[style.ink]) + rng.uniform(-8, 8, 3)
        page[top : top + ah, left : left + aw] = region * (1 - a) + ink * a
    if not style.scan and rng.random() < 0.3:  # dust and specks
        for _ in range(int(rng.integers(1, 8))):
            y, x = int(rng.integers(0, ph - 3)), int(rng.integers(0, pw - 3))
            size = int(rng.integers(1, 4))
            page[y : y + size, x : x + size] *= rng.uniform(0.4, 0.8)
    image = Image.fromarray(np.clip(page, 0, 255).astype(np.uint8))
    if style.page_angle:
        image = image.rotate(style.page_angle, Image.Resampling.BILINEAR, fillcolor=(90, 80, 70))
        box = _rotated_box(box, style.page_angle, (pw / 2, ph / 2))
    coverage = None
    if style.oblique:
        view = _oblique_view(rng, (pw, ph), style.oblique)
        inverse = np.linalg.inv(view)
        coefficients = tuple(float(c) for c in (inverse / inverse[2, 2]).ravel()[:8])
        perspective = Image.Transform.PERSPECTIVE
        image = image.transform((pw, ph), perspective, coefficients, Image.Resampling.BILINEAR)
        coverage = Image.new("L", (pw, ph), 255).transform(
            (pw, ph), perspective, coefficients, Image.Resampling.BILINEAR
        )
        box = _bounding_box([_through(view, x, y) for y in box[::2] for x in box[1::2]])
    # the frame: centred on the page; a slanted view moves it only as far as needed to keep
    # the digit in view (the other kinds' pictures stay as they were)
    crop_top, crop_left = margin, margin
    if style.oblique:
        gap = int(0.03 * h)
        crop_top = int(np.clip(np.clip(margin, box[2] + gap - h, box[0] - gap), 0, ph - h))
        crop_left = int(np.clip(np.clip(margin, box[3] + gap - w, box[1] - gap), 0, pw - w))
    frame = (crop_left, crop_top, crop_left + w, crop_top + h)
    image = image.crop(frame)
    pixels = np.asarray(image, dtype=np.float32)
    if style.desk:
        if coverage is not None:
            where = np.asarray(coverage.crop(frame), dtype=np.float32) / 255.0
        else:
            in_frame = (
                box[0] - crop_top,
                box[1] - crop_left,
                box[2] - crop_top,
                box[3] - crop_left,
            )
            where = _edge_band(rng, (h, w), in_frame)
        pixels = _on_desk(rng, pixels, where, style.desk)
    if not style.scan:
        pixels = pixels * _illumination(rng, (h, w), style.shadow)[..., None]
    pixels = pixels + rng.normal(0, style.noise, pixels.shape).astype(np.float32)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    if style.blur > 0.2:
        image = image.filter(ImageFilter.GaussianBlur(style.blur))
    buffer = io.BytesIO()
    if style.jpeg_quality is None:
        image.save(buffer, "PNG")
        return buffer.getvalue(), "PNG"
    image.save(buffer, "JPEG", quality=style.jpeg_quality)
    return buffer.getvalue(), "JPEG"


# --------------------------------------------------------------------------- many pictures

# The mix of kinds the training set draws from: mostly photos with conditions at random.
# "varied" (training only) widens every range beyond the evaluated conditions'; a page on a
# desk and a slanted camera (foreshortened digits) are common in phone photos, and weigh more.
TRAINING_MIX = {
    "photo": 0.45,
    "varied": 0.2,
    "scan": 0.1,
    **{kind: 0.15 / len(CONDITIONS) for kind in CONDITIONS},
}
TRAINING_MIX["desk"] += 0.05
TRAINING_MIX["oblique"] += 0.05


@dataclass(frozen=True)
class Picture:
    """A rendered picture and what it shows (label None: blank paper)."""

    kind: str
    label: int | None
    data: bytes
    style: Style


def pictures(
    images: np.ndarray,
    labels: np.ndarray,
    kinds: list[str],
    seed: int,
    width: int = 1008,
    height: int = 756,
    start: int = 0,
) -> list[Picture]:
    """Picture i shows images[i] (labels[i]) as kinds[i]; kinds "blank" (a photo's paper)
    and "blank-desk" (a page on a desk: its edge in view, or seen at a slant) ignore the
    digit. Seeded per picture by (seed, start + i): a slice passed with its start renders
    exactly as it would within the whole."""
    out = []
    for i, (image, label, kind) in enumerate(zip(images, labels, kinds, strict=True)):
        rng = np.random.default_rng([seed, start + i])
        blank = kind.startswith("blank")
        drawn = kind
        if kind == "blank":
            drawn = "photo"
        elif kind == "blank-desk":
            drawn = "desk" if rng.random() < 0.5 else "oblique"
        style = random_style(rng, drawn, width, height)
        data, _ = render(None if blank else image, style, rng)
        out.append(Picture(kind, None if blank else int(label), data, style))
    return out


def _process_chunk(
    args: tuple[np.ndarray, np.ndarray, list[str], int, int, int, int],
) -> tuple[np.ndarray, np.ndarray]:
    from service.errors import UnusableInput
    from service.imaging.uploads import ImageLimits, read_upload

    images, labels, kinds, seed, start, width, height = args
    limits = ImageLimits(max_pixels=50_000_000, max_side=20_000, max_aspect=20.0)
    seen, kept = [], []
    for offset, picture in enumerate(pictures(images, labels, kinds, seed, width, height, start)):
        try:
            seen.append(read_upload(picture.data, limits).pixels)
        except UnusableInput:
            continue
        kept.append(start + offset)
    shape = (len(seen), 28, 28)
    return np.stack(seen) if seen else np.zeros(shape, np.uint8), np.asarray(kept, np.int64)


def photo_digits(
    images: np.ndarray,
    labels: np.ndarray,
    seed: int,
    processes: int = 2,
    width: int = 504,
    height: int = 378,
    mix: dict[str, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each digit rendered once as a picture of a kind drawn from `mix`, then read by the
    service's own steps (service/imaging/photo.py): what the model will see for such a picture.
    Returns (pixels uint8 (M, 28, 28), labels (M,)); digits the reading refused are left
    out (M <= N). Rendered at 504x378: what a phone photo is once decoded in draft mode."""
    from concurrent.futures import ProcessPoolExecutor

    mix = mix or TRAINING_MIX
    rng = np.random.default_rng([seed, 1])
    names = list(mix)
    weights = np.array([mix[k] for k in names], dtype=np.float64)
    kinds = [names[i] for i in rng.choice(len(names), size=len(images), p=weights / weights.sum())]
    chunk = 2000
    jobs = [
        (
            images[s : s + chunk],
            labels[s : s + chunk],
            kinds[s : s + chunk],
            seed,
            s,
            width,
            height,
        )
        for s in range(0, len(images), chunk)
    ]
    with ProcessPoolExecutor(max_workers=processes) as pool:
        results = list(pool.map(_process_chunk, jobs))
    pixels = np.concatenate([r[0] for r in results])
    kept = np.concatenate([r[1] for r in results])
    return pixels, labels[kept]


def reading_code_digest() -> str:
    """A digest of the code that renders and reads pictures: a cached photo set is valid
    only for the exact code that made it."""
    import hashlib

    import service.imaging.photo
    import service.imaging.uploads

    digest = hashlib.sha256()
    for module in (service.imaging.photo, service.imaging.uploads):
        digest.update(Path(str(module.__file__)).read_bytes())
    digest.update(Path(__file__).read_bytes())
    return digest.hexdigest()[:16]


def cached_photo_digits(
    images: np.ndarray,
    labels: np.ndarray,
    fraction: float,
    seed: int,
    cache_dir: Path,
    processes: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """`photo_digits` of the first `fraction` of a seeded shuffle of the digits, cached in
    `cache_dir` under a key made of the data, the seed and the reading code's digest."""
    import hashlib

    count = max(1, round(fraction * len(images)))
    order = np.random.default_rng([seed, 2]).permutation(len(images))[:count]
    key = hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()[:12]
    path = cache_dir / f"photos-{key}-{seed}-{count}-{reading_code_digest()}.npz"
    if path.exists():
        with np.load(path) as cached:
            return cached["images"], cached["labels"]
    pixels, kept = photo_digits(images[order], labels[order], seed, processes)
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npz")
    np.savez_compressed(partial, images=pixels, labels=kept)
    partial.replace(path)
    return pixels, kept
