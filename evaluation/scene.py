"""A phone photo of one handwritten digit, rendered from pen trajectories (evaluation/strokes.py).

Written without reference to training/photos.py (the renderer that training and calibration
use), so that a reading or a model tuned on that renderer is measured here on pictures it has
never seen the like of. Nothing here may feed training, thresholds or calibration.

A picture is built as light would make it:
1. the page (in page pixels): paper colour, slow mottling and fibre grain; ruled or squared
   lines and a margin; the digit drawn with a pen model: stroke width and ink that follow the
   pen's pressure along the trajectory, tapered pen-down and lift-off, ballpoint skips, pencil
   graphite caught on the paper's tooth, marker ink wicking into the fibres;
2. the light on the page: a gradient across it and a soft-edged shadow;
3. the camera: a perspective view of the tilted page over a desk, defocus or motion blur,
   vignetting, exposure, white balance, shot and read noise, the sRGB tone curve, sometimes
   sharpening, and JPEG at the condition's quality.

Every picture is a pure function of (seed, condition, index): `render_picture` draws all its
randomness from a generator seeded with those three.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from scipy import ndimage

from evaluation.strokes import Stroke, glyph_strokes, mnist_strokes

# Each condition forces one thing on, strongly, over "everyday" settings (a decent photo of a
# ballpoint digit); `phone` draws every factor at random. Results are reported per condition.
CONDITIONS: dict[str, str] = {
    "clean": "black gel pen on white paper, even light, camera square on, sharp, JPEG 95",
    "everyday": "ballpoint or gel pen, plain paper filling the frame, mild light, tilt, blur",
    "thin_pen": "fine pen, 1.5-3.5% of the digit height wide, faint, with skips",
    "pencil": "graphite: light and grainy, darkness following the pressure",
    "marker": "felt marker, 12-25% of the digit height wide, ink bleeding into the paper",
    "ruled": "lined paper (lines 1-2.5 px) with a red margin, digit written on a line",
    "squared": "squared (grid) paper, digit over one or two cells",
    "shadow": "a soft-edged shadow (25-65% darker) across or near the digit",
    "blur": "defocus (sigma 1.5-4 px per 1000 px) or motion blur (6-20 px)",
    "small": "digit 3-7% of the frame's short side",
    "large": "digit 30-40% of the frame's short side",
    "tilted": "page tilted 25-45 degrees to the camera, rotated up to 20 degrees",
    "page_edge": "the page's edge and the desk beyond it in view (page fills 70-97%)",
    "low_light": "dim, warm (tungsten) light, strong noise and vignetting",
    "jpeg_low": "JPEG quality 10-35",
    "phone": "every factor drawn at random (pens, paper, light, camera, size)",
}

INKS = {  # reflectance of a fully inked spot, linear RGB
    "black": (0.10, 0.10, 0.12),
    "blue": (0.14, 0.20, 0.55),
    "dark_blue": (0.08, 0.10, 0.30),
    "gel_black": (0.05, 0.05, 0.06),
    "red": (0.65, 0.12, 0.12),
    "graphite": (0.30, 0.30, 0.32),
    "marker_black": (0.06, 0.06, 0.07),
    "marker_blue": (0.10, 0.14, 0.45),
}
PAPERS = {  # linear RGB reflectance
    "white": (0.90, 0.90, 0.89),
    "cream": (0.90, 0.86, 0.74),
    "recycled": (0.80, 0.80, 0.77),
    "bluish": (0.86, 0.88, 0.92),
    "legal_yellow": (0.95, 0.90, 0.58),
}
DESKS = [(0.25, 0.15, 0.08), (0.45, 0.45, 0.45), (0.05, 0.05, 0.05), (0.55, 0.40, 0.25)]


@dataclass
class Pen:
    kind: str  # ballpoint, gel, fineliner, pencil, marker
    width: float  # fraction of the digit's height
    density: float  # 0..1: how much of the light the ink absorbs at full pressure
    ink: tuple[float, float, float]
    pressure: float = 0.15  # how much the pressure wanders along the stroke
    taper: float = 0.5  # width at a free end, as a share of the full width
    skips: float = 0.0  # 0..1: how often a ballpoint skips
    grain: float = 0.0  # 0..1: pencil graphite caught only on the paper's tooth
    bleed: float = 0.0  # 0..1: marker ink wicking into the fibres


@dataclass
class Look:
    """Everything a picture's appearance depends on except the digit's trajectory."""

    frame: tuple[int, int]  # width, height
    digit_height: float  # share of the frame's short side
    centre: tuple[float, float]  # digit centre, share of the frame's width and height
    pen: Pen
    writing_angle: float = 0.0  # degrees: the digit as written on the page
    paper: tuple[float, float, float] = PAPERS["white"]
    mottle: float = 0.01
    fibre: float = 0.006
    lines: str = "plain"  # plain, ruled, squared
    line_rgb: tuple[float, float, float] = (0.55, 0.70, 0.88)
    line_width: float = 1.5  # px
    line_density: float = 0.6
    line_spacing: float = 1.3  # in digit heights
    margin: bool = False
    desk: tuple[float, float, float] = DESKS[1]
    gradient: float = 0.1
    gradient_angle: float = 0.0
    shadow: float = 0.0  # depth: share of the light the shadow takes away
    shadow_softness: float = 0.03  # share of the frame's long side
    shadow_angle: float = 0.0
    shadow_offset: float = 1.0  # the shadow edge's distance from the digit, in digit heights
    tilt: float = 0.0  # degrees between the page and the sensor
    tilt_axis: float = 0.0  # degrees
    rotation: float = 0.0  # degrees, in the image plane
    coverage: float = 1.05  # the page's size over the least that fills the frame (< 1: desk)
    focal: float = 1.0  # focal length, in the frame's long sides
    defocus: float = 0.0  # gaussian sigma, px
    motion: float = 0.0  # px
    motion_angle: float = 0.0
    vignette: float = 0.1
    exposure: float = 0.85  # the paper's display level (0..1)
    white_balance: tuple[float, float, float] = (1.0, 1.0, 1.0)
    shot_noise: float = 0.0004
    read_noise: float = 0.003
    sharpen: bool = False
    jpeg_quality: int = 90
    subsampling: int = 2  # 4:2:0


@dataclass(frozen=True)
class Picture:
    condition: str
    index: int
    label: int
    source: str  # mnist (a traced t10k digit) or glyph (a template)
    data: bytes  # a JPEG file
    look: Look


# --------------------------------------------------------------------------- conditions


def _frame(rng: np.random.Generator) -> tuple[int, int]:
    long_side = int(rng.uniform(800, 1280))
    ratio = rng.choice([4 / 3, 16 / 9, 1.0], p=[0.7, 0.2, 0.1])
    short_side = int(long_side / ratio)
    return (long_side, short_side) if rng.random() < 0.65 else (short_side, long_side)


def _everyday_pen(rng: np.random.Generator) -> Pen:
    kind = str(rng.choice(["ballpoint", "gel", "fineliner"], p=[0.6, 0.25, 0.15]))
    ink = INKS[str(rng.choice(["black", "blue", "dark_blue"]))]
    if kind == "gel":
        ink = INKS[str(rng.choice(["gel_black", "blue", "dark_blue"]))]
    return Pen(
        kind,
        width=rng.uniform(0.045, 0.09),
        density=rng.uniform(0.8, 1.0),
        ink=ink,
        pressure=0.2 if kind == "ballpoint" else 0.05,
        taper=rng.uniform(0.4, 0.8),
        skips=rng.uniform(0, 0.3) if kind == "ballpoint" else 0.0,
    )


def _thin_pen(rng: np.random.Generator) -> Pen:
    return Pen(
        "ballpoint",
        width=rng.uniform(0.015, 0.035),
        density=rng.uniform(0.5, 0.85),
        ink=INKS[str(rng.choice(["black", "blue", "dark_blue"]))],
        pressure=0.3,
        taper=rng.uniform(0.2, 0.5),
        skips=rng.uniform(0.3, 0.8),
    )


def _pencil(rng: np.random.Generator) -> Pen:
    return Pen(
        "pencil",
        width=rng.uniform(0.035, 0.08),
        density=rng.uniform(0.3, 0.65),
        ink=INKS["graphite"],
        pressure=0.35,
        taper=rng.uniform(0.3, 0.6),
        grain=rng.uniform(0.4, 0.9),
    )


def _marker(rng: np.random.Generator) -> Pen:
    return Pen(
        "marker",
        width=rng.uniform(0.12, 0.25),
        density=rng.uniform(0.9, 1.0),
        ink=INKS[str(rng.choice(["marker_black", "marker_blue"]))],
        pressure=0.0,
        taper=1.0,
        bleed=rng.uniform(0.3, 1.0),
    )


def _place(look: Look, rng: np.random.Generator) -> Look:
    """A centre anywhere the digit fits whole in the frame."""
    w, h = look.frame
    extent = 0.62 * look.digit_height * min(w, h)
    cx = rng.uniform(extent / w, 1 - extent / w)
    cy = rng.uniform(extent / h, 1 - extent / h)
    return replace(look, centre=(float(cx), float(cy)))


def _everyday(rng: np.random.Generator, frame: tuple[int, int] | None) -> Look:
    look = Look(
        frame=frame or _frame(rng),
        digit_height=rng.uniform(0.10, 0.30),
        centre=(0.5, 0.5),
        pen=_everyday_pen(rng),
        writing_angle=rng.uniform(-6, 6),
        paper=PAPERS[str(rng.choice(["white", "cream", "bluish", "recycled"]))],
        mottle=rng.uniform(0.004, 0.02),
        fibre=rng.uniform(0.003, 0.012),
        desk=DESKS[int(rng.integers(len(DESKS)))],
        gradient=rng.uniform(0, 0.25),
        gradient_angle=rng.uniform(0, 360),
        tilt=rng.uniform(0, 12),
        tilt_axis=rng.uniform(0, 360),
        rotation=rng.uniform(-5, 5),
        coverage=rng.uniform(1.0, 1.12),
        focal=rng.uniform(0.8, 1.3),
        defocus=rng.uniform(0, 0.9),
        vignette=rng.uniform(0, 0.25),
        exposure=rng.uniform(0.72, 0.95),
        white_balance=(rng.uniform(0.92, 1.08), 1.0, rng.uniform(0.92, 1.08)),
        shot_noise=rng.uniform(0.0001, 0.0008),
        read_noise=rng.uniform(0.001, 0.004),
        sharpen=bool(rng.random() < 0.35),
        jpeg_quality=int(rng.integers(72, 96)),
        subsampling=int(rng.choice([0, 2], p=[0.2, 0.8])),
    )
    return look


def _ruled(look: Look, rng: np.random.Generator) -> Look:
    return replace(
        look,
        lines="ruled",
        line_rgb=(rng.uniform(0.45, 0.7), rng.uniform(0.6, 0.8), rng.uniform(0.8, 0.95)),
        line_width=rng.uniform(1.0, 2.5),
        line_density=rng.uniform(0.4, 0.9),
        line_spacing=1 / rng.uniform(0.55, 0.95),
        margin=bool(rng.random() < 0.7),
    )


def _squared(look: Look, rng: np.random.Generator) -> Look:
    return replace(
        look,
        lines="squared",
        line_rgb=(rng.uniform(0.5, 0.75), rng.uniform(0.6, 0.8), rng.uniform(0.7, 0.9)),
        line_width=rng.uniform(0.8, 1.8),
        line_density=rng.uniform(0.3, 0.8),
        line_spacing=1 / rng.uniform(1.0, 2.2),
        margin=False,
    )


def _shadow(look: Look, rng: np.random.Generator, near: bool) -> Look:
    return replace(
        look,
        shadow=rng.uniform(0.25, 0.65),
        shadow_softness=rng.uniform(0.01, 0.08),
        shadow_angle=rng.uniform(0, 360),
        shadow_offset=rng.uniform(-0.6, 0.6) if near else rng.uniform(-3, 3),
    )


def _blur(look: Look, rng: np.random.Generator) -> Look:
    scale = max(look.frame) / 1000
    if rng.random() < 0.5:
        return replace(look, defocus=rng.uniform(1.5, 4.0) * scale)
    return replace(look, motion=rng.uniform(6, 20) * scale, motion_angle=rng.uniform(0, 180))


def _low_light(look: Look, rng: np.random.Generator) -> Look:
    return replace(
        look,
        exposure=rng.uniform(0.4, 0.7),
        white_balance=(rng.uniform(1.1, 1.35), 1.0, rng.uniform(0.6, 0.85)),
        shot_noise=rng.uniform(0.003, 0.012),
        read_noise=rng.uniform(0.01, 0.025),
        vignette=rng.uniform(0.3, 0.55),
        gradient=rng.uniform(0.2, 0.6),
        defocus=look.defocus + rng.uniform(0, 0.8),
    )


def _phone(rng: np.random.Generator, frame: tuple[int, int] | None) -> Look:
    look = _everyday(rng, frame)
    pen_draw = rng.random()
    if pen_draw < 0.15:
        look = replace(look, pen=_thin_pen(rng))
    elif pen_draw < 0.3:
        look = replace(look, pen=_pencil(rng))
    elif pen_draw < 0.42:
        look = replace(look, pen=_marker(rng))
    elif pen_draw < 0.47:
        look = replace(look, pen=replace(look.pen, ink=INKS["red"]))
    paper = PAPERS[str(rng.choice(list(PAPERS)))]
    size = rng.choice(["small", "usual", "large"], p=[0.2, 0.65, 0.15])
    digit_height = {"small": (0.03, 0.08), "usual": (0.08, 0.3), "large": (0.3, 0.4)}[str(size)]
    look = replace(
        look,
        paper=paper,
        digit_height=rng.uniform(*digit_height),
        tilt=rng.uniform(0, 35),
        rotation=rng.uniform(-12, 12),
        coverage=rng.uniform(0.8, 1.15),
        jpeg_quality=int(rng.integers(40, 96)),
    )
    lines = rng.random()
    if lines < 0.4:
        look = _ruled(look, rng)
    elif lines < 0.55:
        look = _squared(look, rng)
    if rng.random() < 0.4:
        look = _shadow(look, rng, near=bool(rng.random() < 0.5))
    if rng.random() < 0.3:
        look = _blur(look, rng)
    if rng.random() < 0.15:
        look = _low_light(look, rng)
    return look


def draw_look(condition: str, rng: np.random.Generator, frame: tuple[int, int] | None) -> Look:
    """The settings of one picture of `condition` (a key of CONDITIONS)."""
    if condition not in CONDITIONS:
        raise ValueError(f"unknown condition {condition!r}: one of {', '.join(CONDITIONS)}")
    if condition == "phone":
        return _place(_phone(rng, frame), rng)
    look = _everyday(rng, frame)
    forced: dict[str, Callable[[Look], Look]] = {
        "clean": lambda lk: replace(
            lk,
            pen=Pen("gel", rng.uniform(0.07, 0.1), 1.0, INKS["gel_black"], 0.0, 1.0),
            paper=PAPERS["white"],
            mottle=0.003,
            fibre=0.002,
            digit_height=rng.uniform(0.15, 0.3),
            gradient=0.0,
            tilt=0.0,
            rotation=0.0,
            coverage=1.05,
            defocus=0.0,
            vignette=0.0,
            exposure=0.9,
            white_balance=(1.0, 1.0, 1.0),
            shot_noise=0.0001,
            read_noise=0.001,
            sharpen=False,
            jpeg_quality=95,
        ),
        "everyday": lambda lk: lk,
        "thin_pen": lambda lk: replace(lk, pen=_thin_pen(rng)),
        "pencil": lambda lk: replace(lk, pen=_pencil(rng)),
        "marker": lambda lk: replace(lk, pen=_marker(rng)),
        "ruled": lambda lk: _ruled(lk, rng),
        "squared": lambda lk: _squared(lk, rng),
        "shadow": lambda lk: _shadow(lk, rng, near=True),
        "blur": lambda lk: _blur(lk, rng),
        "small": lambda lk: replace(lk, digit_height=rng.uniform(0.03, 0.07)),
        "large": lambda lk: replace(lk, digit_height=rng.uniform(0.3, 0.4)),
        "tilted": lambda lk: replace(
            lk,
            tilt=rng.uniform(25, 45),
            rotation=rng.uniform(-20, 20),
            coverage=rng.uniform(0.85, 1.1),
        ),
        "page_edge": lambda lk: replace(lk, coverage=rng.uniform(0.7, 0.97)),
        "low_light": lambda lk: _low_light(lk, rng),
        "jpeg_low": lambda lk: replace(lk, jpeg_quality=int(rng.integers(10, 36))),
    }
    return _place(forced[condition](look), rng)


# --------------------------------------------------------------------------- geometry


def homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 3x3 projective map taking the four points src (4, 2) onto dst (4, 2)."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    h = np.linalg.solve(np.asarray(rows, dtype=np.float64), np.asarray(rhs, dtype=np.float64))
    return np.append(h, 1.0).reshape(3, 3)


def apply(h: np.ndarray, points: np.ndarray) -> np.ndarray:
    p = np.c_[points, np.ones(len(points))] @ h.T
    return p[:, :2] / p[:, 2:3]


def camera_view(look: Look, page: tuple[int, int]) -> np.ndarray:
    """The homography page pixels -> frame pixels: the page tilted in 3-D by `tilt` about an
    axis in its plane, seen through a pinhole, rotated in the image and scaled to fill the
    frame `coverage` times."""
    wp, hp = page
    w, h = look.frame
    corners = np.array([[0, 0], [wp, 0], [wp, hp], [0, hp]], dtype=np.float64)
    xyz = np.c_[corners - [wp / 2, hp / 2], np.zeros(4)]
    axis_angle, tilt = np.radians(look.tilt_axis), np.radians(look.tilt)
    axis = np.array([np.cos(axis_angle), np.sin(axis_angle), 0.0])
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    turn = np.eye(3) + np.sin(tilt) * k + (1 - np.cos(tilt)) * (k @ k)  # Rodrigues
    xyz = xyz @ turn.T
    distance = look.focal * max(wp, hp)
    seen = xyz[:, :2] * (distance / (distance + xyz[:, 2:3]))
    spin = np.radians(look.rotation)
    rot = np.array([[np.cos(spin), -np.sin(spin)], [np.sin(spin), np.cos(spin)]])
    seen = seen @ rot.T
    centre = (seen.max(axis=0) + seen.min(axis=0)) / 2
    quad = seen - centre
    scale = look.coverage * _filling_scale(quad, w, h)
    return homography(corners, quad * scale + np.array([w / 2, h / 2]))


def _filling_scale(quad: np.ndarray, w: int, h: int) -> float:
    """The least scale at which the (convex, centred) quad covers the whole w x h frame, so
    that coverage 1 means paper edge to edge and under 1 shows the page's edge and the desk."""
    frame = np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [w / 2, h / 2], [-w / 2, h / 2]])
    edges = np.roll(quad, -1, axis=0) - quad
    diagonal = quad[2] - quad[0]
    sign = np.sign(edges[0, 0] * diagonal[1] - edges[0, 1] * diagonal[0])  # the quad's turn

    def covers(scale: float) -> bool:
        q = quad * scale
        e = edges * scale
        rel = frame[:, None, :] - q[None, :, :]
        cross = e[None, :, 0] * rel[..., 1] - e[None, :, 1] * rel[..., 0]
        return bool((cross * sign >= 0).all())

    low, high = 0.05, 50.0
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (low, mid) if covers(mid) else (mid, high)
    return high


