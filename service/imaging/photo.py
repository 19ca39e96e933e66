"""Reading a digit out of a photo, a scan or a drawing: the steps between an upload and the
28x28 MNIST-style image the classifiers were trained on.

Photos of paper are not MNIST crops: light is uneven, the paper has texture and ruled lines,
ink is blue or black, strokes are thinner, the digit fills a fraction of the frame. Each step
below removes one of those differences and is a small pure function on numpy arrays:

    luminance -> darkness against the paper, in the picture's polarity
    -> ink mask (hysteresis) -> ruled lines removed -> the digit's ink components
    -> soft crop -> strokes thickened
    -> fitted into 20x20, centred by mass in 28x28 (as MNIST was made)

Training imports this same module (training/photos.py) so that the models learn from digits
that went through exactly these steps. When nothing in the picture looks like a digit the
reading fails with `UnusableInput` (HTTP 422), saying why.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from service.errors import UnusableInput
from service.imaging import morphology as ndi  # scipy.ndimage's calls, without scipy

# Analysis happens on at most this many pixels a side: a digit filling 15% of a frame is
# still ~28 pixels tall there (the model sees 20), ruled lines fade below the ink thresholds,
# and reading costs little next to decoding a phone JPEG (loadtest/results/bench_photo.md).
# A larger side did not read photos better (python -m training.photo_eval).
ANALYSIS_SIDE = 256
# The paper's brightness is estimated on a grid this coarse: far larger than a pen stroke,
# smaller than the gradients of a shadow.
PAPER_GRID = 64
POLARITY_CELLS = 6  # cells along the shorter side when telling ink from ground
MIN_SIDE = 112  # smaller pictures (a 28x28 MNIST digit) are enlarged to this first
EVEN_GROUND = 0.06  # gray levels between the border's quartiles
SHADOW_DEPTH = 0.37  # a dark region this deep (fraction of the shorter side) is a shadow
STROKE_CONTRAST = 0.2  # gray levels: on an even ground, strokes differ from it by this much
MOST_OF_PICTURE = 0.5  # light strokes on a dark ground (MNIST, dark mode) never cover this much
PAGE_DEPTH = 0.22  # ... nor reach this deep (see _depth): a light region this deep is a page
DIM_PAPER = 0.15  # gray level: paper in the deepest shadow we still read
CLOSING = 9  # cells: wider than a bold stroke (MNIST's are 7 cells at this grid)
# Ink is darker than the paper around it by many times the paper's own noise there (its
# grain, the sensor's noise, JPEG's ringing: `paper_noise`), and at least by these floors
# (fractions of the paper's level): a faint pencil digit on clean paper is ink, the same
# darkness on grainy paper or in a deep shadow is not.
STRONG_OVER_NOISE = 7.0  # a digit needs some pixels this many noise levels dark ...
WEAK_OVER_NOISE = 3.5  # ... and its strokes extend through pixels this dark
MIN_STRONG_INK = 0.07
MIN_WEAK_INK = 0.04
NOISE_CELLS = 12  # cells along the shorter side when measuring the paper's noise
NOISY_PAPER = 0.04  # the paper's noise (a standard deviation of darkness) no paper reaches
NOISY_SHARE = 0.5  # ... over more than this share of the picture: a texture, not paper
RESIDUE_REACH = 5  # cells a side over which the paper's level is the least found
# Marks fainter than this must be narrow dark ridges (see `_narrow_darkness`) to count as
# ink: the paper level is exact to a few levels at best, and faint broad shading (a
# shadow's soft edge, light falling off) is all that is left of it. A stroke is narrower
# than this fraction of the picture's shorter side.
BOLD_INK = 0.2
STEP_REACH = 4  # pixels (see paper_steps)
STEP_OF_PAPER = 0.15
STEP_BAND = 0.025  # of the shorter side, on each side of a step (see paper_steps)
STEP_DEPTH = 6  # cells of the paper's grid: a step deeper than this is no edge's (paper_steps)
EDGE_SHARE = 0.8  # a piece with this share of its pixels on a step of the paper is the step
SHADOW_INK = 0.12  # a region this dark and deep is a shadow (see _has_shadow)
TOPHAT_OF_SIDE = 5
MIN_LINE_INK = 0.06  # ruled lines are looked for among pixels at least this dark ...
LINE_OF_INK = 0.15  # ... and at least this fraction of the picture's ink level
STRONG_OF_INK = 0.55  # seeds: this fraction of the picture's ink level
WEAK_OF_INK = 0.30  # extent: this fraction of it
# A ruled line spans at least this fraction of the picture's width (a margin line: of its
# height; a digit can be taller than wide); a digit's stroke never does.
LINE_SPAN = 0.5
MARGIN_LINE_SPAN = 0.75
# ... and is thin: at most this many pixels on average across (a pen's or a printed
# line; a digit's stroke drawn with a marker is wider).
LINE_THICKNESS = 5  # (at half resolution, thickened by 3)
BRIDGE = 11  # a stroke is bridged across a removed line this many pixels wide
# A ruled line's dashes up to this far apart (half-resolution pixels) are one line (ruled
# lines themselves are 5 and more apart there).
LINE_GAP = 3
LEFTOVER_REACH = 5  # pixels across a line: a piece within them, along it, is its leftover
LEFTOVER_ON_LINE = 0.8
# a thin straight piece (across <= 2 + STRAIGHT x along) that faint pixels continue in line,
# within LINE_TILT of a pixel per pixel, on CONTINUED_SHARE of CONTINUED_LENGTHS x its length
# beyond each end, is a piece of the paper's line
STRAIGHT = 0.15
PIECE_OVER_LINE = 1.5  # a piece's mean darkness over the lines' median, for it to be ink
MIN_PAPER_LINES = 3  # lines found for the paper's lines' darkness to be judged
LINE_TILT = 0.08
CONTINUED_LENGTHS = 1.0
CONTINUED_SHARE = 0.8
LINE_OF_WEAK = 0.6  # lines are looked for among pixels this fraction of a stroke's extent
# A line wider than its median width by this much (half-resolution pixels) over at least
# WIDE_STRETCH positions has a stroke running on it there: those pixels stay.
LINE_WIDENING = 1
WIDE_STRETCH = 4
# A pixel on a line this many times darker than the line's median is ink: pen ink is far
# darker than print, a light pencil only about half as dark again (2.0 took pencil bars
# lying on ruled lines away with the line: '7's read '1', '5's read '0').
INK_OVER_LINE = 1.5
# The digit: its longest side is at least this fraction of the picture's shorter side.
MIN_DIGIT_SIDE = 0.04
MIN_DIGIT_PIXELS = 8
# MNIST strokes are about 2.5 pixels wide in the 20x20 box; thinner pen strokes are widened.
MNIST_STROKE = 2.5
FLATTEST_DIGIT = 0.4  # height / width: even a wide '2' or '7' is taller than this
PAGE_HOLE = 0.5  # an empty page's outline encloses this much of its box, or more ...
HULL_TOLERANCE = 0.03  # ... in a hole with four corners at this tolerance (of its size)
BLOB_THICKNESS = 0.65  # a piece this thick for its length is a stain, not strokes
# A digit on paper is most of the picture's ink (once ruled lines, stains and frame edges are
# set aside): when more than this fraction of it lies outside the digit found, the picture is
# a pattern, a texture or a page of many marks, and whichever piece was "the digit" is
# arbitrary. Rendered photos and scans of one digit keep at most ~2% of their ink elsewhere
# (dust, a stray dot); colour noise, checkerboards and photos of textures 60% and more.
MAX_INK_ELSEWHERE = 0.5
# ... and so is one whose marks, regions aside (a shadow or a table: solid, filling this much
# of its box or more, or at the frame enclosing next to nothing), cover this much of the frame
# with most of them outside the digit: noise and patterns are mostly pieces at the frame, set
# aside above. One digit's ink covers at most ~5% of a rendered photo, ~21% of an MNIST crop
# (all of it the digit); textures 17-58%.
MAX_INK_COVER = 0.15
SOLID_FILL = 0.6
REGION_THICKNESS = 0.1  # of the frame's shorter side: a region at the frame is this thick
RELEVEL = 0.9  # read again when what cannot be the digit set the ink level this much higher
DESK_CONTACT = 0.5  # a region along the frame this much of its length (see _is_desk) ...
DESK_FILL = 0.4  # ... filling this much of its box ...
DESK_ASIDE = 0.3  # ... its centre this far off the picture's (of its width or height)
# A digit encloses at most two holes (0, 6, 9: one; 8: two; a sloppy 4 or 2 one more); a grid,
# a lattice or a mesh encloses hundreds. Holes smaller than a quarter of the stroke width
# squared are pinholes in a grainy stroke (pencil, marker bleed) and do not count. Checked on
# the digit's pieces and on every piece this large (a fraction of the frame), wherever it is:
# noise and patterns merge into large meshes, often at the frame (where a shadow or a table
# edge, solid, encloses next to nothing).
MAX_HOLES = 6
MESH_MIN_AREA = 0.02
BOX = 20
FIELD = 28


@dataclass(frozen=True)
class Component:
    """One connected piece of ink: its label, pixel count, darkness sum and bounding box."""

    label: int
    area: int
    ink: float
    top: int
    left: int
    bottom: int  # exclusive
    right: int  # exclusive
    on_step: float = 0.0  # share of its pixels where the paper's level steps (paper_steps)

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def width(self) -> int:
        return self.right - self.left


@dataclass(frozen=True)
class DigitReading:
    """What the model sees (uint8 28x28, white on black) and how it was found."""

    pixels: np.ndarray
    components: int  # ink pieces that make up the digit
    stroke_width: float  # in the 20x20 box, before widening


# --------------------------------------------------------------------------- pixels


# EXIF orientation -> the transpose that makes the picture upright (phones store photos
# sideways and say so in the EXIF tag 0x0112).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_ORIENTATION_TAG = 0x0112


def readable(image: Image.Image) -> Image.Image:
    """The picture as L, RGB or F (gray 0..255): transparency becomes white paper, 16-bit
    and 32-bit pictures (some scanners' PNGs) are scaled by their range, not clipped at 255,
    CMYK/palette/other modes are converted."""
    if image.mode in ("L", "RGB"):
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        values = np.asarray(image, dtype=np.float32)
        top = float(values.max()) if values.size else 1.0
        full = 65535.0 if image.mode.startswith("I;16") or top > 255 else 255.0
        return Image.fromarray(np.clip(values * np.float32(255.0 / full), 0, 255), mode="F")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    ):
        rgba = image.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(paper, rgba).convert("RGB")
    return image.convert("RGB")


def shrink(image: Image.Image, side: int = ANALYSIS_SIDE) -> Image.Image:
    """The picture upright (EXIF orientation applied), readable (see `readable`), with at
    most `side` pixels a side: an integer box reduction first (fast), then a box resize."""
    try:
        orientation = image.getexif().get(_ORIENTATION_TAG)
    except Exception:  # a damaged EXIF block is no reason to refuse the picture
        orientation = None
    image = readable(image)
    longest = max(image.size)
    if longest >= 2 * side:
        image = image.reduce(longest // side)
    if max(image.size) > side:
        scale = side / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BOX)
    if orientation in _UPRIGHT:
        image = image.transpose(_UPRIGHT[orientation])
        # the copy keeps the EXIF block: drop it, or a second shrink would turn it again
        image.info.pop("exif", None)
    return image


def enlarge(image: Image.Image, side: int = MIN_SIDE) -> Image.Image:
    """Tiny pictures (a 28x28 digit) enlarged to `side`, so strokes span several pixels."""
    if max(image.size) >= side:
        return image
    scale = side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC)


def luminance(image: Image.Image) -> np.ndarray:
    """Float gray levels in [0, 1] of a `readable` picture."""
    if image.mode == "RGB":
        image = ImageOps.grayscale(image)
    return np.asarray(image, dtype=np.float32) / np.float32(255.0)


def light_ground(gray: np.ndarray, cells: int = POLARITY_CELLS) -> bool:
    """Whether the picture is dark strokes on a light ground (the rule: ink on paper) rather
    than light strokes on a dark one (MNIST itself, a dark-mode drawing). Brightness cannot
    tell (a dim photo of paper is dark all over, a shadow can cover the whole border); what
    can: within small cells, strokes are the minority of pixels. With dark ink on paper a
    cell's mean sits near its brightest pixel and its darkest pixels stand out; with light
    strokes, the reverse. Smooth shading is neither."""
    h, w = gray.shape
    size = max(2, min(h, w) // cells)
    rows, cols = h // size, w // size
    blocks = gray[: rows * size, : cols * size].reshape(rows, size, cols, size)
    mean = blocks.mean(axis=(1, 3))
    dark_tail = float((mean - blocks.min(axis=(1, 3))).sum())
    bright_tail = float((blocks.max(axis=(1, 3)) - mean).sum())
    return bright_tail <= 1.5 * dark_tail


def _border(gray: np.ndarray) -> np.ndarray:
    h, w = gray.shape
    band = max(1, min(h, w) // 32)
    return np.concatenate(
        [gray[:band].ravel(), gray[-band:].ravel(), gray[:, :band].ravel(), gray[:, -band:].ravel()]
    )


def even_ground(gray: np.ndarray) -> float | None:
    """The ground's level when the picture's border is evenly toned (a scan, a drawing, a
    crop, MNIST itself), else None (shadows, uneven light). The middle half of the border
    only: a digit touching the frame takes some of it."""
    low, level, high = np.percentile(_border(gray), [25, 50, 75])
    return float(level) if high - low < EVEN_GROUND else None


def even_paper(gray: np.ndarray) -> float | None:
    """The paper's level when the light part of the border is even though the rest is not:
    a crop with a bold digit across much of its frame (the upper half of the border only)."""
    low, level, high = np.percentile(_border(gray), [50, 75, 95])
    return float(level) if high - low < EVEN_GROUND and level > DIM_PAPER else None


def ink_on_paper(gray: np.ndarray) -> tuple[np.ndarray, bool]:
    """The darkness map and whether the paper was estimated locally (see `measure_ink`)."""
    dark, photo, _, _ = measure_ink(gray)
    return dark, photo


def measure_ink(gray: np.ndarray) -> tuple[np.ndarray, bool, np.ndarray, np.ndarray]:
    """The darkness map (see `darkness`) of the picture's strokes, in its own polarity,
    whether the paper's level had to be estimated locally (a photo, not a scan or crop), the
    paper's noise at each pixel (see `paper_noise`) and where the paper's level steps (see
    `paper_steps`; nowhere unless estimated locally).

    On an even ground the strokes are whatever departs from it, darker (ink on paper, even
    dim paper) or lighter (MNIST, a dark-mode drawing), measured against that one level: a
    bold digit filling the frame would otherwise be taken for paper where it is widest.
    Otherwise strokes are dark ink, unless `light_ground` says otherwise, measured against
    the light part of the border if that is even (a crop), else against the paper's local
    level (a photo: shadows, uneven light)."""
    ground = even_ground(gray)
    page = False
    if ground is not None:
        toned, level = gray, ground
        darker = int((gray < ground - STROKE_CONTRAST).sum())
        lighter = int((gray > ground + STROKE_CONTRAST).sum())
        inverted = lighter > darker
        if inverted:
            toned, level = 1.0 - gray, 1.0 - ground
        if level <= DIM_PAPER:
            gray = toned
        else:
            wide = lighter > MOST_OF_PICTURE * gray.size
            page = inverted and (wide or _page_within(gray, ground))
            if not (page or _has_shadow(darkness(toned, np.float32(level)))):
                return _measured(toned, np.float32(level), False)
            # What departs from the even border is a region, not strokes: the page on a
            # dark table, or a shadow over the border and light on part of the page.
            ground = None
    if ground is None and not light_ground(gray):
        gray = 1.0 - gray
    paper = None if page else even_paper(gray)
    if paper is not None and _page_within(gray, paper):
        paper = None  # the border is a desk or a table: the paper is judged where it lies
    if paper is not None and not _has_shadow(darkness(gray, np.float32(paper))):
        return _measured(gray, np.float32(paper), False)
    return _measured(gray, paper_level(gray), True)


def _measured(
    gray: np.ndarray, paper: np.ndarray | np.float32, photo: bool
) -> tuple[np.ndarray, bool, np.ndarray, np.ndarray]:
    """Darkness against `paper`, less what the paper level left (`paper_residue`); faint
    marks only as far as they are narrow ridges (`_narrow_darkness`)."""
    relative = relative_darkness(gray, paper)
    residue, noise = paper_residue(relative)
    dark = np.clip(relative - residue, 0.0, 1.0)
    faint = dark < BOLD_INK
    if faint.any():  # faint marks count only as far as they are darker than both sides
        dark = np.where(faint, np.minimum(dark, _narrow_darkness(gray, paper)), dark)
    if isinstance(paper, np.ndarray):
        return dark, photo, noise, paper_steps(paper)
    return dark, photo, noise, np.zeros(dark.shape, dtype=bool)


def paper_steps(paper: np.ndarray) -> np.ndarray:
    """Where the paper's level (`paper_level`) changes by STEP_OF_PAPER of itself within
    STEP_REACH pixels: a page's edge against the desk beyond it, a table's, a sharp shadow's
    edge. Light falling off across a page changes it far more gently. Marks lying along
    such a step are the step, not strokes: the paper level lags behind it, so the desk
    along a page's edge looks dark against the page's level over a band STEP_BAND of the
    shorter side wide, and the band is part of the step. Only an edge's step is widened: a
    step reaching deeper than STEP_DEPTH cells of the grid is a region (a sharp shadow's,
    or the paper level following something too wide for its closing: a bold, blurred
    digit filling a tight crop), and a band around it would take in that digit's
    strokes."""
    size = 2 * STEP_REACH + 1
    high = ndi.maximum_filter(paper, size=size, mode="nearest")
    low = -ndi.maximum_filter(-paper, size=size, mode="nearest")
    steps = np.asarray(high - low > STEP_OF_PAPER * np.maximum(high, DIM_PAPER))
    band = 2 * round(STEP_BAND * min(paper.shape)) + 1
    if band == 1 or not steps.any():
        return steps
    labels, count = ndi.label(steps)
    depths = np.zeros(count + 1)
    np.maximum.at(depths, labels[steps], ndi.distance_transform_edt(steps)[steps])
    cell = max(paper.shape) / PAPER_GRID
    edges = np.isin(labels, np.flatnonzero(depths[1:] <= STEP_DEPTH * cell) + 1)
    return np.asarray(steps | (ndi.maximum_filter(edges.astype(np.uint8), size=band) > 0))


def _narrow_darkness(gray: np.ndarray, paper: np.ndarray | np.float32) -> np.ndarray:
    """How much darker each pixel is than what lies on both sides of it within a stroke's
    reach (a grey closing of the picture: a black top-hat), relative to the paper: a
    stroke of pencil is darker than the paper on either side; the edge of a shadow, where
    the paper level lags behind the light, is dark on one side only, and has none."""
    side = max(3, min(gray.shape) // TOPHAT_OF_SIDE) | 1
    closed = ndi.grey_closing(gray, size=(side, side), mode="nearest")
    return np.clip(relative_darkness(gray, paper) - relative_darkness(closed, paper), 0.0, 1.0)


def _has_shadow(dark: np.ndarray) -> bool:
    """Whether a dark region is too deep to be strokes: a shadow over part of the page
    (strokes, however bold, are narrow: every pixel of one is near its edge). Light falling
    off more gently across a page is left to `paper_residue`."""
    return _depth(dark > SHADOW_INK) > SHADOW_DEPTH * min(dark.shape)


def _page_within(gray: np.ndarray, border: float) -> bool:
    """Whether a region far lighter than the border's `border` level reaches PAGE_DEPTH
    into the picture: a page lying on a desk, the desk all around it (light strokes, even
    MNIST's boldest, are far thinner; the digit written on the page only makes the page
    less deep, so the bound sits well under a page's depth)."""
    return _depth(gray > border + STROKE_CONTRAST) > PAGE_DEPTH * min(gray.shape)


def _depth(region: np.ndarray) -> float:
    """How deep a region reaches, in pixels: its largest distance to its edge (measured at a
    quarter of the resolution: a region's depth, not a stroke's, is what is asked)."""
    sampled = region[::4, ::4]
    return 4.0 * float(ndi.distance_transform_edt(sampled).max()) if sampled.any() else 0.0


def paper_level(gray: np.ndarray, grid: int = PAPER_GRID) -> np.ndarray:
    """The brightness the paper would have at each pixel without ink: shadows and uneven
    light, but no strokes. A coarse grid, a closing (max then min) that fills in anything
    narrower than CLOSING cells (ink), a light blur, then back to full size."""
    h, w = gray.shape
    scale = grid / max(h, w)
    small_w, small_h = max(1, round(w * scale)), max(1, round(h * scale))
    small = np.asarray(
        Image.fromarray(gray, mode="F").resize((small_w, small_h), Image.Resampling.BOX),
        dtype=np.float32,
    )
    closed = ndi.grey_closing(small, size=(CLOSING, CLOSING), mode="nearest")
    smooth = ndi.uniform_filter(closed, size=3, mode="nearest")
    full = Image.fromarray(smooth, mode="F").resize((w, h), Image.Resampling.BILINEAR)
    return np.asarray(full, dtype=np.float32)


def relative_darkness(gray: np.ndarray, paper: np.ndarray | np.float32) -> np.ndarray:
    """How much darker than the paper around it each pixel is, relative to the paper's
    brightness (so a shadow does not make ink fainter): 0 paper, 1 black ink, negative where
    the paper is lighter than its level (its noise). Paper darker than DIM_PAPER counts as
    that bright, so a black ground has no 'ink' on it."""
    relative = (paper - gray) / np.maximum(paper, np.float32(DIM_PAPER))
    return np.asarray(relative, dtype=np.float32)


def darkness(gray: np.ndarray, paper: np.ndarray | np.float32) -> np.ndarray:
    """`relative_darkness` clipped to 0..1: what is lighter than the paper is paper."""
    return np.clip(relative_darkness(gray, paper), 0.0, 1.0)


def ink_level(dark: np.ndarray) -> float:
    """How dark the picture's ink is: the darkness reached by its darkest 0.1% of pixels
    (a digit's strokes cover more than that in any photo we read)."""
    return float(np.percentile(dark, 99.9))


def paper_residue(relative: np.ndarray, cells: int = NOISE_CELLS) -> tuple[np.ndarray, np.ndarray]:
    """What the paper level left at each pixel, from `relative_darkness` (signed): the
    paper's own darkness there (light falling off across a page taken as even, a shadow's
    edge sharper than the paper grid) and its noise (grain, the sensor's noise amplified in
    a shadow, JPEG's ringing) as a standard deviation.

    Per cell of the picture, from its lighter values (the 5th and 40th percentiles: ink
    only ever darkens, so while it covers less than half of a cell these are the paper's),
    then the median of each cell's neighbours (a digit's strokes fill a few cells; light,
    shadows and grain fill regions), then the least of its neighbours (what ink still
    raised is dropped: a bold digit filling the frame, as a scan's, covers whole cells;
    for the level, RESIDUE_REACH cells a side)."""
    h, w = relative.shape
    size = max(4, min(h, w) // cells)
    rows, cols = max(1, h // size), max(1, w // size)
    blocks = relative[: rows * size, : cols * size].reshape(rows, size, cols, size)
    low, middle = np.percentile(blocks, [5, 40], axis=(1, 3)).astype(np.float32)
    sigma = (middle - low) / np.float32(1.3916)  # the normal's 40th - 5th percentile
    level = middle + np.float32(0.2533) * sigma  # its 40th percentile to its median
    sigma = ndi.median_filter(sigma, size=3, mode="nearest")
    sigma = -ndi.maximum_filter(-sigma, size=3, mode="nearest")
    level = ndi.median_filter(level, size=3, mode="nearest")
    level = -ndi.maximum_filter(-level, size=RESIDUE_REACH, mode="nearest")

    def full(grid: np.ndarray) -> np.ndarray:
        image = Image.fromarray(grid.astype(np.float32), mode="F")
        return np.asarray(image.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)

    return full(level), full(sigma)


def refuse_noisy_background(noise: np.ndarray) -> None:
    """Refuse a picture whose background varies as much as noise over most of it (a texture,
    a pattern, colour noise): thresholds judged against such 'paper' leave only its extremes,
    which would be read as a digit with full confidence. Paper, even grainy and in shadow,
    varies far less (NOISY_PAPER is several times the noisiest paper measured)."""
    share = float((noise > NOISY_PAPER).mean())
    if share > NOISY_SHARE:
        raise UnusableInput(
            f"the image has no single digit: {share:.0%} of its background varies as much as "
            "noise (a pattern, a texture); photograph one digit on plain paper"
        )


def ink_thresholds(level: float, noise: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """The darkness a pixel needs to seed a stroke (strong) and to extend one (weak): a
    fraction of the picture's ink level (bold ink: its soft edges and the paper's texture
    stay apart), but never less than a multiple of the paper's noise there or the floors."""
    strong = np.maximum(STRONG_OVER_NOISE * noise, max(MIN_STRONG_INK, STRONG_OF_INK * level))
    weak = np.maximum(WEAK_OVER_NOISE * noise, max(MIN_WEAK_INK, WEAK_OF_INK * level))
    return strong, weak


def line_threshold(level: float) -> float:
    """The darkness ruled lines are looked for at: below the strokes' extent (in shadow or
    half-printed only parts of a line reach it, and a part does not span the picture),
    whatever the paper's noise (a line is found by its length, which noise does not have)."""
    weak = max(MIN_WEAK_INK, WEAK_OF_INK * level)
    return min(LINE_OF_WEAK * weak, max(MIN_LINE_INK, LINE_OF_INK * level))


def ink_mask(dark: np.ndarray, level: float, noise: np.ndarray | float = 0.0) -> np.ndarray:
    """Pixels that are ink, by hysteresis: pieces of at least weak darkness that reach a
    strongly dark pixel somewhere (`ink_thresholds`). Paper texture and faint lines stay
    out; the soft edges of a real stroke stay in."""
    strong_level, weak_level = ink_thresholds(level, noise)
    strong = dark >= strong_level
    weak = dark >= weak_level
    labels, count = ndi.label(weak, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return weak
    keep = np.zeros(count + 1, dtype=bool)
    keep[np.unique(labels[strong])] = True
    keep[0] = False
    return keep[labels]


def _long_lines(mask: np.ndarray, axis: int) -> np.ndarray:
    """Pixels of straight lines along `axis` (1: horizontal) that span most of the picture,
    tolerant of a slight tilt: the mask is thickened across the line first, so a tilted thin
    line still has long straight runs; runs shorter than a tenth of the picture go (an
    opening, done as 1-D running filters: O(pixels) whatever the run length)."""
    h, w = mask.shape
    length = max(3, (w if axis == 1 else h) // 10)
    thick = ndi.maximum_filter1d(mask.astype(np.uint8), size=3, axis=1 - axis)
    # a faint line comes in dashes (a thin tilted line falls in one pixel row, then across
    # two, each half as dark): short gaps along it are closed before runs are measured
    closed = _closing1d(thick.astype(bool), axis=axis, size=LINE_GAP).astype(np.uint8)
    full = ndi.minimum_filter1d(closed, size=length, axis=axis)
    runs = ndi.maximum_filter1d(full, size=length, axis=axis).astype(bool)
    runs &= closed.astype(bool)
    if not runs.any():
        return runs
    labels, count = ndi.label(runs, structure=np.ones((3, 3), dtype=bool))
    side = w if axis == 1 else h
    span_needed = (LINE_SPAN if axis == 1 else MARGIN_LINE_SPAN) * side
    long = np.zeros(count + 1, dtype=bool)
    for index, span in enumerate(ndi.find_objects(labels), start=1):
        if span is not None and span[axis].stop - span[axis].start >= span_needed:
            # thin along most of its length (the mean width of its narrower 80%): a
            # shadow's edge or a stain touching one end of a line does not make it a region
            across = np.sort((labels[span] == index).sum(axis=1 - axis))
            typical = float(across[: max(1, len(across) * 4 // 5)].mean())
            long[index] = typical <= LINE_THICKNESS + 0.01 * side
    lines = long[labels] & thick.astype(bool)
    return lines & ~_widened(labels, lines, axis) if lines.any() else lines


def _widened(labels: np.ndarray, lines: np.ndarray, axis: int) -> np.ndarray:
    """Where a line is clearly wider than it is along most of its length: a stroke runs on
    it there (the side of a '0' along the margin line, the bar of a '7' on a ruled line),
    and those pixels are the digit's. A line found by `_long_lines` takes in the straight
    parts of strokes lying on it; left in, they would be removed with it.

    Per position along each line, its width across; positions wider than the line's median
    width by more than LINE_WIDENING, over a stretch longer than a bump of noise, are
    returned (as a mask of the line pixels there)."""
    size = labels.shape[axis]
    shape = (1, size) if axis == 1 else (size, 1)
    along = np.broadcast_to(np.arange(size).reshape(shape), labels.shape)
    ids = labels[lines]
    count = int(labels.max()) + 1
    widths = np.bincount(ids * size + along[lines], minlength=count * size)
    widths = widths.reshape(-1, size)
    wide = np.zeros_like(widths, dtype=bool)
    for label in np.unique(ids):
        row = widths[label]
        typical = float(np.median(row[row > 0]))
        stretch = (row > typical + LINE_WIDENING).astype(np.uint8)
        opened = ndi.maximum_filter1d(ndi.minimum_filter1d(stretch, WIDE_STRETCH), WIDE_STRETCH)
        wide[label] = opened.astype(bool)
    return lines & wide[labels, along]


def _half(mask: np.ndarray) -> np.ndarray:
    """A mask at half resolution, a pixel set where any of its 2x2 block is (thin lines
    survive)."""
    h, w = mask.shape[0] // 2 * 2, mask.shape[1] // 2 * 2
    even = mask[:h, :w]
    return even[0::2, 0::2] | even[1::2, 0::2] | even[0::2, 1::2] | even[1::2, 1::2]


def _double(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A half-resolution mask back at `shape` (each pixel to its 2x2 block)."""
    full = np.zeros(shape, dtype=bool)
    big = mask.repeat(2, axis=0).repeat(2, axis=1)
    full[: big.shape[0], : big.shape[1]] = big
    return full


def remove_ruled_lines(
    mask: np.ndarray, faint: np.ndarray, dark: np.ndarray | None = None
) -> np.ndarray:
    """The ink mask without ruled or squared paper's lines (or a page edge). Lines are found
    in `faint` (a lower threshold than the mask's): in shadow or half-printed, only parts of
    a line reach the mask, and a part does not span the picture. They are looked for at half
    resolution (they are long: a quarter of the work). Where a stroke crosses a line, the
    stroke is bridged again across the gap; where a stroke runs along a line (the bar of a
    '5' or a '7' written on it), its pixels stay if they are clearly darker than the line
    (`dark`: pen ink is darker than printed rules)."""
    small = _half(faint)
    horizontal = _double(_long_lines(small, axis=1), mask.shape)
    vertical = _double(_long_lines(small, axis=0), mask.shape)
    lines = horizontal | vertical
    if not lines.any():
        return mask
    kept = mask & ~lines
    for found, axis in ((horizontal, 0), (vertical, 1)):
        if found.any():
            kept |= _closing1d(kept, axis=axis) & found & mask
    if dark is not None:  # each line against its own darkness (a margin is darker)
        for found, along in ((horizontal & ~vertical, 1), (vertical, 0)):
            on_line = found & mask
            over = on_line & (dark >= INK_OVER_LINE * _line_darkness(on_line, dark))
            kept |= over & ~_darker_along(on_line, over, along)
    kept &= ~_leftovers(kept, horizontal, vertical)
    kept &= ~_continued_by_faint_lines(kept, faint)
    if dark is not None:
        kept &= ~_as_faint_as_lines(kept, horizontal & faint, vertical & ~horizontal & faint, dark)
    return kept


def _leftovers(kept: np.ndarray, horizontal: np.ndarray, vertical: np.ndarray) -> np.ndarray:
    """Pieces left of the lines: lying (LEFTOVER_ON_LINE of their pixels or more) within a
    few pixels of a removed line, along it. Where a line's darkness dips (a tilted line
    between two pixel rows, a shadow's edge across it) or rises (a margin beside a squared
    paper's line), pieces of it can escape its removal: a sliver along a vertical line reads
    as a confident '1', where two lines cross a '+' as a '4'. A stroke crossing a line has
    most of its pixels off it; one written along a line (a '7's bar) is joined to the rest
    of the digit."""
    labels, count = ndi.label(kept, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return kept
    areas = np.maximum(1, np.bincount(labels.ravel(), minlength=count + 1))

    near = np.zeros(kept.shape, dtype=bool)
    for lines, across in ((horizontal, 0), (vertical, 1)):
        near |= ndi.maximum_filter1d(lines.astype(np.uint8), LEFTOVER_REACH, axis=across) > 0
    leftover = np.bincount(labels[near], minlength=count + 1) >= LEFTOVER_ON_LINE * areas
    leftover[0] = False
    return leftover[labels]


def _as_faint_as_lines(
    kept: np.ndarray, horizontal: np.ndarray, vertical: np.ndarray, dark: np.ndarray
) -> np.ndarray:
    """Pieces no darker than the paper's lines (their mean darkness under PIECE_OVER_LINE x
    the typical line's, over all their length, faint parts included): what is left of the
    lines where they were not found whole (a grid's crossings, dashes in a shadow). A pen's
    or a pencil's stroke is darker than print. The typical line: the median of each line's
    own median darkness (the lines of each direction, 8-connected), so that one dark band
    found among them (a page's edge against the desk, a table's) counts once, not by its
    pixels. Judged only on paper with MIN_PAPER_LINES lines or more: a single long straight
    'line' may be a stroke of a large digit. Lines along the frame's side parallel to them
    (`_along_the_frame`: a strip of desk beyond the page, found in pieces) are no paper's
    rules: counted, they made a pen darker than the paper but lighter than the desk go."""
    medians: list[float] = []
    for found, axis in ((horizontal, 1), (vertical, 0)):
        if found.any():
            per_line = _line_darkness(found, dark)
            labels, count = ndi.label(found, structure=np.ones((3, 3), dtype=bool))
            first = np.zeros(count + 1, dtype=np.float32)
            first[labels[found]] = per_line[found]
            at_frame = _along_the_frame(labels, axis)
            medians.extend(float(m) for i, m in enumerate(first[1:], 1) if i not in at_frame)
    if len(medians) < MIN_PAPER_LINES:
        return np.zeros(kept.shape, dtype=bool)
    typical = float(np.median(medians))
    labels, count = ndi.label(kept, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return kept
    areas = np.maximum(1, np.bincount(labels.ravel(), minlength=count + 1))
    sums = np.bincount(labels.ravel(), weights=dark.ravel(), minlength=count + 1)
    faint = sums / areas < PIECE_OVER_LINE * typical
    faint[0] = False
    return faint[labels]


def _along_the_frame(labels: np.ndarray, axis: int) -> set[int]:
    """The lines (of `labels`, running along `axis`) that reach the frame's side parallel
    to them: a strip of desk beyond the page's edge, or the edge's shadow, found as a line
    because it is long, straight and thin enough. Paper's rules run across the picture
    from one side to the other, within it."""
    ends = (labels[0, :], labels[-1, :]) if axis == 1 else (labels[:, 0], labels[:, -1])
    touching = np.unique(np.concatenate(ends))
    return {int(i) for i in touching if i}  # 0: no line


def _continued_by_faint_lines(kept: np.ndarray, faint: np.ndarray) -> np.ndarray:
    """Straight thin pieces that faint pixels continue beyond both ends, in line with them,
    for CONTINUED_LENGTHS of their own length (as far as the frame allows): pieces of a
    paper's line that a gap, a shadow or a tilt kept from being found whole. A written '1'
    ends where the pen stopped; the paper beyond it is blank."""
    labels, count = ndi.label(kept, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return kept
    boxes = ndi.find_objects(labels)
    line_pieces = np.zeros(count + 1, dtype=bool)
    for axis in (0, 1):
        grid = faint if axis == 0 else faint.T
        sums = np.pad(np.cumsum(grid, axis=1, dtype=np.int32), ((0, 0), (1, 0)))
        for index, box in enumerate(boxes, start=1):
            if box is None or line_pieces[index]:
                continue
            along, across = (box[0], box[1]) if axis == 0 else (box[1], box[0])
            length = along.stop - along.start
            if length < MIN_DIGIT_PIXELS or across.stop - across.start > 2 + STRAIGHT * length:
                continue
            thickness = float((labels[box] == index).sum()) / length
            line_pieces[index] = _continues(sums, along, across, length, thickness)
    line_pieces[0] = False
    return line_pieces[labels]


def _continues(
    sums: np.ndarray, along: slice, across: slice, length: int, thickness: float
) -> bool:
    """Whether rows of `sums` (per-row running counts of faint pixels) beyond both ends of
    `along` hold faint pixels within `across`, widened by the tilt a line may have, on
    CONTINUED_SHARE of CONTINUED_LENGTHS x `length` rows each side. Where the frame leaves
    fewer rows, those it leaves are judged (none: the line leaves the picture there), but
    one side at least must be judged on `length` rows: a '1' filling a tight crop stays.
    A piece of the line is no thicker than the line beyond it (a pixel more at most): a
    bold stroke written along a line is not the line."""
    rows, width = sums.shape[0], sums.shape[1] - 1
    reach = int(CONTINUED_LENGTHS * length)
    judged_whole = False
    for start, step in ((along.start - 1, -1), (along.stop, 1)):
        at = np.arange(start, start + step * reach, step)
        at = at[(at >= 0) & (at < rows)]
        if len(at) == 0:
            continue
        judged_whole |= len(at) >= length
        slack = 1 + (np.abs(at - start) * LINE_TILT).astype(np.int64)
        lo = np.clip(across.start - slack, 0, width)
        hi = np.clip(across.stop + slack, 0, width)
        widths = sums[at, hi] - sums[at, lo]
        present = widths > 0
        if float(present.mean()) < CONTINUED_SHARE:
            return False
        if thickness > float(np.median(widths[present])) + 1:
            return False
    return judged_whole


def _darker_along(lines: np.ndarray, over: np.ndarray, axis: int) -> np.ndarray:
    """The lines (8-connected pieces of `lines`) darker than themselves (`over`) along more
    than LINE_SPAN of their length: a stroke runs on a line for a digit's length at most;
    what is darker along most of it is a darker line beside it (a margin drawn next to a
    squared paper's line), whose pixels are not ink."""
    if not over.any():
        return over
    labels, count = ndi.label(lines, structure=np.ones((3, 3), dtype=bool))
    size = lines.shape[axis]
    shape = (size, 1) if axis == 0 else (1, size)
    along = np.broadcast_to(np.arange(size).reshape(shape), lines.shape)
    covered = np.zeros((count + 1, size), dtype=bool)
    covered[labels[over], along[over]] = True
    present = np.zeros((count + 1, size), dtype=bool)
    present[labels[lines], along[lines]] = True
    darker = covered.sum(axis=1) > LINE_SPAN * np.maximum(1, present.sum(axis=1))
    darker[0] = False
    return darker[labels]


def _line_darkness(lines: np.ndarray, dark: np.ndarray) -> np.ndarray:
    """Each line's typical darkness (its median), at every pixel of that line (8-connected
    pieces of `lines`); elsewhere 1 (nothing is kept there)."""
    level = np.ones(dark.shape, dtype=np.float32)
    if not lines.any():
        return level
    labels, count = ndi.label(lines, structure=np.ones((3, 3), dtype=bool))
    ids = labels[lines]
    values = dark[lines]
    order = np.lexsort((values, ids))
    ids, values = ids[order], values[order]
    starts = np.searchsorted(ids, np.arange(1, count + 1))
    stops = np.searchsorted(ids, np.arange(1, count + 1), side="right")
    medians = np.array(
        [np.median(values[a:b]) if b > a else 1.0 for a, b in zip(starts, stops, strict=True)],
        dtype=np.float32,
    )
    grown = ndi.maximum_filter(labels, size=3, mode="constant", cval=0)  # the line's rim too
    level[grown > 0] = medians[grown[grown > 0] - 1]
    return level


def _closing1d(mask: np.ndarray, axis: int, size: int = BRIDGE) -> np.ndarray:
    """Gaps shorter than `size` along `axis` filled (a 1-D closing)."""
    grown = ndi.maximum_filter1d(mask.astype(np.uint8), size=size, axis=axis)
    return ndi.minimum_filter1d(grown, size=size, axis=axis).astype(bool)


# --------------------------------------------------------------------------- the digit


def components(
    mask: np.ndarray, dark: np.ndarray, steps: np.ndarray | None = None
) -> tuple[np.ndarray, list[Component]]:
    """Label the ink mask (8-connected) and describe each piece (`steps`: where the paper's
    level steps, see paper_steps)."""
    labels, count = ndi.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return labels, []
    flat = labels.ravel()
    areas = np.bincount(flat, minlength=count + 1)[1:]
    inks = np.bincount(flat, weights=dark.ravel(), minlength=count + 1)[1:]
    stepped = np.zeros(count, dtype=np.int64)
    if steps is not None and steps.any():
        stepped = np.bincount(flat[steps.ravel()], minlength=count + 1)[1:]
    pieces = []
    for label, span in enumerate(ndi.find_objects(labels), start=1):
        if span is None:
            continue
        pieces.append(
            Component(
                label=label,
                area=int(areas[label - 1]),
                ink=float(inks[label - 1]),
                top=span[0].start,
                left=span[1].start,
                bottom=span[0].stop,
                right=span[1].stop,
                on_step=float(stepped[label - 1]) / max(1, int(areas[label - 1])),
            )
        )
    return labels, pieces


def _touches_frame(piece: Component, shape: tuple[int, int]) -> bool:
    h, w = shape
    return piece.top == 0 or piece.left == 0 or piece.bottom == h or piece.right == w


def _is_frame_artifact(piece: Component, shape: tuple[int, int]) -> bool:
    """A piece touching the picture's edge and spanning half of it: a page edge, a table,
    a fold's shadow. Digits sit inside the frame, unless the picture is cropped to one."""
    h, w = shape
    spans = piece.height >= LINE_SPAN * h or piece.width >= LINE_SPAN * w
    return spans and _touches_frame(piece, shape)


def _is_band(piece: Component, shape: tuple[int, int]) -> bool:
    """A flat piece across half the picture or more: a ruled line's remains, a shadow's or
    a fold's edge, a table's, never a digit (even a wide '2' or '7' is taller than
    FLATTEST_DIGIT of its width)."""
    return piece.width >= LINE_SPAN * shape[1] and piece.height < FLATTEST_DIGIT * piece.width


def _is_outline(
    piece: Component,
    pieces: list[Component],
    labels: np.ndarray,
    min_side: float,
) -> bool:
    """The outline of a page lying on a desk (or of a box drawn around the digit): spanning
    LINE_SPAN of the picture both ways, around another piece a digit's size that lies wholly
    within it (no digit holds another one inside: a '0' large enough holds specks at most),
    or around nothing but a straight-sided hole (`_encloses_a_page`)."""
    h, w = int(labels.shape[0]), int(labels.shape[1])
    if piece.height < LINE_SPAN * h or piece.width < LINE_SPAN * w:
        return False
    return any(
        other is not piece
        and max(other.height, other.width) >= min_side
        and other.top > piece.top
        and other.bottom < piece.bottom
        and other.left > piece.left
        and other.right < piece.right
        for other in pieces
    ) or _encloses_a_page(piece, labels)


def _encloses_a_page(piece: Component, labels: np.ndarray) -> bool:
    """Whether a piece holds a hole over PAGE_HOLE of its box whose outline has four
    corners (its hull simplified to within HULL_TOLERANCE of its size): an empty page's
    outline, its edges and shadow seen whole on a desk. A '0''s hole is rounded (nine
    corners and more at that tolerance, over at most two fifths of its box)."""
    ink = labels[piece.top : piece.bottom, piece.left : piece.right] == piece.label
    ground, areas = _holes(ink)
    if int(areas.max()) < PAGE_HOLE * ink.size:
        return False
    return len(_corners(_hull(ground == int(areas.argmax())))) <= 4


def _hull(mask: np.ndarray) -> np.ndarray:
    """The convex hull of a mask's pixels (row, column), in order (Andrew's monotone chain
    over each row's first and last pixel)."""
    rows = np.flatnonzero(mask.any(axis=1))
    first = mask[rows].argmax(axis=1)
    last = mask.shape[1] - 1 - mask[rows, ::-1].argmax(axis=1)
    ends = zip(rows.tolist() * 2, first.tolist() + last.tolist(), strict=True)
    points = sorted(set(ends))

    def turn(o: tuple[int, int], a: tuple[int, int], b: tuple[int, int]) -> int:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    chain: list[tuple[int, int]] = []
    for sweep in (points, points[::-1]):
        start = len(chain)
        for point in sweep:
            while len(chain) >= start + 2 and turn(chain[-2], chain[-1], point) <= 0:
                chain.pop()
            chain.append(point)
        chain.pop()
    return np.array(chain, dtype=np.float64)


def _corners(hull: np.ndarray) -> list[int]:
    """The corners left of a closed polygon simplified (Douglas-Peucker) to within
    HULL_TOLERANCE of its size: split at its two farthest-apart vertices, each half
    simplified alone."""
    if len(hull) < 4:
        return list(range(len(hull)))
    tolerance = HULL_TOLERANCE * float(np.ptp(hull, axis=0).max())
    distances = ((hull[:, None, :] - hull[None, :, :]) ** 2).sum(axis=-1)
    a, b = sorted(np.unravel_index(int(distances.argmax()), distances.shape))
    halves = (np.arange(a, b + 1), np.concatenate([np.arange(b, len(hull)), np.arange(a + 1)]))
    corners: list[int] = []
    for half in halves:
        corners += [int(half[i]) for i in _simplified(hull[half], tolerance)[:-1]]
    return corners


def _simplified(line: np.ndarray, tolerance: float) -> list[int]:
    """Douglas-Peucker: the indices of an open polyline's vertices kept at `tolerance`."""
    start, end = line[0], line[-1]
    direction = end - start
    length = max(float(np.hypot(*direction)), 1e-9)
    offsets = line - start
    distance = np.abs(direction[0] * offsets[:, 1] - direction[1] * offsets[:, 0]) / length
    far = int(distance.argmax())
    if len(line) < 3 or distance[far] <= tolerance:
        return [0, len(line) - 1]
    before = _simplified(line[: far + 1], tolerance)
    after = _simplified(line[far:], tolerance)
    return before[:-1] + [far + i for i in after]


def _is_blob(piece: Component, labels: np.ndarray) -> bool:
    """A solid patch (a stain, a thumb, a hole punch) rather than strokes: its thickest
    part is over half its length. Even a bold digit's strokes are far thinner than it is
    long."""
    if piece.area < 64:
        return False
    return _thickest(piece, labels) >= BLOB_THICKNESS * max(piece.height, piece.width)


def _thickest(piece: Component, labels: np.ndarray) -> float:
    """The width of a piece's thickest part, in pixels (twice its largest inner distance)."""
    mask = labels[piece.top : piece.bottom, piece.left : piece.right] == piece.label
    return 2.0 * float(ndi.distance_transform_edt(np.pad(mask, 1)).max())


def select_digit(
    pieces: list[Component],
    labels: np.ndarray,
    photo: bool,
    smallest: float = MIN_DIGIT_SIDE,
) -> list[Component]:
    """The digit's pieces: the piece with the most ink (pieces near the centre weigh more),
    then the pieces close to it (a '5' or a broken pen stroke comes in several). In a photo
    (`photo`: the paper was uneven) pieces touching the frame are shadow edges, the table
    or the page's edge, never the digit. The digit's longest side is at least `smallest`
    of the picture's shorter side."""
    shape = (int(labels.shape[0]), int(labels.shape[1]))
    h, w = shape
    min_side = max(MIN_DIGIT_PIXELS, smallest * min(h, w))
    usable = [
        p
        for p in pieces
        if p.area >= 4
        and not _never_the_digit(p, labels)
        and not _runs_out_of_frame(p, shape)
        and not _is_blob(p, labels)
        and not _is_band(p, shape)
    ]
    usable = [p for p in usable if not _is_outline(p, usable, labels, min_side)]
    inside = [p for p in usable if not _is_frame_artifact(p, shape)]
    big_inside = [p for p in inside if max(p.height, p.width) >= min_side]
    # A picture cropped tightly around its digit has the digit touching the frame: pieces at
    # the frame count when nothing inside could be a digit.
    if photo:
        usable = [p for p in usable if not _touches_frame(p, shape)]
    elif big_inside:
        usable = inside
    if not usable:
        raise UnusableInput(
            "the image has no visible digit: no dark strokes on a lighter background were found"
        )

    def weight(p: Component) -> float:
        cy, cx = (p.top + p.bottom) / 2 / h - 0.5, (p.left + p.right) / 2 / w - 0.5
        return p.ink * (1.0 - min(0.6, float(np.hypot(cy, cx))))

    main = max(usable, key=weight)
    reach = 0.6 * max(main.height, main.width)
    top, left = main.top - reach, main.left - reach
    bottom, right = main.bottom + reach, main.right + reach
    chosen = [main]
    for p in usable:
        if p is main or p.area < 0.02 * main.area:
            continue
        if p.bottom >= top and p.top <= bottom and p.right >= left and p.left <= right:
            chosen.append(p)
    span_h = max(p.bottom for p in chosen) - min(p.top for p in chosen)
    span_w = max(p.right for p in chosen) - min(p.left for p in chosen)
    if max(span_h, span_w) < min_side:
        raise UnusableInput(
            "the image has no visible digit: the only marks are specks "
            f"({max(span_h, span_w)} of {max(h, w)} pixels); photograph the digit larger"
        )
    if span_h < FLATTEST_DIGIT * span_w:
        raise UnusableInput(
            f"the image has no visible digit: the darkest mark is a flat stroke ({span_w}x"
            f"{span_h} pixels), a line or a smudge rather than a digit"
        )
    refuse_scattered_ink(chosen, usable, pieces, labels)
    taken = {p.label for p in chosen}
    large = [p for p in pieces if p.area >= MESH_MIN_AREA * h * w and p.label not in taken]
    for group in [chosen, *([p] for p in large)]:
        refuse_meshes(group, labels)
    return chosen


def _holes_in(pieces: list[Component], labels: np.ndarray) -> int:
    """The holes (larger than a pinhole) these pieces enclose together."""
    top, left = min(p.top for p in pieces), min(p.left for p in pieces)
    bottom, right = max(p.bottom for p in pieces), max(p.right for p in pieces)
    ink = np.isin(labels[top:bottom, left:right], [p.label for p in pieces])
    return enclosed_holes(ink, max(4.0, (stroke_width(ink) / 2) ** 2))


def _is_region(piece: Component, labels: np.ndarray) -> bool:
    """A shadow, a table or a page edge rather than marks: solid (it fills most of its box),
    lying along a step of the paper's level (`paper_steps`), or at the frame, spanning half
    of it, thick (a shadow is tens of pixels across, stripes and noise grains are not) and
    enclosing next to nothing (a texture's pieces are meshes)."""
    if piece.area >= SOLID_FILL * piece.height * piece.width or piece.on_step >= EDGE_SHARE:
        return True
    shape = (int(labels.shape[0]), int(labels.shape[1]))
    if not _is_frame_artifact(piece, shape):
        return False
    thick = _thickest(piece, labels) >= REGION_THICKNESS * min(shape)
    return thick and _holes_in([piece], labels) <= MAX_HOLES


def refuse_scattered_ink(
    chosen: list[Component],
    candidates: list[Component],
    pieces: list[Component],
    labels: np.ndarray,
) -> None:
    """Refuse a picture whose ink is mostly outside the digit found: noise, a pattern, a
    texture or several digits. Reading one of its pieces as a digit would answer with the
    model's confidence about an arbitrary mark. Among the pieces that could have been the
    digit (`candidates`: a stain, a page edge or a table at the frame is no mark), or, when
    the marks cover much of the frame, among all pieces but regions (`_is_region`)."""
    digit = sum(p.area for p in chosen)
    elsewhere = 1.0 - digit / max(1, sum(p.area for p in candidates))
    taken = {p.label for p in chosen}
    others = (p for p in pieces if p.label not in taken and p.area >= 4)
    marks = digit + sum(p.area for p in others if not _is_region(p, labels))
    if marks > MAX_INK_COVER * labels.size:
        elsewhere = max(elsewhere, 1.0 - digit / marks)
    if elsewhere > MAX_INK_ELSEWHERE:
        raise UnusableInput(
            "the image has no single digit: "
            f"{100 * elsewhere:.0f}% of its dark marks lie outside the largest digit-like "
            "one (a pattern, a texture, noise or several digits); photograph one digit on "
            "plain paper"
        )


def enclosed_holes(ink: np.ndarray, min_area: float) -> int:
    """How many regions of background the ink encloses (see `_holes`), of at least
    `min_area` pixels."""
    _, areas = _holes(ink)
    return int((areas >= min_area).sum())


def _holes(ink: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The regions of background the ink encloses (4-connected, so that a diagonal gap in
    an 8-connected stroke does not open a hole): their labels over the ink padded by one
    pixel, and each label's area (0 for the ink and the outside)."""
    ground, count = ndi.label(~np.pad(ink, 1))
    areas = np.bincount(ground.ravel(), minlength=count + 1)
    areas[ground[0, 0]] = 0  # the padding joins all of the outside into one region
    areas[0] = 0
    return ground, areas


def refuse_meshes(chosen: list[Component], labels: np.ndarray) -> None:
    """Refuse a grid, a lattice or a mesh among these pieces (a checkerboard's squares touch
    at their corners and make one piece with hundreds of holes): a digit encloses at most a
    few."""
    holes = _holes_in(chosen, labels)
    if holes > MAX_HOLES:
        raise UnusableInput(
            f"the image has no single digit: its marks enclose {holes} holes, a grid, a mesh "
            "or a pattern rather than a digit (which encloses at most two); photograph one "
            "digit on plain paper"
        )


def stroke_width(mask: np.ndarray) -> float:
    """Typical stroke width in pixels: twice the distance from a stroke's middle to its edge
    (the 90th percentile of the distance transform), minus the centre pixel."""
    if not mask.any():
        return 0.0
    inside = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1][mask]
    return max(1.0, 2.0 * float(np.percentile(inside, 90)) - 1.0)


def fit_to_field(ink: np.ndarray) -> np.ndarray:
    """A cropped digit (float, 0..1, any size) -> uint8 28x28: fitted into 20x20 keeping its
    aspect ratio, placed so its centre of mass is the field's centre (MNIST's recipe)."""
    h, w = ink.shape
    scale = BOX / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    fitted = Image.fromarray((np.clip(ink, 0, 1) * 255).astype(np.uint8)).resize(
        (new_w, new_h), Image.Resampling.LANCZOS
    )
    canvas = np.zeros((FIELD, FIELD), dtype=np.float32)
    top, left = (FIELD - new_h) // 2, (FIELD - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = np.asarray(fitted, dtype=np.float32)
    return center_of_mass_shift(canvas)


def center_of_mass_shift(canvas: np.ndarray) -> np.ndarray:
    """Shift (whole pixels) so the ink's centre of mass lands at (14, 14), as MNIST did."""
    total = float(canvas.sum())
    if total <= 0:
        return canvas.astype(np.uint8)
    ys, xs = np.indices(canvas.shape)
    cy, cx = float((ys * canvas).sum() / total), float((xs * canvas).sum() / total)
    dy, dx = round(FIELD / 2 - cy), round(FIELD / 2 - cx)
    shifted = np.zeros_like(canvas)
    src_y = slice(max(0, -dy), min(FIELD, FIELD - dy))
    dst_y = slice(max(0, dy), min(FIELD, FIELD + dy))
    src_x = slice(max(0, -dx), min(FIELD, FIELD - dx))
    dst_x = slice(max(0, dx), min(FIELD, FIELD + dx))
    shifted[dst_y, dst_x] = canvas[src_y, src_x]
    return np.clip(shifted, 0, 255).astype(np.uint8)


def soft_crop(
    dark: np.ndarray, labels: np.ndarray, chosen: list[Component]
) -> tuple[np.ndarray, np.ndarray]:
    """The digit's box: soft ink (darkness scaled so strokes reach 1, anti-aliased edges
    kept, everything that is not the digit's pieces zeroed) and its binary mask."""
    top, left = min(p.top for p in chosen), min(p.left for p in chosen)
    bottom, right = max(p.bottom for p in chosen), max(p.right for p in chosen)
    box_labels = labels[top:bottom, left:right]
    mask = np.isin(box_labels, [p.label for p in chosen])
    near = ndi.binary_dilation(mask, structure=np.ones((3, 3), dtype=bool))
    box_dark = dark[top:bottom, left:right]
    level = float(np.percentile(box_dark[mask], 75))
    ink = np.clip(box_dark / max(level, 1e-3), 0.0, 1.0) * near
    return ink.astype(np.float32), mask


def widen_strokes(ink: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, float]:
    """Thicken strokes thinner than MNIST's (pens are thinner than the ones MNIST's writers
    used, relative to the digit) by a grey dilation; thick strokes are left as they are.
    Returns the ink and the stroke width before, in 20x20-box pixels."""
    scale = BOX / max(ink.shape)
    width = stroke_width(mask) * scale
    missing = MNIST_STROKE - width
    if missing <= 0.25:
        return ink, width
    size = round(missing / scale)
    if size < 2:
        return ink, width
    return ndi.maximum_filter(ink, size=size, mode="constant", cval=0.0), width


# --------------------------------------------------------------------------- all steps


def read_digit(
    image: Image.Image,
    side: int = ANALYSIS_SIDE,
    smallest: float = MIN_DIGIT_SIDE,
    small_digit: bool = False,
) -> DigitReading:
    """An opened picture -> what the classifiers see, analysed at most `side` pixels a side.
    Raises UnusableInput (422) when the picture holds no digit: blank, uniform, only specks,
    lines or a stain (uploads.read_upload takes a finer look at any). A digit is at least
    `smallest` of the picture's shorter side tall or wide; a `small_digit` (the finer look
    for one) never touches the frame, so pieces that do are left out as in a photo."""
    dark, photo, noise, steps = measure_ink(luminance(enlarge(shrink(image, side))))
    refuse_noisy_background(noise)
    frame_photo = photo or small_digit
    labels, pieces = ink_pieces(dark, noise, steps)
    # Marks that cannot be the digit (the desk beyond the page, the band along a page's
    # edge) may still have set the ink's level, which a faint pen then fell short of: if
    # so, the picture is read again without them.
    aside = [p for p in pieces if _never_the_digit(p, labels)]
    if aside:
        cleared = np.where(_grown(np.isin(labels, [p.label for p in aside])), 0.0, dark)
        cleared = cleared.astype(np.float32)
        if ink_level(cleared) < RELEVEL * ink_level(dark):
            dark = cleared
            labels, pieces = ink_pieces(dark, noise, steps)
    chosen = select_digit(pieces, labels, frame_photo, smallest)
    ink, digit_mask = soft_crop(dark, labels, chosen)
    ink, width = widen_strokes(ink, digit_mask)
    return DigitReading(fit_to_field(ink), components=len(chosen), stroke_width=width)


def ink_pieces(
    dark: np.ndarray, noise: np.ndarray, steps: np.ndarray
) -> tuple[np.ndarray, list[Component]]:
    """The pieces of ink in a darkness map: thresholds from its ink level and the paper's
    noise, ruled lines removed. Raises UnusableInput when nothing is clearly dark."""
    level = ink_level(dark)
    strong, _ = ink_thresholds(level, noise)
    if int((dark >= strong).sum()) < MIN_DIGIT_PIXELS // 2:
        raise UnusableInput(
            "the image has no visible digit: nothing in it is clearly darker than the paper "
            "around it (too faint, or blank)"
        )
    faint = dark >= line_threshold(level)
    mask = remove_ruled_lines(ink_mask(dark, level, noise), faint, dark)
    return components(mask, dark, steps)


def _never_the_digit(piece: Component, labels: np.ndarray) -> bool:
    """A piece that is the desk (`_is_desk`) or lies along a step of the paper's level."""
    return piece.on_step >= EDGE_SHARE or _is_desk(piece, labels)


def _runs_out_of_frame(piece: Component, shape: tuple[int, int]) -> bool:
    """A piece reaching two sides of the frame, to one side of the picture (`_aside`, as
    for `_is_desk`): a page's edge or its shadow cutting a corner, a desk's strip from top
    to bottom, a line running on beyond the picture. A digit a crop cuts is cut on one
    side, or fills the crop and is centred in it. Left out of the candidates only: a thin
    line there is no reason to read the picture again."""
    h, w = shape
    sides = (piece.top == 0) + (piece.left == 0) + (piece.bottom == h) + (piece.right == w)
    return sides >= 2 and _aside(piece, shape)


def _aside(piece: Component, shape: tuple[int, int]) -> bool:
    """Whether a piece's box is centred in the outer fifth of the picture, across or down
    (DESK_ASIDE): a bold digit filling a tight crop is centred in it."""
    h, w = shape
    across = abs((piece.left + piece.right) / 2 / w - 0.5)
    down = abs((piece.top + piece.bottom) / 2 / h - 0.5)
    return max(across, down) >= DESK_ASIDE


def _is_desk(piece: Component, labels: np.ndarray) -> bool:
    """A dark region at the frame, beyond the page: a desk's corner or strip, a table, the
    dark border of a scan. It lies along the frame (on DESK_CONTACT of its length along one
    side, a tenth of that side at least), to one side of the picture (its box's centre in
    the outer fifth across or down: a bold digit filling a tight crop is centred) and fills
    much of its box (DESK_FILL: a corner's triangle half of it; strokes far less)."""
    h, w = int(labels.shape[0]), int(labels.shape[1])
    if not _aside(piece, (h, w)) or piece.area < DESK_FILL * piece.height * piece.width:
        return False
    sides = (
        (piece.top == 0, labels[0, piece.left : piece.right], w),
        (piece.bottom == h, labels[h - 1, piece.left : piece.right], w),
        (piece.left == 0, labels[piece.top : piece.bottom, 0], h),
        (piece.right == w, labels[piece.top : piece.bottom, w - 1], h),
    )
    for touching, edge, length in sides:
        if touching and len(edge) >= 0.1 * length and (edge == piece.label).mean() >= DESK_CONTACT:
            return True
    return False


def _grown(mask: np.ndarray) -> np.ndarray:
    """A mask widened by two pixels (a region's soft edge is darker than the paper too)."""
    return ndi.maximum_filter(mask.astype(np.uint8), size=5) > 0
