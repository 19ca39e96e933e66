"""Digits as pen trajectories, for a renderer that draws them again with its own pen.

Two independent sources, so that no single notion of "a digit" decides the result:

- `mnist_strokes`: an MNIST test digit (t10k: never trained on) thinned to its skeleton
  (Zhang-Suen) and traced into ordered paths. Only the writer's trajectory survives; the stroke
  width, darkness and edges of the scan are dropped and re-drawn by the pen model.
- `glyph_strokes`: parametric templates for 0-9, written here from how people draw digits
  (several variants each: open or closed 4, flagged 1, crossed 7, looped 2 ...), perturbed by a
  random slant, aspect, rotation and a smooth random warp.

A digit is a list of `Stroke`s in glyph units: y grows downwards, the digit is 1 tall and
centred on the origin. Each end of a stroke says whether the pen was lifted there (a free end,
where a pen tapers) or the path met another (a junction, where it must not thin out).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# MNIST digits are thinned at 3x their size: at 28x28 a skeleton is too coarse to trace.
TRACE_ZOOM = 3
# Side branches of the skeleton shorter than this (glyph units) are thinning artefacts.
SPUR_LENGTH = 0.12
# Paths are resampled to this spacing (glyph units) before the pen draws them.
SPACING = 0.01


@dataclass(frozen=True)
class Stroke:
    """One pen-down path: points (n, 2) as (x, y) in glyph units, and whether each end is
    free (the pen touched down or lifted there) rather than joined to another path."""

    points: np.ndarray
    free_start: bool = True
    free_end: bool = True
    closed: bool = False

    @property
    def length(self) -> float:
        return float(np.linalg.norm(np.diff(self.points, axis=0), axis=1).sum())


# --------------------------------------------------------------------------- MNIST skeletons


def thin(binary: np.ndarray) -> np.ndarray:
    """Zhang-Suen thinning (1984), vectorised: a 1-pixel-wide skeleton that keeps the digit's
    topology (loops stay loops, strokes stay connected)."""
    img = np.pad(binary.astype(np.uint8), 1)
    while True:
        changed = False
        for step in (0, 1):
            p2, p3, p4 = img[:-2, 1:-1], img[:-2, 2:], img[1:-1, 2:]
            p5, p6, p7 = img[2:, 2:], img[2:, 1:-1], img[2:, :-2]
            p8, p9 = img[1:-1, :-2], img[:-2, :-2]
            ring = [p2, p3, p4, p5, p6, p7, p8, p9, p2]
            count = sum(ring[:8])
            transitions = sum((ring[k] == 0) & (ring[k + 1] == 1) for k in range(8))
            if step == 0:
                keep_shape = (p2 * p4 * p6 == 0) & (p4 * p6 * p8 == 0)
            else:
                keep_shape = (p2 * p4 * p8 == 0) & (p2 * p6 * p8 == 0)
            centre = img[1:-1, 1:-1]
            remove = (centre == 1) & (count >= 2) & (count <= 6) & (transitions == 1) & keep_shape
            if remove.any():
                centre[remove] = 0
                changed = True
        if not changed:
            return img[1:-1, 1:-1].astype(bool)


Pixel = tuple[int, int]
_STEPS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]


def _neighbours(pixels: set[Pixel]) -> dict[Pixel, list[Pixel]]:
    """8-neighbours on the skeleton, without the diagonal that short-cuts an L corner (so a
    corner pixel is not mistaken for a junction)."""
    graph: dict[Pixel, list[Pixel]] = {}
    for r, c in pixels:
        found = []
        for dr, dc in _STEPS:
            q = (r + dr, c + dc)
            if q not in pixels:
                continue
            if dr and dc and ((r + dr, c) in pixels or (r, c + dc) in pixels):
                continue
            found.append(q)
        graph[(r, c)] = found
    return graph


def trace(skeleton: np.ndarray) -> list[tuple[list[Pixel], bool, bool, bool]]:
    """A skeleton -> its paths between ends and junctions: (pixels, free start, free end,
    closed). Every edge of the pixel graph is walked once; loops with no end are walked last."""
    pixels = {(int(r), int(c)) for r, c in zip(*np.nonzero(skeleton), strict=True)}
    graph = _neighbours(pixels)
    seen: set[frozenset[Pixel]] = set()
    paths = []

    def walk(start: Pixel, first: Pixel) -> list[Pixel]:
        path = [start, first]
        seen.add(frozenset((start, first)))
        while len(graph[path[-1]]) == 2:
            onward = [q for q in graph[path[-1]] if frozenset((path[-1], q)) not in seen]
            if not onward:
                break
            seen.add(frozenset((path[-1], onward[0])))
            path.append(onward[0])
        return path

    nodes = sorted(p for p, q in graph.items() if len(q) != 2)
    for node in nodes:
        for first in graph[node]:
            if frozenset((node, first)) not in seen:
                path = walk(node, first)
                paths.append(
                    (path, len(graph[path[0]]) == 1, len(graph[path[-1]]) == 1, path[0] == path[-1])
                )
    for node in sorted(graph):  # what is left is loops without an end (an O, an 8's bowl)
        for first in graph[node]:
            if frozenset((node, first)) not in seen:
                path = walk(node, first)
                paths.append((path, False, False, path[-1] == path[0]))
    return paths


def _smooth(points: np.ndarray, closed: bool, passes: int = 2) -> np.ndarray:
    """A [1 2 1] moving average, ends held (open) or wrapped (closed): pixel staircase out,
    shape kept."""
    out = points.astype(np.float64)
    for _ in range(passes):
        if closed:
            out = 0.25 * np.roll(out, 1, axis=0) + 0.5 * out + 0.25 * np.roll(out, -1, axis=0)
        elif len(out) > 2:
            inner = 0.25 * out[:-2] + 0.5 * out[1:-1] + 0.25 * out[2:]
            out = np.concatenate([out[:1], inner, out[-1:]])
    return out


def mnist_strokes(image: np.ndarray) -> list[Stroke]:
    """An MNIST digit (28x28 uint8, white on black) -> its traced pen paths in glyph units."""
    big = ndimage.zoom(image.astype(np.float32), TRACE_ZOOM, order=1)
    binary = ndimage.binary_closing(big > 100, iterations=1)
    paths = trace(thin(binary))
    if not paths:
        raise ValueError("the digit has no ink to trace")
    rows = np.concatenate([np.asarray(p[0], dtype=np.float64) for p in paths])
    top, bottom = rows[:, 0].min(), rows[:, 0].max()
    left, right = rows[:, 1].min(), rows[:, 1].max()
    height = max(bottom - top, 1.0)
    centre = np.array([(left + right) / 2, (top + bottom) / 2])
    strokes = []
    for path, free_start, free_end, _ in paths:
        xy = np.asarray(path, dtype=np.float64)[:, ::-1]
        closed = len(path) > 2 and path[0] == path[-1]
        if closed:  # smoothed as a ring, then closed again
            ring = _smooth(xy[:-1], closed=True)
            xy = np.concatenate([ring, ring[:1]])
        else:
            xy = _smooth(xy, closed=False)
        stroke = Stroke((xy - centre) / height, free_start, free_end, closed)
        spur = (free_start or free_end) and not (free_start and free_end)
        if spur and stroke.length < SPUR_LENGTH:
            continue  # a thinning spur off a junction
        if stroke.length < 0.03:
            continue
        strokes.append(stroke)
    if not strokes:
        strokes = [Stroke(np.array([[0.0, -0.5], [0.0, 0.5]]))]
    return [resample(s) for s in _unit_height(strokes)]


def _unit_height(strokes: list[Stroke]) -> list[Stroke]:
    """The strokes moved and scaled so that together they are 1 tall, centred on the origin."""
    points = np.concatenate([s.points for s in strokes])
    low, high = points.min(axis=0), points.max(axis=0)
    centre, height = (low + high) / 2, max(float(high[1] - low[1]), 1e-6)
    return [
        Stroke((s.points - centre) / height, s.free_start, s.free_end, s.closed) for s in strokes
    ]


# --------------------------------------------------------------------------- glyph templates


def _arc(cx: float, cy: float, rx: float, ry: float, a0: float, a1: float) -> np.ndarray:
    """Points on an ellipse from angle a0 to a1 (degrees; 0 right, 90 down, y down)."""
    n = max(8, int(abs(a1 - a0) / 4))
    a = np.radians(np.linspace(a0, a1, n))
    return np.stack([cx + rx * np.cos(a), cy + ry * np.sin(a)], axis=1)


def _line(*corners: tuple[float, float]) -> np.ndarray:
    """A polyline through the corners, densely sampled."""
    pts = [np.asarray(corners[0], dtype=np.float64)[None]]
    for a, b in itertools.pairwise(corners):
        t = np.linspace(0, 1, 24)[1:, None]
        pts.append(np.asarray(a) + t * (np.asarray(b) - np.asarray(a)))
    return np.concatenate(pts)


def _join(*parts: np.ndarray) -> np.ndarray:
    return np.concatenate(parts)


def _template(digit: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Pen paths of one variant of `digit`, in a box about 0.6 wide and 1 tall."""
    u = rng.uniform
    if digit == 0:
        start = u(-100, -60)
        overshoot = u(-20, 30)  # a gap where the pen stopped short, or an overlap
        return [_arc(u(-0.02, 0.02), 0, u(0.24, 0.32), 0.5, start, start - 360 - overshoot)]
    if digit == 1:
        top, bottom = (u(0.0, 0.1), -0.5), (u(-0.06, 0.02), 0.5)
        paths = [_line(top, bottom)]
        if rng.random() < 0.5:  # the flag: an up-stroke into the top
            paths = [_line((top[0] - u(0.12, 0.22), -0.5 + u(0.12, 0.25)), top, bottom)]
        if rng.random() < 0.2:
            paths.append(_line((bottom[0] - 0.16, 0.5), (bottom[0] + 0.16, 0.5)))
        return paths
    if digit == 2:
        hook = _arc(0, -0.24, u(0.24, 0.3), 0.26, u(-190, -160), u(10, 40))
        if rng.random() < 0.25:  # a looped foot
            foot = _join(
                _line(tuple(hook[-1]), (-0.22, 0.4)), _arc(-0.16, 0.42, 0.08, 0.08, 180, 450)
            )
            return [_join(hook, foot, _line((-0.16, 0.5), (0.3, 0.48)))]
        return [_join(hook, _line(tuple(hook[-1]), (-0.28, 0.49), (u(0.24, 0.34), 0.5)))]
    if digit == 3:
        r_top, r_bottom = u(0.2, 0.26), u(0.25, 0.3)
        middle = u(-0.04, 0.04)
        upper = _arc(0, middle - 0.25, r_top, 0.25 + middle, u(-170, -150), 90)
        lower = _arc(0, middle + 0.25, r_bottom, 0.25 - middle, -90, u(150, 170))
        return [_join(upper, lower)]
    if digit == 4:
        bar = u(0.05, 0.2)
        stem = u(0.08, 0.2)
        if rng.random() < 0.5:  # open top: down, across; then the stem
            return [
                _line((-0.22, -0.5), (-0.28, bar), (0.32, bar)),
                _line((stem, -0.42), (stem, 0.5)),
            ]
        return [
            _line((stem, -0.5), (-0.3, bar), (0.32, bar)),
            _line((stem, -0.5), (stem, 0.5)),
        ]
    if digit == 5:
        corner = (-0.2, u(-0.12, -0.02))
        bowl = _arc(0, 0.2, u(0.24, 0.3), 0.3, -150, u(140, 160))
        body = _join(_line((-0.18, -0.5), corner), bowl)
        return [body, _line((-0.18, -0.5), (u(0.22, 0.32), -0.5))]
    if digit == 6:
        r = u(0.24, 0.3)
        descent = _line((u(0.12, 0.24), -0.5), (-0.08, -0.28), (-0.24, 0.0), (-r, 0.22))
        return [_join(descent, _arc(0, 0.22, r, 0.28, 180, 180 + u(300, 350)))]
    if digit == 7:
        paths = [_line((-0.3, -0.5), (0.3, -0.5), (u(-0.12, 0.05), 0.5))]
        if rng.random() < 0.3:
            paths.append(_line((-0.12, 0.0), (0.22, 0.0)))
        return paths
    if digit == 8:
        if rng.random() < 0.7:  # one S-shaped path, the usual way
            return [
                _join(
                    _arc(0, -0.26, u(0.18, 0.24), 0.24, -30, -270),
                    _arc(0, 0.25, u(0.24, 0.3), 0.25, -90, 270),
                    _arc(0, -0.26, 0.21, 0.24, 90, -25),
                )
            ]
        return [_arc(0, -0.26, 0.2, 0.24, -90, 270), _arc(0, 0.25, 0.27, 0.25, -90, 270)]
    # 9: a bowl, then the tail down its right side
    r = u(0.22, 0.28)
    bowl = _arc(0, -0.24, r, 0.26, 0, -360 - u(0, 20))
    tail_end = (u(0.05, r), 0.5)
    return [_join(bowl, _line((r, -0.22), tail_end))]