# --------------------------------------------------------------------------- textures


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Zero-mean, unit-ish noise that varies over about `cell` pixels (float32)."""
    small = (max(2, int(shape[0] / cell) + 2), max(2, int(shape[1] / cell) + 2))
    coarse = rng.standard_normal(small, dtype=np.float32)
    img = Image.fromarray(coarse, "F").resize((shape[1], shape[0]), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.float32)


def _line_profile(distance: np.ndarray, width: float) -> np.ndarray:
    """Coverage of a pixel at `distance` from a line of `width` px (a box-filtered edge;
    under a pixel wide the line is fainter, not thinner, as a camera sees it)."""
    if width >= 1:
        return np.clip(width / 2 + 0.5 - distance, 0, 1)
    return width * np.clip(1 - distance, 0, 1)


def draw_lines(
    look: Look, shape: tuple[int, int], digit_px: float, baseline: float, rng: np.random.Generator
) -> np.ndarray:
    """Coverage (h, w) of the ruled or squared lines and margin, in page pixels."""
    h, w = shape
    out = np.zeros(shape, dtype=np.float32)
    if look.lines == "plain":
        return out
    spacing = max(6.0, look.line_spacing * digit_px)
    ys = np.arange(h, dtype=np.float32)
    xs = np.arange(w, dtype=np.float32)
    # the digit sits on a line (its baseline), give or take the writer's aim
    phase = (baseline + rng.uniform(-0.08, 0.08) * digit_px) % spacing
    dy = np.abs((ys - phase + spacing / 2) % spacing - spacing / 2)
    rows = _line_profile(dy, look.line_width)
    out = np.maximum(out, rows[:, None] * look.line_density)
    if look.lines == "squared":
        dx = np.abs((xs - rng.uniform(0, spacing) + spacing / 2) % spacing - spacing / 2)
        cols = _line_profile(dx, look.line_width)
        out = np.maximum(out, cols[None, :] * look.line_density)
    # printing is not perfectly even
    out *= 1 + 0.15 * smooth_noise(rng, shape, 40.0)
    return np.clip(out, 0, 1)


# --------------------------------------------------------------------------- the pen


def _along(s: np.ndarray, rng: np.random.Generator, freqs: tuple[float, float]) -> np.ndarray:
    """A smooth random function of arc length s, about -1..1."""
    out = np.zeros_like(s)
    for _ in range(3):
        f = rng.uniform(*freqs)
        out += np.sin(2 * np.pi * f * s + rng.uniform(0, 2 * np.pi))
    return out / 2


def _stamp(layer: np.ndarray, xy: np.ndarray, radius: np.ndarray, value: np.ndarray) -> None:
    """Discs of `radius` and ink `value` at `xy` (px), box-filtered, kept by maximum."""
    h, w = layer.shape
    flat = layer.reshape(-1)
    for start in range(0, len(xy), 512):
        p, r, v = xy[start : start + 512], radius[start : start + 512], value[start : start + 512]
        reach = int(np.ceil(r.max())) + 2
        offsets = np.arange(-reach, reach + 1)
        ox = np.floor(p[:, 0]).astype(np.int64)
        oy = np.floor(p[:, 1]).astype(np.int64)
        gx = ox[:, None, None] + offsets[None, None, :]
        gy = oy[:, None, None] + offsets[None, :, None]
        d = np.hypot(gx + 0.5 - p[:, 0, None, None], gy + 0.5 - p[:, 1, None, None])
        rr = r[:, None, None]
        wide = np.clip(rr + 0.5 - d, 0, 1)
        thin = 2 * rr * np.clip(1 - d, 0, 1)
        cover = np.where(rr >= 0.5, wide, thin) * v[:, None, None]
        gx, gy = np.broadcast_arrays(gx, gy)
        inside = (gx >= 0) & (gx < w) & (gy >= 0) & (gy < h) & (cover > 0)
        np.maximum.at(flat, (gy * w + gx)[inside], cover[inside].astype(np.float32))


def draw_digit(
    strokes: list[Stroke],
    look: Look,
    to_page: Callable[[np.ndarray], np.ndarray],
    digit_px: float,
    shape: tuple[int, int],
    rng: np.random.Generator,
) -> np.ndarray:
    """Ink coverage (h, w) of the digit, in page pixels: the pen model along each stroke."""
    pen = look.pen
    layer = np.zeros(shape, dtype=np.float32)
    full = max(0.3, pen.width * digit_px)  # px
    for stroke in strokes:
        s = np.concatenate(
            [[0.0], np.cumsum(np.linalg.norm(np.diff(stroke.points, axis=0), axis=1))]
        )
        pressure = 1 + pen.pressure * _along(s, rng, (0.5, 3.0))
        ramp = rng.uniform(0.04, 0.12)
        taper = np.ones_like(s)
        if stroke.free_start:
            taper = np.minimum(taper, pen.taper + (1 - pen.taper) * np.clip(s / ramp, 0, 1))
        if stroke.free_end:
            tail = (s[-1] - s) / ramp
            taper = np.minimum(taper, pen.taper + (1 - pen.taper) * np.clip(tail, 0, 1))
        if pen.kind == "pencil":
            width = full * (0.8 + 0.2 * pressure) * taper
            ink = pen.density * np.clip(pressure, 0.3, 1.5) * taper
        elif pen.kind == "ballpoint":
            width = full * (0.85 + 0.15 * pressure) * (0.6 + 0.4 * taper)
            ink = pen.density * np.clip(pressure, 0.5, 1.2) * np.sqrt(taper)
        else:  # gel, fineliner, marker: even flow
            width = full * np.ones_like(s) * (0.7 + 0.3 * taper)
            ink = pen.density * np.ones_like(s)
        if pen.skips > 0:  # a ballpoint that skips: short pale gaps along the stroke
            gaps = _along(s, rng, (8.0, 25.0))
            pale = np.clip((gaps - (1.2 - 0.6 * pen.skips)) / 0.25, 0, 1)
            ink = ink * (1 - 0.85 * pale)
        page = to_page(stroke.points)
        # resample in page pixels, finely enough for the narrowest pen
        step = np.linalg.norm(np.diff(page, axis=0), axis=1)
        t = np.concatenate([[0.0], np.cumsum(step)])
        spacing = max(0.35, 0.25 * float(width.min()))
        n = max(2, int(t[-1] / spacing) + 1)
        u = np.linspace(0, t[-1], n)
        xy = np.stack([np.interp(u, t, page[:, 0]), np.interp(u, t, page[:, 1])], axis=1)
        _stamp(layer, xy, np.interp(u, t, width) / 2, np.clip(np.interp(u, t, ink), 0, 1))
    if pen.grain > 0:  # graphite stays on the tooth of the paper, not in its valleys
        tooth = ndimage.gaussian_filter(rng.random(shape, dtype=np.float32), 0.7)
        tooth = (tooth - tooth.mean()) / (tooth.std() + 1e-6)
        catch = np.clip(0.5 + 0.6 * tooth, 0, 1)
        layer *= (1 - pen.grain) + pen.grain * catch
    if pen.bleed > 0:  # marker ink wicks along fibres: wider, ragged, soft edges
        sigma = 0.06 * full * pen.bleed + 0.5
        soaked = ndimage.gaussian_filter(layer, sigma)
        fibres = ndimage.gaussian_filter(rng.random(shape, dtype=np.float32), 0.8) - 0.5
        layer = np.clip((soaked + pen.bleed * 0.8 * fibres - 0.22) / 0.45, 0, 1) * pen.density
    return layer


# --------------------------------------------------------------------------- rendering


def render(look: Look, strokes: list[Stroke], rng: np.random.Generator) -> bytes:
    """The JPEG file of one picture."""
    fw, fh = look.frame
    page = (fw, fh)
    to_frame = camera_view(look, page)
    magnified = _magnification(to_frame, page)
    if magnified > 1.1:  # a steep view enlarges the near page: draw it finer, not blurred
        page = (int(fw * min(magnified, 2.0)), int(fh * min(magnified, 2.0)))
        to_frame = camera_view(look, page)
    w, h = page
    to_page_h = np.linalg.inv(to_frame)
    # where the digit goes: its centre in the frame, its size from the local scale there
    centre_p, digit_px = _digit_on_page(look, to_frame, to_page_h, page)
    angle = np.radians(look.writing_angle)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])

    def to_page(points: np.ndarray) -> np.ndarray:
        return np.asarray(centre_p + digit_px * (points @ rot.T))

    # 1. the page
    shape = (h, w)
    texture = (
        1
        + look.mottle * smooth_noise(rng, shape, rng.uniform(40, 160))
        + look.fibre * rng.standard_normal(shape, dtype=np.float32)
    )
    lines = draw_lines(look, shape, digit_px, centre_p[1] + digit_px / 2, rng)
    margin = np.zeros((1, w), dtype=np.float32)
    if look.margin:
        mx = rng.uniform(0.08, 0.16) * w
        if abs(mx - centre_p[0]) < 0.7 * digit_px:  # the digit is written right of the margin
            mx = centre_p[0] - 0.7 * digit_px
        column = np.abs(np.arange(w, dtype=np.float32) - np.float32(mx))
        margin = (0.7 * _line_profile(column, 1.8)[None, :]).astype(np.float32)
    # the digit, drawn in a window around it
    pad = int(look.pen.width * digit_px * 2 + 8)
    half = int(0.8 * digit_px) + pad
    x0, y0 = int(centre_p[0]) - half, int(centre_p[1]) - half
    x1, y1 = x0 + 2 * half, y0 + 2 * half
    window = draw_digit(
        strokes, look, lambda p: to_page(p) - [x0, y0], digit_px, (y1 - y0, x1 - x0), rng
    )
    cx0, cx1 = min(max(x0, 0), w), min(max(x1, 0), w)
    cy0, cy1 = min(max(y0, 0), h), min(max(y1, 0), h)
    ink = np.zeros(shape, dtype=np.float32)
    ink[cy0:cy1, cx0:cx1] = window[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
    # 2. the light on the page, folded into the paper's texture (one pass per channel)
    lit = texture * _illumination(look, shape, centre_p, digit_px)
    margin_rgb = (0.85, 0.35, 0.4)
    inverse = to_page_h / to_page_h[2, 2]
    coeffs = tuple(float(v) for v in inverse.reshape(-1)[:8])
    frame = np.empty((3, fh, fw), dtype=np.float32)
    for c in range(3):
        scene = lit * float(look.paper[c])
        if look.lines != "plain":
            scene *= 1 - lines * float(1 - look.line_rgb[c])
        if look.margin:
            scene *= 1 - margin * float(1 - margin_rgb[c])
        region = scene[cy0:cy1, cx0:cx1]
        region *= 1 - ink[cy0:cy1, cx0:cx1] * float(1 - look.pen.ink[c])
        # 3. the camera's view of the page
        warped = Image.fromarray(scene, "F").transform(
            (fw, fh),
            Image.Transform.PERSPECTIVE,
            coeffs,
            Image.Resampling.BILINEAR,
            fillcolor=float(look.desk[c]),
        )
        frame[c] = np.asarray(warped, dtype=np.float32)
    return _camera(frame, look, rng)


def _magnification(to_frame: np.ndarray, page: tuple[int, int]) -> float:
    """Frame pixels per page pixel (linear), at the page's centre."""
    c = np.array([page[0] / 2, page[1] / 2])
    p = apply(to_frame, np.array([c, c + np.array([1.0, 0.0]), c + np.array([0.0, 1.0])]))
    return float(np.sqrt(abs(np.linalg.det(np.stack([p[1] - p[0], p[2] - p[0]])))))


