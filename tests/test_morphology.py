"""service/imaging/morphology.py against scipy.ndimage, which it replaces in the serving image:
every function on random and structured masks and images of many shapes (one pixel, one row,
one column, odd and even sides, empty, full, the 256x256 analysis size), bit for bit; then
every call that reading photos makes, replayed through both; then the import that must not
bring scipy in. scipy stays a training and test dependency, so it is the reference here.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image
from scipy import ndimage as sp

from service.errors import UnusableInput
from service.imaging import morphology as mo
from service.imaging import photo
from service.imaging.uploads import ImageLimits, read_upload
from tests.images import mnist_test_digits
from training.photos import CONDITIONS, pictures

SQUARE = np.ones((3, 3), dtype=bool)
CROSS = sp.generate_binary_structure(2, 1)
SHAPES = [(1, 1), (1, 2), (1, 17), (2, 1), (23, 1), (2, 2), (3, 3), (4, 7), (8, 8), (15, 32)]
SHAPES += [(31, 30), (48, 64), (64, 48), (97, 120), (256, 256), (189, 252)]
DENSITIES = [0.0, 0.03, 0.3, 0.5, 0.7, 0.97, 1.0]
SIZES = [1, 2, 3, 4, 5, 6, 9, 11, 12, 13, 20]  # photo.py: 3, 4, 11, a tenth of a side, 9


def random_masks(seed: int) -> Iterator[np.ndarray]:
    rng = np.random.default_rng(seed)
    for shape in SHAPES:
        for density in DENSITIES:
            yield rng.random(shape) < density


def structured_masks() -> Iterator[np.ndarray]:
    """Shapes that stress labelling's merging: long chains of runs that meet late, diagonal
    contacts only, one piece spanning everything, rings nested in rings."""
    n = 64
    serpentine = np.zeros((n, n), dtype=bool)
    serpentine[::2] = True
    for i in range(1, n, 2):
        serpentine[i, n - 1 if i % 4 == 1 else 0] = True
    yield serpentine
    yield serpentine.T.copy()
    comb = np.zeros((n, n), dtype=bool)
    comb[:, ::2] = True
    comb[-1] = True
    yield comb
    yield comb[::-1].copy()
    yy, xx = np.indices((n, n))
    yield (yy + xx) % 2 == 0  # a checkerboard: one piece 8-connected, single pixels 4-connected
    yield yy == xx  # a diagonal line
    yield yy + xx == n - 1  # the other diagonal: starts at the right edge
    ring = np.maximum(abs(yy - n // 2), abs(xx - n // 2))
    yield ring % 4 == 0  # nested square rings
    yield (yy - 20) ** 2 + (xx - 30) ** 2 < 15**2  # a disk
    yield np.zeros((0, 5), dtype=bool)
    yield np.zeros((5, 0), dtype=bool)


def all_masks() -> Iterator[np.ndarray]:
    yield from random_masks(1)
    yield from structured_masks()


def same(ours: np.ndarray, theirs: np.ndarray) -> None:
    """The same values, bit for bit, of the same dtype and shape."""
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    assert np.array_equal(ours, theirs)


# --------------------------------------------------------------------------- labelling


@pytest.mark.parametrize("structure", [SQUARE, None, CROSS], ids=["square", "default", "cross"])
def test_label_numbers_pieces_as_scipy_does(structure: np.ndarray | None) -> None:
    for mask in all_masks():
        labels, count = mo.label(mask, structure=structure)
        expected, expected_count = sp.label(mask, structure=structure)
        assert count == expected_count and isinstance(count, int)
        same(labels, expected)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(arrays(np.bool_, st.tuples(st.integers(1, 12), st.integers(1, 12))))
def test_label_on_any_small_mask(mask: np.ndarray) -> None:
    for structure in (SQUARE, None):
        labels, count = mo.label(mask, structure=structure)
        expected, expected_count = sp.label(mask, structure=structure)
        assert count == expected_count
        same(labels, expected)


def test_find_objects_gives_scipy_boxes_in_label_order() -> None:
    for mask in all_masks():
        if mask.size == 0:
            continue
        labels, _ = sp.label(mask, structure=SQUARE)
        assert mo.find_objects(labels) == sp.find_objects(labels)
    rng = np.random.default_rng(2)
    for shape in SHAPES:  # labels with gaps (None) and in any order, as int32 and int64
        labels = rng.integers(0, 9, shape) * (rng.random(shape) < 0.2)
        for dtype in (np.int32, np.int64):
            assert mo.find_objects(labels.astype(dtype)) == sp.find_objects(labels.astype(dtype))


def test_find_objects_of_no_labels_is_empty() -> None:
    assert mo.find_objects(np.zeros((4, 5), dtype=np.int32)) == sp.find_objects(
        np.zeros((4, 5), dtype=np.int32)
    )
    assert mo.find_objects(np.zeros((0, 5), dtype=np.int32)) == []  # scipy raises here


def test_what_scipy_offers_beyond_photo_py_s_needs_is_refused() -> None:
    with pytest.raises(ValueError, match="structure"):
        mo.label(np.ones((3, 3), dtype=bool), structure=np.ones((5, 5), dtype=bool))
    with pytest.raises(ValueError, match="2-D"):
        mo.label(np.ones(3, dtype=bool))
    with pytest.raises(ValueError, match="structure"):
        mo.binary_dilation(np.ones((3, 3), dtype=bool), structure=np.eye(3, dtype=bool))
    with pytest.raises(ValueError, match="axis"):
        mo.maximum_filter1d(np.ones((3, 3), dtype=np.uint8), 3, axis=2)
    with pytest.raises(ValueError, match="mode"):
        mo.minimum_filter1d(np.ones((3, 3), dtype=np.uint8), 3, mode="wrap")  # type: ignore[arg-type]


def test_binary_dilation_by_the_square_and_the_cross() -> None:
    for mask in all_masks():
        if mask.size == 0:
            continue
        same(mo.binary_dilation(mask, structure=SQUARE), sp.binary_dilation(mask, SQUARE))
        same(mo.binary_dilation(mask), sp.binary_dilation(mask))


# --------------------------------------------------------------------------- distances


def test_distance_transform_is_scipy_bit_for_bit() -> None:
    for mask in all_masks():
        same(mo.distance_transform_edt(mask), sp.distance_transform_edt(mask))
        padded = np.pad(mask, 1)  # as photo.py passes pieces and digits
        same(mo.distance_transform_edt(padded), sp.distance_transform_edt(padded))


@settings(max_examples=200, deadline=None, derandomize=True)
@given(arrays(np.bool_, st.tuples(st.integers(1, 20), st.integers(1, 20))))
def test_distance_transform_on_any_small_mask(mask: np.ndarray) -> None:
    same(mo.distance_transform_edt(mask), sp.distance_transform_edt(mask))


def test_distance_transform_of_a_full_mask_is_scipy_s() -> None:
    """With nothing unset scipy measures from just above the top-left corner: photo.py's
    shadow test sees such a mask when a shadow covers the whole picture."""
    for shape in [(1, 1), (1, 9), (9, 1), (4, 6), (64, 48)]:
        full = np.ones(shape, dtype=bool)
        same(mo.distance_transform_edt(full), sp.distance_transform_edt(full))


def test_distance_transform_of_solid_patches() -> None:
    """The slow case of the offset loop (a distance of half the side) is still exact."""
    yy, xx = np.indices((258, 258))
    for mask in [
        np.pad(np.ones((256, 256), dtype=bool), 1),
        (yy - 129) ** 2 + (xx - 70) ** 2 < 9e3,
    ]:
        same(mo.distance_transform_edt(mask), sp.distance_transform_edt(mask))
    corner = np.ones((100, 140), dtype=bool)
    corner[-1, -1] = False  # one unset pixel, as far as can be from most
    same(mo.distance_transform_edt(corner), sp.distance_transform_edt(corner))


# --------------------------------------------------------------------------- running filters


def test_maximum_and_minimum_filter1d_of_masks() -> None:
    """photo.py's uint8 masks, scipy's default 'reflect' boundary, odd and even windows (an
    even window reaches one pixel further back), windows longer than the line."""
    for mask in random_masks(3):
        pixels = mask.astype(np.uint8)
        for size in SIZES:
            for axis in (0, 1, -1):
                for ours, theirs in [
                    (mo.maximum_filter1d, sp.maximum_filter1d),
                    (mo.minimum_filter1d, sp.minimum_filter1d),
                ]:
                    same(ours(pixels, size, axis=axis), theirs(pixels, size, axis=axis))


def test_median_filter_of_grids_and_images() -> None:
    """photo.py's per-cell paper and noise grids: float32 of any shape (one cell, one row),
    odd boxes in every boundary mode, ties and repeated values included; even boxes refused
    (scipy's are off-centre)."""
    rng = np.random.default_rng(5)
    for shape in SHAPES:
        values = rng.random(shape).astype(np.float32)
        steps = np.round(values * 4).astype(np.float32) / 4  # many ties
        for array in (values, steps):
            for size in (1, 3, 5, (3, 1), (1, 5)):
                for mode in ("reflect", "nearest", "constant"):
                    same(
                        mo.median_filter(array, size, mode=mode, cval=0.5),
                        sp.median_filter(array, size, mode=mode, cval=0.5),
                    )
    with pytest.raises(ValueError, match="odd"):
        mo.median_filter(np.ones((4, 4), dtype=np.float32), 2)


def test_running_filters_in_every_mode() -> None:
    rng = np.random.default_rng(4)
    for shape in [(1, 1), (1, 5), (7, 1), (6, 9), (33, 20)]:
        values = rng.random(shape).astype(np.float32)
        for mode in ("reflect", "nearest", "constant"):
            for size in SIZES:
                for axis in (0, 1):
                    kwargs: dict[str, Any] = {"axis": axis, "mode": mode, "cval": 0.25}
                    same(
                        mo.maximum_filter1d(values, size, **kwargs),
                        sp.maximum_filter1d(values, size, **kwargs),
                    )
                    same(
                        mo.minimum_filter1d(values, size, **kwargs),
                        sp.minimum_filter1d(values, size, **kwargs),
                    )
    line = np.array([0, 1, 1, 0, 0, 0, 0, 1], dtype=np.uint8)  # photo.py's 1-D widening run
    same(
        mo.maximum_filter1d(mo.minimum_filter1d(line, 4), 4),
        sp.maximum_filter1d(sp.minimum_filter1d(line, 4), 4),
    )


def test_maximum_filter_with_a_constant_border() -> None:
    """photo.py widens strokes with a box of any size, zero outside the crop."""
    rng = np.random.default_rng(5)
    for shape in SHAPES:
        ink = rng.random(shape).astype(np.float32) * (rng.random(shape) < 0.3)
        for size in [1, 2, 3, 4, 7, 8, 17, 33]:
            same(
                mo.maximum_filter(ink, size=size, mode="constant", cval=0.0),
                sp.maximum_filter(ink, size=size, mode="constant", cval=0.0),
            )
        same(mo.maximum_filter(ink, size=(2, 5)), sp.maximum_filter(ink, size=(2, 5)))


def test_grey_closing_of_the_paper_grid() -> None:
    """photo.py closes the coarse paper grid (up to 64 a side) with a 9x9 box, 'nearest';
    even boxes shift the dilation's window the other way, as scipy's does."""
    rng = np.random.default_rng(6)
    shapes = [*SHAPES[:-2], (64, 64), (1, 64), (64, 1), (48, 64), (43, 64)]
    for shape in shapes:
        grid = rng.random(shape).astype(np.float32)
        for size in [(9, 9), (1, 1), (2, 2), (3, 4), (8, 5), (12, 12)]:
            for mode in ("nearest", "reflect"):
                same(
                    mo.grey_closing(grid, size=size, mode=mode),
                    sp.grey_closing(grid, size=size, mode=mode),
                )
        same(
            mo.grey_closing(grid, size=9, mode="nearest"),
            sp.grey_closing(grid, size=9, mode="nearest"),
        )


def test_uniform_filter_is_scipy_to_the_last_bit() -> None:
    """A box mean is only bit-identical when summed as scipy sums it (a running sum in
    float64, rounded to float32 after each axis): photo.py's paper level is read from it."""
    rng = np.random.default_rng(7)
    for shape in [*SHAPES, (64, 64), (43, 64)]:
        for dtype in (np.float32, np.float64):
            values = (rng.random(shape) * rng.choice([1.0, 255.0, 1e-3])).astype(dtype)
            sizes: list[int | tuple[int, ...]] = [1, 2, 3, 4, 5, 9, (3, 1), (2, 7)]
            for size in sizes:
                for mode in ("nearest", "reflect", "constant"):
                    same(
                        mo.uniform_filter(values, size=size, mode=mode),
                        sp.uniform_filter(values, size=size, mode=mode),
                    )
    with pytest.raises(TypeError):
        mo.uniform_filter(np.ones((3, 3), dtype=np.uint8), size=3)


def test_filters_leave_their_input_alone() -> None:
    values = np.random.default_rng(8).random((20, 30)).astype(np.float32)
    copy = values.copy()
    for result in [
        mo.uniform_filter(values, size=1),
        mo.maximum_filter(values, size=1),
        mo.grey_closing(values, size=(1, 1)),
        mo.maximum_filter1d(values, 1),
    ]:
        result[...] = 0
    same(values, copy)


# --------------------------------------------------------------------------- photo.py's calls


class Both:
    """Stands in for the morphology module inside photo.py: each call runs in both modules,
    the results must be the same, morphology's is returned (so the reading goes on exactly
    as served)."""

    def __init__(self) -> None:
        self.called: set[str] = set()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def both(*args: Any, **kwargs: Any) -> Any:
            ours = getattr(mo, name)(*args, **kwargs)
            theirs = getattr(sp, name)(*args, **kwargs)
            if isinstance(ours, tuple):  # label: (labels, count)
                same(ours[0], theirs[0])
                assert ours[1] == theirs[1]
            elif isinstance(ours, list):  # find_objects
                assert ours == theirs
            else:
                same(ours, theirs)
            self.called.add(name)
            return ours

        return both


def test_every_call_photo_reading_makes_matches_scipy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pictures of every kind the renderer makes (ruled and squared paper, shadows, blue ink,
    thin pens, pencil, tiny digits read by the finer look, blanks), read with each
    morphology call checked against scipy's on the very arguments photo.py passes."""
    both = Both()
    monkeypatch.setattr(photo, "ndi", both)
    limits = ImageLimits(max_pixels=50_000_000, max_side=20_000, max_aspect=20.0)
    kinds = ["photo", "scan", *CONDITIONS, "blank"]
    images, labels = mnist_test_digits(Path("tests/fixtures"), len(kinds))
    refused = []
    for picture in pictures(images, labels, kinds, seed=23, width=800, height=600):
        try:
            read_upload(picture.data, limits)
        except UnusableInput:
            refused.append(picture.kind)
    assert refused == ["blank"]  # every digit was read, the blank refused
    gray = np.full((300, 400), 0.9, dtype=np.float32)  # a thin pen: strokes are widened
    gray[100:220, 200:202] = 0.1
    gray[100:102, 170:230] = 0.1
    photo.read_digit(Image.fromarray((gray * 255).astype(np.uint8)))
    assert both.called == {
        "distance_transform_edt",
        "grey_closing",
        "uniform_filter",
        "label",
        "find_objects",
        "maximum_filter1d",
        "minimum_filter1d",
        "binary_dilation",
        "maximum_filter",
        "median_filter",
    }


def test_reading_a_photo_does_not_import_scipy() -> None:
    """The serving image has no scipy: photo.py, and all it imports, must do without."""
    code = (
        "import sys\n"
        "import service.imaging.photo, service.imaging.uploads\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'scipy'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert result.stdout.strip() == "[]"
