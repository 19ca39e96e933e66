"""The few scipy.ndimage operations that reading a photo needs (service/imaging/photo.py), in
numpy: the serving image leaves scipy out (some 140 MB), photo.py being its only user there.

Each function keeps scipy.ndimage's name, signature and semantics for the arguments photo.py
passes (boundary modes, the origin of even-sized windows, output dtypes, label numbering), so
that a picture reads exactly as it did with scipy: tests/test_morphology.py checks each one
against scipy, bit for bit, and replays photo.py's own calls through both. What scipy offers
beyond that (origins, footprints, other structures, sampling, n-dimensional labelling) is
refused, not approximated. NaN is not handled as scipy handles it (pictures have none).

Pictures are analysed at most 256 pixels a side. Every function is a bounded number of
whole-array numpy operations (log2 of a window's length, a few merge rounds, one step per
unit of the largest distance), never a Python loop over pixels; reading a photo takes about
as long as with scipy.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Mode = Literal["reflect", "nearest", "constant"]

_SQUARE = np.ones((3, 3), dtype=bool)  # 8-connectivity
_CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)  # 4-connectivity: scipy's default


# --------------------------------------------------------------------------- running filters


def _sizes(size: int | tuple[int, ...], ndim: int) -> tuple[int, ...]:
    sizes = (size,) * ndim if isinstance(size, int | np.integer) else tuple(size)
    if len(sizes) != ndim or any(int(s) < 1 for s in sizes):
        raise ValueError(f"size {size!r} does not fit an array of {ndim} dimensions")
    return tuple(int(s) for s in sizes)


def _padded(
    array: np.ndarray, before: int, after: int, axis: int, mode: Mode, cval: float
) -> np.ndarray:
    """`array` extended along `axis` as scipy extends a line before filtering it: 'reflect'
    mirrors about the edge, repeating the edge pixel (d c b a | a b c d | d c b a, numpy's
    'symmetric'), and keeps mirroring when the extension is longer than the line; 'nearest'
    repeats the edge pixel; 'constant' is `cval`. One gather (np.pad costs several times as
    much on these small arrays)."""
    length = array.shape[axis]
    positions = np.arange(-before, length + after)
    if mode == "constant":
        shape = list(array.shape)
        shape[axis] = len(positions)
        out = np.full(shape, cval, dtype=array.dtype)
        out[_along(axis, array.ndim, slice(before, before + length))] = array
        return out
    if mode == "reflect":
        positions %= 2 * length
        positions = np.where(positions < length, positions, 2 * length - 1 - positions)
    elif mode == "nearest":
        positions = np.clip(positions, 0, length - 1)
    else:
        raise ValueError(f"mode {mode!r} is not one of reflect, nearest, constant")
    return np.take(array, positions, axis=axis)


def _along(axis: int, ndim: int, index: slice) -> tuple[slice, ...]:
    """The index that takes `index` along `axis` and everything along the other axes."""
    return (slice(None),) * axis + (index,) + (slice(None),) * (ndim - axis - 1)


def _running(
    array: np.ndarray,
    size: int,
    axis: int,
    before: int,
    mode: Mode,
    cval: float,
    reduce: np.ufunc,
) -> np.ndarray:
    """The maximum or minimum (`reduce`) over the window [i - before, i - before + size) of
    each position i along `axis`, in about log2(size) whole-array operations: extremes over
    windows of 1, 2, 4, ... elements, each from two of the previous, then the window as two
    overlapping power-of-two windows (an extreme does not mind counting an element twice)."""
    if not -array.ndim <= axis < array.ndim:
        raise ValueError(f"axis {axis} is out of range for an array of {array.ndim} dimensions")
    axis = axis % array.ndim
    length = array.shape[axis]
    if size == 1 or array.size == 0:
        return array.copy()
    current = _padded(array, before, size - 1 - before, axis, mode, cval)
    span = 1  # current[i] is the extreme of the padded line's [i, i + span)
    while 2 * span <= size:
        count = current.shape[axis] - span
        current = reduce(
            current[_along(axis, array.ndim, slice(0, count))],
            current[_along(axis, array.ndim, slice(span, span + count))],
        )
        span *= 2
    if span == size:
        return np.ascontiguousarray(current[_along(axis, array.ndim, slice(0, length))])
    return np.asarray(
        reduce(
            current[_along(axis, array.ndim, slice(0, length))],
            current[_along(axis, array.ndim, slice(size - span, size - span + length))],
        )
    )


def maximum_filter1d(
    input: np.ndarray, size: int, axis: int = -1, mode: Mode = "reflect", cval: float = 0.0
) -> np.ndarray:
    """scipy.ndimage.maximum_filter1d (origin 0): the window of position i is
    [i - size // 2, i + (size - 1) // 2], so an even window reaches one further back."""
    array = np.asarray(input)
    return _running(array, int(size), axis, int(size) // 2, mode, cval, np.maximum)


def minimum_filter1d(
    input: np.ndarray, size: int, axis: int = -1, mode: Mode = "reflect", cval: float = 0.0
) -> np.ndarray:
    """scipy.ndimage.minimum_filter1d (origin 0), windows as in `maximum_filter1d`."""
    array = np.asarray(input)
    return _running(array, int(size), axis, int(size) // 2, mode, cval, np.minimum)


def maximum_filter(
    input: np.ndarray, size: int | tuple[int, ...], mode: Mode = "reflect", cval: float = 0.0
) -> np.ndarray:
    """scipy.ndimage.maximum_filter with a box `size` (no footprint, origin 0): a box's
    maximum is the maximum along each axis in turn, as scipy computes it too."""
    out = np.asarray(input)
    for axis, length in enumerate(_sizes(size, out.ndim)):
        out = _running(out, length, axis, length // 2, mode, cval, np.maximum)
    return out


def grey_closing(
    input: np.ndarray, size: int | tuple[int, ...], mode: Mode = "reflect", cval: float = 0.0
) -> np.ndarray:
    """scipy.ndimage.grey_closing with a box `size`: a grey dilation (box maximum) then a grey
    erosion (box minimum). scipy mirrors the dilation's window, which matters for even sizes:
    the dilation's window of position i is [i - (size - 1) // 2, i + size // 2], the
    erosion's [i - size // 2, i + (size - 1) // 2], so the closing stays put."""
    out = np.asarray(input)
    sizes = _sizes(size, out.ndim)
    for axis, length in enumerate(sizes):
        out = _running(out, length, axis, (length - 1) // 2, mode, cval, np.maximum)
    for axis, length in enumerate(sizes):
        out = _running(out, length, axis, length // 2, mode, cval, np.minimum)
    return out


def median_filter(
    input: np.ndarray, size: int | tuple[int, ...], mode: Mode = "reflect", cval: float = 0.0
) -> np.ndarray:
    """scipy.ndimage.median_filter with a box `size` (odd sizes only: scipy's even windows
    are off-centre, and photo.py uses none), of a small array: every window's values are
    gathered at once (size x size copies of the array), which photo.py's grids of a few
    hundred cells afford."""
    array = np.asarray(input)
    sizes = _sizes(size, array.ndim)
    if any(length % 2 == 0 for length in sizes):
        raise ValueError(f"median_filter here takes odd sizes, not {size!r}")
    padded = array
    for axis, length in enumerate(sizes):
        padded = _padded(padded, length // 2, length // 2, axis, mode, cval)
    windows = np.lib.stride_tricks.sliding_window_view(padded, sizes)
    flat = windows.reshape(*array.shape, -1)
    return np.median(flat, axis=-1).astype(array.dtype)


def _uniform1d(array: np.ndarray, size: int, axis: int, mode: Mode, cval: float) -> np.ndarray:
    """scipy's uniform_filter1d, float for float: scipy keeps a running sum in float64 (the
    first window summed left to right, then each step adds entering - leaving), divides each
    sum by `size` and rounds it to the array's dtype. The same operations in the same order
    give the same bits (`np.cumsum` adds sequentially); a mean of each window computed anew
    would differ in the last bit."""
    length = array.shape[axis]
    before = size // 2
    padded = _padded(array.astype(np.float64), before, size - 1 - before, axis, mode, cval)

    def part(start: int, stop: int) -> np.ndarray:
        return padded[_along(axis, array.ndim, slice(start, stop))]

    first = part(0, 1) + 0.0  # scipy's sum starts from 0.0 (which turns -0.0 into 0.0)
    for offset in range(1, size):
        first = first + part(offset, offset + 1)
    steps = np.concatenate([first, part(size, size + length - 1) - part(0, length - 1)], axis)
    return (np.cumsum(steps, axis=axis) / np.float64(size)).astype(array.dtype)


def uniform_filter(
    input: np.ndarray, size: int | tuple[int, ...], mode: Mode = "reflect", cval: float = 0.0
) -> np.ndarray:
    """scipy.ndimage.uniform_filter (origin 0) of a float array: the box mean, one axis after
    the other, rounded to the array's dtype after each axis as scipy's output array is. Axes
    of size 1 are skipped, as scipy skips them."""
    out = np.asarray(input)
    if not np.issubdtype(out.dtype, np.floating):
        raise TypeError(f"uniform_filter here takes float arrays, not {out.dtype}")
    for axis, length in enumerate(_sizes(size, out.ndim)):
        if length > 1 and out.size:
            out = _uniform1d(out, length, axis, mode, cval)
    return out.copy() if out is input else out


def binary_dilation(input: np.ndarray, structure: np.ndarray | None = None) -> np.ndarray:
    """scipy.ndimage.binary_dilation of a 2-D mask, once, outside the picture unset
    (border_value 0), by the 3x3 square (8 neighbours) or, as scipy's default (None), the
    3x3 cross (4 neighbours)."""
    mask = np.asarray(input).astype(bool)
    square = _connectivity(structure, mask.ndim)
    if mask.size == 0:
        return mask
    h, w = mask.shape
    padded = np.zeros((h + 2, w + 2), dtype=bool)
    padded[1:-1, 1:-1] = mask
    if square:  # the square is a row of three then a column of three
        sideways = padded[:, :-2] | padded[:, 1:-1] | padded[:, 2:]
        return np.asarray(sideways[:-2] | sideways[1:-1] | sideways[2:])
    sideways = padded[1:-1, :-2] | padded[1:-1, 1:-1] | padded[1:-1, 2:]
    return np.asarray(sideways | padded[:-2, 1:-1] | padded[2:, 1:-1])


# --------------------------------------------------------------------------- labelling


def _connectivity(structure: np.ndarray | None, ndim: int) -> bool:
    """Whether `structure` is the 3x3 square (True) or the 3x3 cross (False): the two ways
    pixels of a 2-D mask touch. Anything else is refused."""
    if ndim != 2:
        raise ValueError(f"only 2-D masks are handled here, not {ndim}-D")
    shape = np.asarray(structure).astype(bool) if structure is not None else _CROSS
    if shape.shape == (3, 3) and bool(np.all(shape == _SQUARE)):
        return True
    if shape.shape == (3, 3) and bool(np.all(shape == _CROSS)):
        return False
    raise ValueError("structure must be the 3x3 square (8-connected) or cross (4-connected)")


def _roots(first: np.ndarray, second: np.ndarray, count: int) -> np.ndarray:
    """Each of `count` nodes' smallest connected node, given edges first[i] - second[i].

    A parallel union-find in whole-array steps: every tree root hooks onto the smallest root
    it has an edge to (a root only ever points to a smaller index, so no cycles form), then
    the trees are flattened by pointer jumping. Each round merges every tree that touches a
    smaller one, so chains of any length merge at once: masks take a handful of rounds."""
    parent = np.arange(count)
    while True:
        low = np.minimum(parent[first], parent[second])
        high = np.maximum(parent[first], parent[second])
        apart = low != high
        if not apart.any():
            return parent
        np.minimum.at(parent, high[apart], low[apart])
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand


def label(input: np.ndarray, structure: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """scipy.ndimage.label of a 2-D mask: int32 labels 1..count, 0 outside, numbered as scipy
    numbers them, in raster order of each piece's first pixel (so `find_objects` lists the
    pieces in the same order). `structure`: the 3x3 square (8-connected) or, scipy's default
    None, the cross (4-connected).

    Works on runs (maximal horizontal stretches of set pixels), far fewer than pixels: runs
    on consecutive rows touch when their columns overlap (or are diagonal neighbours, if
    8-connected); the pieces are the connected runs (see `_roots`)."""
    mask = np.asarray(input).astype(bool)
    diagonal = int(_connectivity(structure, mask.ndim))
    h, w = mask.shape
    # The rows one after the other, each after an unset pixel (and one more at the end): no
    # run crosses from a row into the next, and every run starts and stops inside `line`.
    stride = w + 1
    line = np.zeros(h * stride + 1, dtype=bool)
    line[1:].reshape(h, stride)[:, :w] = mask
    changes = np.flatnonzero(line[1:] != line[:-1]) + 1
    starts, stops = changes[0::2], changes[1::2]  # each run's first pixel, and one past its last
    count = len(starts)
    if count == 0:
        return np.zeros(mask.shape, dtype=np.int32), 0
    # Runs of the next row that touch run r: those ending at or after r's first column (less
    # one if diagonals count) and starting at or before its last column (plus one). Runs are
    # in raster order, so they are a contiguous range [low, high) of run indices; the unset
    # pixel between rows keeps both searches inside the next row.
    low = np.searchsorted(stops, starts + stride - diagonal, side="right")
    high = np.searchsorted(starts, stops - 1 + stride + diagonal, side="right")
    touching = np.maximum(high - low, 0)
    first = np.repeat(np.arange(count), touching)
    offsets = np.arange(len(first)) - np.repeat(np.cumsum(touching) - touching, touching)
    roots = _roots(first, low[first] + offsets, count)
    # The root of a piece is its first run in raster order: numbering roots in order numbers
    # the pieces by their first pixel, as scipy does.
    is_root = roots == np.arange(count)
    numbers = np.cumsum(is_root, dtype=np.int32)[roots]
    labels = np.zeros(line.shape, dtype=np.int32)
    labels[line] = np.repeat(numbers, stops - starts)  # set pixels in raster order, run by run
    return np.ascontiguousarray(labels[1:].reshape(h, stride)[:, :w]), int(is_root.sum())


def find_objects(input: np.ndarray) -> list[tuple[slice, ...] | None]:
    """scipy.ndimage.find_objects: for each label 1..max, the bounding box of its pixels as a
    tuple of slices (None for a label with no pixels). An array without labels gives []."""
    labels = np.asarray(input)
    top = int(labels.max()) if labels.size else 0
    if top <= 0:
        return []
    where = np.flatnonzero(labels.ravel() > 0)
    ids = labels.ravel()[where].astype(np.intp) - 1
    present = np.bincount(ids, minlength=top) > 0
    bounds = []
    for axis, coordinate in enumerate(np.unravel_index(where, labels.shape)):
        start = np.full(top, labels.shape[axis], dtype=np.intp)
        stop = np.zeros(top, dtype=np.intp)
        np.minimum.at(start, ids, coordinate)
        np.maximum.at(stop, ids, coordinate + 1)
        bounds.append((start.tolist(), stop.tolist()))
    return [
        tuple(slice(starts[i], stops[i]) for starts, stops in bounds) if present[i] else None
        for i in range(top)
    ]


# --------------------------------------------------------------------------- distances


def distance_transform_edt(input: np.ndarray) -> np.ndarray:
    """scipy.ndimage.distance_transform_edt of a 2-D mask (unit sampling): each set pixel's
    exact Euclidean distance to the nearest unset one, 0 on unset pixels, float64.

    scipy takes the square root of an integer squared distance; so does this, so the values
    are the same bits. Separable, as in Felzenszwalb and Huttenlocher: first each pixel's
    distance to the nearest unset pixel in its column (two running scans), then
    d2(i, j) = min over k of col(i, k)^2 + (j - k)^2, taken over offsets |j - k| = 1, 2, ...
    until the offset's square exceeds every pixel's distance so far: as many whole-array
    steps as the largest distance in the mask (a few for strokes, at most half the side for
    a solid patch). A mask with no unset pixel at all gets scipy's answer: the distance to a
    point just above the top-left corner, (-1, 0)."""
    mask = np.asarray(input).astype(bool)
    if mask.ndim != 2:
        raise ValueError(f"only 2-D masks are handled here, not {mask.ndim}-D")
    h, w = mask.shape
    if mask.size == 0:
        return np.zeros(mask.shape, dtype=np.float64)
    rows = np.arange(h)[:, None]
    if mask.all():
        squared = (rows + 1) ** 2 + np.arange(w)[None, :] ** 2
        return np.sqrt(squared.astype(np.float64))
    # No column distance reaches `far`, so it stands for a column with no unset pixel.
    far = h + w
    dtype = np.int32 if 2 * (far + h) ** 2 < np.iinfo(np.int32).max else np.int64
    unset = ~mask
    above = np.maximum.accumulate(np.where(unset, rows, -far), axis=0)
    below = np.minimum.accumulate(np.where(unset, rows, far + h)[::-1], axis=0)[::-1]
    column: np.ndarray = np.minimum(rows - above, below - rows).astype(dtype)
    column_sq: np.ndarray = column * column
    squared = column_sq.copy()
    offset = 1
    while offset < w and offset * offset < int(squared.max()):
        step = offset * offset
        np.minimum(squared[:, :-offset], column_sq[:, offset:] + step, out=squared[:, :-offset])
        np.minimum(squared[:, offset:], column_sq[:, :-offset] + step, out=squared[:, offset:])
        offset += 1
    return np.sqrt(squared.astype(np.float64))