def _digit_on_page(
    look: Look, to_frame: np.ndarray, to_page: np.ndarray, page: tuple[int, int]
) -> tuple[np.ndarray, float]:
    """The digit's centre on the page and its height in page pixels, so that it appears at
    `look.centre` with `look.digit_height` in the frame; moved toward the frame's centre when
    that spot shows the desk, not the page (a strongly tilted page)."""
    w, h = look.frame
    wanted = np.array([look.centre[0] * w, look.centre[1] * h])
    for pull in np.linspace(0, 1, 11):
        spot = wanted + pull * (np.array([w / 2, h / 2]) - wanted)
        centre = apply(to_page, spot[None])[0]
        up = apply(to_frame, np.array([centre, centre + np.array([0.0, 1.0])]))
        digit_px = look.digit_height * min(w, h) / float(np.linalg.norm(up[1] - up[0]))
        m = 0.6 * digit_px
        if m <= centre[0] <= page[0] - m and m <= centre[1] <= page[1] - m:
            break
    return centre, digit_px


def _illumination(
    look: Look, shape: tuple[int, int], centre: np.ndarray, digit_px: float
) -> np.ndarray:
    """Light falling on the page (h, w): a gradient and a soft shadow, computed coarse (light
    varies slowly) and enlarged."""
    h, w = shape
    step = 4
    ys, xs = np.mgrid[0:h:step, 0:w:step].astype(np.float32)
    a = np.radians(look.gradient_angle)
    along = ((xs - w / 2) * np.cos(a) + (ys - h / 2) * np.sin(a)) / max(w, h)
    light = 1 + look.gradient * along
    if look.shadow > 0:
        b = np.radians(look.shadow_angle)
        normal = np.array([np.cos(b), np.sin(b)])
        edge = centre + normal * look.shadow_offset * digit_px
        signed = (xs - edge[0]) * normal[0] + (ys - edge[1]) * normal[1]
        soft = look.shadow_softness * max(w, h)
        light = light * (1 - look.shadow / (1 + np.exp(-signed / soft)))
    img = Image.fromarray(light.astype(np.float32), "F").resize((w, h), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.float32)


