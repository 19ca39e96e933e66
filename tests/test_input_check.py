"""Pixel arrays that are not digits are never confident answers (service/model/input_check.py),
while real digits are left alone: on the statistics, on the committed cards' bounds, and on
every pixel route (/classify_pixels, /v1/digits, V2)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.model.input_check import InputCheck, features
from training import data as D
from training.input_check import bounds_from, not_digits

ROOT = Path(__file__).resolve().parents[1]
CLASSIFIERS = ("mnist-rnn", "mnist-birnn", "mnist-bigru")
ONE = [[0.0] * 28 for _ in range(6)] + [[0.0] * 13 + [255.0, 255.0] + [0.0] * 13] * 16
ONE += [[0.0] * 28 for _ in range(6)]  # the docs' hard-edged "1"


def committed_check(name: str) -> InputCheck:
    card = json.loads((ROOT / "models" / name / "1" / "card.json").read_text())
    check = InputCheck.from_card(card.get("input_check"))
    assert check is not None, f"{name}: no input_check in its card"
    return check


@pytest.fixture(scope="module")
def real_digits(mnist_root: Path) -> np.ndarray:
    return D.load_mnist_split(mnist_root, train=False).images.astype(np.float32)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_real_digits_pass_and_arrays_that_are_not_digits_do_not(
    name: str, real_digits: np.ndarray
) -> None:
    check = committed_check(name)
    assert check.typical(real_digits).mean() >= 0.995
    assert check.typical(np.asarray([ONE], np.float32)).all()  # no antialiasing: still a digit
    for kind, arrays in not_digits(real_digits).items():
        flagged = ~check.typical(arrays.astype(np.float32))
        assert flagged.all(), (kind, check.reasons(arrays[~flagged][:3]))


def test_the_statistics_say_what_they_measure() -> None:
    blank = np.zeros((1, 28, 28))
    found = features(np.concatenate([blank, np.asarray([ONE])]))
    assert found["ink"].tolist() == [0.0, 32 / 784]
    assert found["midtones"].tolist() == [0.0, 0.0]
    assert found["border_ink"].tolist() == [0.0, 0.0]
    dots = np.zeros((1, 28, 28))
    dots[0, 5:20:3, 5:20:3] = 255  # isolated specks, none on the border
    assert features(dots)["isolated_ink"].tolist() == [1.0]
    edge = np.zeros((1, 28, 28))
    edge[0, :, 0] = 255  # a line down the left edge: all of it on the border ring
    assert features(edge)["border_ink"][0] == pytest.approx(28 / (784 - 24 * 24))


def test_bounds_come_from_the_digits_they_are_given(mnist_root: Path) -> None:
    train = D.load_mnist_split(mnist_root, train=True).images
    bounds = bounds_from(train, margin=0.5)
    assert 0 < bounds["ink"][0] < bounds["ink"][1] < 1
    assert all(bounds[name][0] == 0.0 for name in ("midtones", "border_ink", "isolated_ink"))


def test_a_card_without_bounds_checks_nothing() -> None:
    assert InputCheck.from_card(None) is None
    assert InputCheck.from_card({"bounds": {"unknown": [0, 1]}}) is None


def v2(pixels: np.ndarray) -> dict[str, Any]:
    return {
        "inputs": [
            {
                "name": "pixels",
                "datatype": "FP32",
                "shape": list(pixels.shape),
                "data": pixels.ravel().tolist(),
            }
        ]
    }


def test_every_pixel_route_says_not_confident_for_what_is_no_digit(
    app_client: Any, real_digits: np.ndarray
) -> None:
    rng = np.random.default_rng(1)
    black = np.zeros((28, 28))
    noise = rng.uniform(0, 255, (28, 28)).round()
    digit = real_digits[0]
    arrays = np.stack([black, noise, digit])
    answers = app_client.post(
        "/classify_pixels", json={"images": [{"pixels": a.tolist()} for a in arrays]}
    ).json()
    assert [a["confident"] for a in answers[:2]] == [False, False], answers
    lean = app_client.post("/v1/digits", json={"pixels": arrays.tolist()}).json()
    assert lean["confident"][:2] == [False, False]
    out = app_client.post("/v2/models/mnist-bigru/infer", json=v2(arrays)).json()
    confident = next(o for o in out["outputs"] if o["name"] == "confident")
    assert confident["datatype"] == "BOOL" and confident["data"][:2] == [False, False]
    # the real digit keeps whatever its probabilities say, the same on every route
    assert answers[2]["confident"] == lean["confident"][2] == confident["data"][2]
    one = app_client.post("/v1/digits", json={"pixels": ONE, "model": "rnn"}).json()
    assert one["digits"] == [1] and one["confident"] == [True]
