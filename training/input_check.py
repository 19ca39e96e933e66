"""Measure what MNIST digits look like, and write the bounds into the classifiers' cards.

    python -m training.input_check --models models --write-cards

The statistics are service/model/input_check.py's (ink share, midtones, ink on the border,
isolated ink). Their bounds come from the 60,000 MNIST training digits: the ink share between
its 0.05% and 99.95% quantiles, widened by `--margin` (a share of each bound: drawn digits and
other writers vary more than MNIST's), the other three bounded above only (a hard-edged drawn
digit has no midtones, and is a digit). The check is then measured on the 10,000 test digits
(how many real digits it would call not confident) and on arrays that are not digits (blank,
constants, noise, sparse specks, inverted digits), and the report written to
loadtest/results/input_check.md. An array outside the bounds is still answered, with
`confident: false`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

from service.model.input_check import FEATURES, InputCheck, features
from service.model.repository import discover_cards
from training import data as D

QUANTILES = (0.0005, 0.9995)
TWO_SIDED = ("ink",)  # the others: 0 is a digit's value too (a hard-edged stroke, no specks)


def bounds_from(images: np.ndarray, margin: float) -> dict[str, list[float]]:
    found = features(images.astype(np.float32))
    bounds = {}
    for name in FEATURES:
        low, high = (float(np.quantile(found[name], q)) for q in QUANTILES)
        low = low * (1 - margin) if name in TWO_SIDED else 0.0
        bounds[name] = [round(low, 4), round(min(1.0, high * (1 + margin)), 4)]
    return bounds


def not_digits(test: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Arrays a client may send that are not digits, 200 of each kind (0..255)."""
    rng = np.random.default_rng(seed)
    n = 200
    levels = rng.integers(0, 256, n)
    return {
        "blank (all 0)": np.zeros((n, 28, 28)),
        "constant, a random level": np.broadcast_to(levels[:, None, None], (n, 28, 28)),
        "uniform noise": rng.uniform(0, 255, (n, 28, 28)),
        "gaussian noise (mean 128, sd 40)": np.clip(rng.normal(128, 40, (n, 28, 28)), 0, 255),
        "specks (5% white pixels)": (rng.random((n, 28, 28)) < 0.05) * 255.0,
        "inverted digits (black on white)": 255.0 - test[:n],
    }


def measure(check: InputCheck, test: np.ndarray) -> dict[str, Any]:
    flagged_test = float(1 - check.typical(test.astype(np.float32)).mean())
    others = {
        kind: float(1 - check.typical(arrays.astype(np.float32)).mean())
        for kind, arrays in not_digits(test).items()
    }
    return {"mnist_test_flagged": round(flagged_test, 5), "not_digits_flagged": others}


def report(bounds: dict[str, list[float]], result: dict[str, Any], command: str) -> str:
    lines = [
        "# Input check: which pixel arrays look like digits",
        "",
        f"Command: `{command}`",
        f"Date: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores (numpy only).",
        "",
        "Bounds from the 60,000 MNIST training digits (service/model/input_check.py's "
        "statistics; training/input_check.py):",
        "",
        "| statistic | low | high |",
        "| --- | ---: | ---: |",
        *(f"| {name} | {low} | {high} |" for name, (low, high) in bounds.items()),
        "",
        "| arrays | answered not confident by the check |",
        "| --- | ---: |",
        f"| MNIST test digits (10,000) | {result['mnist_test_flagged']:.2%} |",
        *(
            f"| {kind} (200) | {share:.1%} |"
            for kind, share in result["not_digits_flagged"].items()
        ),
    ]
    return "\n".join(lines) + "\n"


def card_section(
    train: np.ndarray, test: np.ndarray, margin: float = 0.5
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The card's `input_check` and the measurement behind it."""
    bounds = bounds_from(train, margin)
    result = measure(InputCheck({k: (v[0], v[1]) for k, v in bounds.items()}), test)
    section = {
        "bounds": bounds,
        "measured_on": "MNIST train (60,000 digits), quantiles "
        f"{QUANTILES[0]:g}..{QUANTILES[1]:g} widened by {margin:g}",
        "mnist_test_flagged": result["mnist_test_flagged"],
        "about": "pixel and V2 answers for arrays outside these bounds say confident: false "
        "(service/model/input_check.py)",
    }
    return section, result


def for_export(data_dir: str | None) -> dict[str, Any] | None:
    """The section an export writes into a classifier's card, when MNIST is at hand."""
    try:
        root = D.resolve_data_dir(data_dir)
        train = D.load_mnist_split(root, train=True).images
        test = D.load_mnist_split(root, train=False).images
    except D.DataError:
        return None
    return card_section(train, test)[0]


def write_cards(models: Path, section: dict[str, Any]) -> list[str]:
    written = []
    for card in discover_cards(models, verify=False):
        if card.task != "digit-classification":
            continue
        path = card.directory / "card.json"
        data = json.loads(path.read_text())
        data["input_check"] = section
        path.write_text(json.dumps(data, indent=2) + "\n")
        written.append(str(path))
    return written


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        prog="python -m training.input_check",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data-dir", help="data root holding MNIST/raw (default: the usual)")
    parser.add_argument("--margin", type=float, default=0.5, help="bounds widened by this share")
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--write-cards", action="store_true", help="write the classifiers' cards")
    parser.add_argument(
        "--out", type=Path, default=Path("loadtest/results/input_check.md"), help="report file"
    )
    args = parser.parse_args(argv)
    root = D.resolve_data_dir(args.data_dir)
    train = D.load_mnist_split(root, train=True).images
    test = D.load_mnist_split(root, train=False).images
    section, result = card_section(train, test, args.margin)
    bounds = section["bounds"]
    if args.write_cards:
        for path in write_cards(args.models, section):
            print(f"wrote input_check into {path}", file=sys.stderr)
    command = "python -m training.input_check " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    text = report(bounds, result, command.strip())
    args.out.write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