def _camera(frame: np.ndarray, look: Look, rng: np.random.Generator) -> bytes:
    """Linear light (3, h, w) -> the JPEG a phone would save."""
    _, h, w = frame.shape
    if look.defocus > 0.05:
        frame = ndimage.gaussian_filter(frame, (0, look.defocus, look.defocus), truncate=3.0)
    if look.motion >= 1:
        frame = _motion_blur(frame, look.motion, look.motion_angle)
    # auto exposure: the bright part of the picture (the paper) lands at `exposure` on screen
    level = float(np.percentile(frame[:, ::8, ::8].mean(axis=0), 75))
    gain = np.full((h, w), look.exposure**2.2 / max(level, 1e-4), dtype=np.float32)
    if look.vignette > 0:
        ys, xs = np.ogrid[0:h, 0:w]
        r2 = ((xs - w / 2) ** 2 + (ys - h / 2) ** 2) / ((w / 2) ** 2 + (h / 2) ** 2)
        gain *= (1 - look.vignette * r2).astype(np.float32)
    lut = ((np.linspace(0, 1, 4096) ** (1 / 2.2)) * 255 + 0.5).astype(np.uint8)  # sRGB-ish
    out = np.empty((h, w, 3), dtype=np.uint8)
    for c in range(3):
        x = frame[c] * gain
        x *= float(look.white_balance[c])
        np.clip(x, 0, 1, out=x)
        noise = rng.standard_normal((h, w), dtype=np.float32)
        noise *= np.sqrt(x * float(look.shot_noise) + float(look.read_noise) ** 2)
        x += noise
        np.clip(x, 0, 1, out=x)
        out[..., c] = lut[(x * 4095).astype(np.int32)]
    img = Image.fromarray(out, "RGB")
    if look.sharpen:
        img = img.filter(ImageFilter.UnsharpMask(radius=1.5, percent=80, threshold=2))
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=look.jpeg_quality, subsampling=look.subsampling)
    return buffer.getvalue()