def _perturb(paths: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """Slant, aspect, rotation and a smooth random warp: one writer's hand."""
    slant = rng.uniform(-0.35, 0.1)  # negative leans right (x grows as y goes up)
    aspect = rng.uniform(0.75, 1.2)
    angle = np.radians(rng.uniform(-8, 8))
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    waves = rng.normal(0, 1, (3, 2, 2))
    phases = rng.uniform(0, 2 * np.pi, (3, 2))
    amp = rng.uniform(0.01, 0.035)
    out = []
    for p in paths:
        q = p.copy()
        for k in range(3):
            q += amp / (k + 1) * np.sin(p @ waves[k] * (k + 1) * 2 + phases[k])
        q[:, 0] = q[:, 0] * aspect + slant * q[:, 1]
        out.append(q @ rot.T)
    return out


def glyph_strokes(digit: int, rng: np.random.Generator) -> list[Stroke]:
    """A randomly perturbed template of `digit`, 1 tall and centred."""
    paths = _perturb(_template(digit, rng), rng)
    allpts = np.concatenate(paths)
    low, high = allpts.min(axis=0), allpts.max(axis=0)
    centre, height = (low + high) / 2, max(high[1] - low[1], 1e-6)
    strokes = []
    for p in paths:
        xy = (p - centre) / height
        closed = bool(np.linalg.norm(xy[0] - xy[-1]) < 0.02)
        strokes.append(resample(Stroke(_smooth(xy, closed, passes=1), closed=closed)))
    return strokes


def resample(stroke: Stroke, spacing: float = SPACING) -> Stroke:
    """Evenly spaced points along the stroke (the pen model samples width and ink by arc
    length)."""
    p = stroke.points
    seg = np.linalg.norm(np.diff(p, axis=0), axis=1)
    keep = np.concatenate([[True], seg > 1e-9])
    p = p[keep]
    if len(p) < 2:
        p = np.concatenate([p, p + np.array([0.0, 1e-3])])
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(p, axis=0), axis=1))])
    n = max(2, int(np.ceil(s[-1] / spacing)) + 1)
    t = np.linspace(0, s[-1], n)
    xy = np.stack([np.interp(t, s, p[:, 0]), np.interp(t, s, p[:, 1])], axis=1)
    return Stroke(xy, stroke.free_start, stroke.free_end, stroke.closed)
