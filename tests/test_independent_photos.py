"""The independent photo generator (evaluation/): an instrument, so what is tested is that it
measures what it says: the same seed gives the same pictures, every condition gives real
pictures of the size asked for, the labels are right (a clean picture is read as its label),
the CLI writes its results, and it stays independent of the renderer training uses."""

from __future__ import annotations

import ast
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evaluation import independent_photos as IP
from evaluation.scene import CONDITIONS, DigitSource, render_picture
from evaluation.strokes import glyph_strokes, mnist_strokes
from service.imaging.uploads import decode_image
from tests.conftest import FIXTURES, ROOT

SMALL_FRAME = (320, 240)


@pytest.fixture(scope="module")
def digits() -> DigitSource:
    """The first 200 MNIST t10k digits of the committed fixture, and the glyph templates."""
    return DigitSource.from_data_dir(FIXTURES)


def test_the_same_seed_gives_the_same_pictures(digits: DigitSource) -> None:
    for condition in ("phone", "marker", "pencil"):
        first = render_picture(condition, 7, 3, digits, SMALL_FRAME)
        again = render_picture(condition, 7, 3, digits, SMALL_FRAME)
        assert first.data == again.data and first.label == again.label
        other = render_picture(condition, 8, 3, digits, SMALL_FRAME)
        assert other.data != first.data


@pytest.mark.parametrize("condition", list(CONDITIONS))
def test_every_condition_renders_a_photo_of_the_size_asked(
    condition: str, digits: DigitSource
) -> None:
    for index, frame in enumerate([SMALL_FRAME, (240, 320)]):
        picture = render_picture(condition, 1, index, digits, frame)
        image = Image.open(io.BytesIO(picture.data))
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", frame)
        pixels = np.asarray(image, dtype=np.float32)
        assert pixels.std() > 1, "a picture with something in it"
        assert 0 <= picture.label <= 9 and picture.source in {"mnist", "glyph"}
        decode_image(picture.data, IP.LIMITS)  # the service opens it as an upload


def test_strokes_come_from_both_sources(digits: DigitSource) -> None:
    """Every fixture digit traces into pen paths one digit tall; every template draws."""
    assert digits.images is not None
    for image in digits.images[:200]:
        strokes = mnist_strokes(image)
        points = np.concatenate([s.points for s in strokes])
        assert strokes and np.ptp(points[:, 1]) == pytest.approx(1.0, abs=0.05)
        assert np.abs(points).max() < 1.5
    rng = np.random.default_rng(0)
    for digit in range(10):
        points = np.concatenate([s.points for s in glyph_strokes(digit, rng)])
        assert np.ptp(points[:, 1]) == pytest.approx(1.0, abs=0.05)


def test_a_clean_photo_is_read_as_its_label(digits: DigitSource) -> None:
    """The labels are right: black gel pen on white paper, square on, is read correctly by the
    default model nearly always (27 of these 30 at 22843e4; the bound is loose)."""
    models = {m.name: m for m in IP.load_models(ROOT / "models")}
    model = models["mnist-bigru"]
    right = 0
    for index in range(30):
        picture = render_picture("clean", 5, index, digits, (640, 480))
        pixels, _ = IP.read(picture.data)
        if pixels is not None:
            probs = model.probabilities(pixels[None].astype(np.float32))
            right += int(probs.argmax() == picture.label)
    assert right >= 24


def test_the_cli_writes_a_results_file(tmp_path: Path) -> None:
    out = tmp_path / "independent.md"
    argv = ["--per-condition", "1", "--uci", "4", "--uci-sizes", "28", "--seed", "3"]
    argv += ["--data-dir", str(FIXTURES), "--out", str(out)]
    assert IP.main(argv) == 0
    text = out.read_text()
    assert "Command: `python -m evaluation.independent_photos --per-condition 1" in text
    assert "Machine: " in text and "| **all** |" in text
    for condition in CONDITIONS:
        assert f"| {condition} |" in text
    for model in ("mnist-bigru", "mnist-birnn", "mnist-rnn"):
        assert model in text
    assert "| 28px |" in text and "| 28px + margin |" in text
    assert "misreads flagged not confident" in text


def test_the_generator_never_sees_the_training_renderer() -> None:
    """evaluation/ imports nothing of training/ but the MNIST file reader: not photos.py (the
    renderer training and calibration use) nor photo_eval.py (which imports it)."""
    for path in sorted((ROOT / "evaluation").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            training = {n for n in names if n.split(".")[0] == "training"}
            assert training <= {"training", "training.data"}, (path.name, training)