def _motion_blur(frame: np.ndarray, length: float, angle: float) -> np.ndarray:
    """The average of the frame shifted along a line of `length` px (camera shake)."""
    n = max(2, round(length))
    a = np.radians(angle)
    offsets = [
        (round(t * np.sin(a)), round(t * np.cos(a)))
        for t in np.linspace(-length / 2, length / 2, n)
    ]
    reach = int(np.ceil(length / 2)) + 1
    padded = np.pad(frame, ((0, 0), (reach, reach), (reach, reach)), mode="edge")
    _, h, w = frame.shape
    out = np.zeros_like(frame)
    for dy, dx in offsets:
        out += padded[:, reach + dy : reach + dy + h, reach + dx : reach + dx + w]
    return out / len(offsets)


# --------------------------------------------------------------------------- digits


class DigitSource:
    """Where a picture's digit comes from: half MNIST t10k digits traced into strokes (when
    the MNIST files are there), half glyph templates."""

    def __init__(self, mnist_images: np.ndarray | None, mnist_labels: np.ndarray | None):
        self.images = mnist_images
        self.labels = mnist_labels

    @classmethod
    def from_data_dir(cls, root: Path | None) -> DigitSource:
        """MNIST t10k from `root`/MNIST/raw (training/data.py's reader); glyphs only when
        root is None."""
        if root is None:
            return cls(None, None)
        from training import data as D  # the IDX reader only; nothing of the photo renderer

        test = D.load_mnist_split(root, train=False)
        return cls(test.images, test.labels)

    def draw(self, rng: np.random.Generator) -> tuple[int, list[Stroke], str]:
        if self.images is not None and self.labels is not None and rng.random() < 0.5:
            index = int(rng.integers(len(self.images)))
            return int(self.labels[index]), mnist_strokes(self.images[index]), "mnist"
        digit = int(rng.integers(10))
        return digit, glyph_strokes(digit, rng), "glyph"


def picture_rng(seed: int, condition: str, index: int) -> np.random.Generator:
    """The generator of one picture: the same (seed, condition, index) always gives the same
    picture, whatever else is rendered and in whatever order."""
    return np.random.default_rng([seed, zlib.crc32(condition.encode()), index])


def render_picture(
    condition: str, seed: int, index: int, digits: DigitSource, frame: tuple[int, int] | None = None
) -> Picture:
    """Picture `index` of `condition` for `seed` (frame: width, height; else drawn)."""
    rng = picture_rng(seed, condition, index)
    label, strokes, source = digits.draw(rng)
    look = draw_look(condition, rng, frame)
    return Picture(condition, index, label, source, render(look, strokes, rng), look)
