"""How well the digit models read photos and scans: an evaluation set rendered from MNIST
validation digits (never trained on) by training/photos.py, read by the service's own steps
(read_upload: decode_image + service/imaging/photo.py), classified by every committed ONNX
digit model.

    python -m training.photo_eval                       # writes loadtest/results/photo_eval.md
    python -m training.photo_eval --per-kind 100 --out /tmp/quick.md

Reports accuracy per condition and model, how often blank paper is refused (it should be),
how often a digit is refused (it should not be), MNIST t10k accuracy, the calibrated
confidence threshold of each model, and the server-side CPU cost of a 12-megapixel JPEG.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from service.errors import UnusableInput
from service.imaging.uploads import ImageLimits, read_upload
from service.model.numerics import normalize, softmax
from service.model.repository import discover_cards
from training import data as D
from training import photos as P

KINDS = ["photo", "scan", *P.CONDITIONS]
EVAL_SEED = 777  # not a training seed: training renders use the run's seed
LIMITS = ImageLimits(max_pixels=50_000_000, max_side=20_000, max_aspect=20.0)
# Confident answers must be at least this accurate on the photo set (calibration target).
CONFIDENT_ACCURACY = 0.995
# Pixel arrays (MNIST-like digits) are calibrated apart, on MNIST validation digits, to a
# stricter target: clean digits are read right far more often than photos.
PIXEL_CONFIDENT_ACCURACY = 0.997


@dataclass
class DigitModel:
    name: str
    session: ort.InferenceSession
    normalization: dict[str, float]

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        x = normalize(pixels, self.normalization)
        (logits,) = self.session.run(None, {self.session.get_inputs()[0].name: x})
        return softmax(np.asarray(logits))


def load_models(models_root: Path) -> list[DigitModel]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    loaded = []
    for card in discover_cards(models_root):
        if card.task != "digit-classification":
            continue
        session = ort.InferenceSession(
            card.read_verified("onnx"), options, providers=["CPUExecutionProvider"]
        )
        loaded.append(DigitModel(card.name, session, card.input_spec("pixels")["normalization"]))
    return loaded


def read_all(pictures: list[P.Picture]) -> tuple[list[np.ndarray | None], list[float]]:
    """What the model sees for each picture (None: refused as 'no digit'), and the CPU
    seconds each reading took."""
    seen: list[np.ndarray | None] = []
    costs = []
    for picture in pictures:
        started = time.process_time()
        try:
            seen.append(read_upload(picture.data, LIMITS).pixels)
        except UnusableInput:
            seen.append(None)
        costs.append(time.process_time() - started)
    return seen, costs


def calibrate(
    confidence: np.ndarray, correct: np.ndarray, target: float = CONFIDENT_ACCURACY
) -> dict[str, float]:
    """The lowest threshold whose confident answers (max probability >= it) are at least
    `target` right; how many answers it leaves confident and how right they are."""
    order = np.argsort(-confidence)
    right = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)
    ok = np.flatnonzero(right >= target)
    index = int(ok[-1]) if len(ok) else 0
    threshold = float(confidence[order][index])
    confident = confidence >= threshold
    return {
        "threshold": round(threshold, 4),
        "coverage": float(confident.mean()),
        "accuracy_when_confident": float(correct[confident].mean()) if confident.any() else 0.0,
        "accuracy_when_unsure": float(correct[~confident].mean()) if (~confident).any() else 1.0,
    }


def cost_of_big_photos(models: list[DigitModel], digits: D.MnistArrays, count: int) -> list[float]:
    """Server-side CPU ms per 12-megapixel phone JPEG (4032x3024, quality 92): decoding,
    reading the digit and one model call, as the service does them."""
    default = models[0]
    costs = []
    for i in range(count):
        rng = np.random.default_rng([EVAL_SEED, 10_000 + i])
        style = P.random_style(rng, "photo", 4032, 3024)
        style = P.Style(**{**style.__dict__, "jpeg_quality": 92})
        data, _ = P.render(digits.images[i], style, rng)
        started = time.process_time()
        try:
            pixels = read_upload(data, LIMITS).pixels
            default.probabilities(pixels[None].astype(np.float32))
        except UnusableInput:
            pass
        costs.append((time.process_time() - started) * 1000)
    return costs


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    root = D.resolve_data_dir(args.data_dir)
    full = D.load_mnist_split(root, train=True)
    _, val = D.train_val_split(full, min(5000, len(full) // 10))  # mnist_run.py's default split
    test = D.load_mnist_split(root, train=False)
    models = load_models(Path(args.models))
    default = os.environ.get("RNNSERVE_DEFAULT_DIGIT_MODEL", "mnist-bigru")
    models.sort(key=lambda m: (m.name != default, m.name))
    rng = np.random.default_rng(EVAL_SEED)
    kinds = [kind for kind in KINDS for _ in range(args.per_kind)]
    on_desk = args.blanks // 4  # a quarter of the blank pages lie on a desk, in view
    kinds += ["blank"] * (args.blanks - on_desk) + ["blank-desk"] * on_desk
    picks = rng.choice(len(val), size=len(kinds), replace=False)
    started = time.perf_counter()
    rendered = P.pictures(val.images[picks], val.labels[picks], kinds, EVAL_SEED)
    print(
        f"rendered {len(rendered)} pictures in {time.perf_counter() - started:.0f}s",
        file=sys.stderr,
    )
    seen, costs = read_all(rendered)
    digit_rows = [i for i, p in enumerate(rendered) if p.label is not None]
    read_rows = [i for i in digit_rows if seen[i] is not None]
    read_pixels = [seen[i] for i in read_rows]
    pixels = np.stack([p for p in read_pixels if p is not None]).astype(np.float32)
    labels = np.array([rendered[i].label for i in read_rows])
    result: dict[str, Any] = {
        "per_kind": args.per_kind,
        "blanks": args.blanks,
        "models": [m.name for m in models],
        "default_model": models[0].name,
        "kinds": {},
        "blank_refused": float(
            np.mean([seen[i] is None for i, p in enumerate(rendered) if p.kind == "blank"])
        )
        if args.blanks
        else None,
        "blank_desk_refused": float(
            np.mean([seen[i] is None for i, p in enumerate(rendered) if p.kind == "blank-desk"])
        )
        if on_desk
        else None,
        "reading_ms": {
            "p50": float(np.percentile(costs, 50) * 1000),
            "p99": float(np.percentile(costs, 99) * 1000),
        },
        "t10k": {},
        "t10k_confident": {},
        "calibration": {},
        "pixel_calibration": {},
    }
    predictions = {m.name: m.probabilities(pixels) for m in models}
    for kind in KINDS:
        rows = [i for i in digit_rows if rendered[i].kind == kind]
        refused = sum(seen[i] is None for i in rows)
        entry: dict[str, Any] = {"pictures": len(rows), "refused": refused, "accuracy": {}}
        for model in models:
            right = 0
            for j, i in enumerate(read_rows):
                if rendered[i].kind == kind:
                    right += int(predictions[model.name][j].argmax() == labels[j])
            entry["accuracy"][model.name] = right / len(rows)  # a refusal counts as wrong
        result["kinds"][kind] = entry
    photo_rows = [j for j, i in enumerate(read_rows) if rendered[i].kind != "scan"]
    for model in models:
        probs = predictions[model.name][photo_rows]
        correct = probs.argmax(1) == labels[photo_rows]
        result["calibration"][model.name] = calibrate(probs.max(1), correct)
        test_probs = np.concatenate(
            [
                model.probabilities(test.images[s : s + 2000].astype(np.float32))
                for s in range(0, len(test), 2000)
            ]
        )
        result["t10k"][model.name] = float((test_probs.argmax(1) == test.labels).mean())
        # pixel arrays get their own threshold, from the MNIST validation digits
        val_probs = model.probabilities(val.images.astype(np.float32))
        result["pixel_calibration"][model.name] = calibrate(
            val_probs.max(1), val_probs.argmax(1) == val.labels, PIXEL_CONFIDENT_ACCURACY
        )
        threshold = result["pixel_calibration"][model.name]["threshold"]
        result["t10k_confident"][model.name] = float((test_probs.max(1) >= threshold).mean())
    if args.big_photos:
        big = cost_of_big_photos(models, val, args.big_photos)
        result["big_photo_ms"] = {"count": len(big), "p50": float(np.median(big)), "max": max(big)}
    return result


def pixel_entries(calibration: dict[str, float]) -> dict[str, Any]:
    """The pixel arrays' calibration, as the card records it beside the photos'."""
    return {
        "pixel_confidence_threshold": calibration["threshold"],
        "pixel_target": "confident answers right at least "
        f"{PIXEL_CONFIDENT_ACCURACY:.1%} of the time",
        "pixel_confident_share": round(calibration["coverage"], 4),
        "pixel_accuracy_when_confident": round(calibration["accuracy_when_confident"], 4),
        "pixel_measured_on": "MNIST validation digits (held out of training)",
    }


def write_calibration(models_root: Path, result: dict[str, Any]) -> None:
    """Record each model's calibration in its card, where the service reads it."""
    cards = {card.name: card for card in discover_cards(models_root, verify=False)}
    for name, calibration in result["calibration"].items():
        path = cards[name].directory / "card.json"  # the newest version's, the one evaluated
        card = json.loads(path.read_text())
        card["calibration"] = {
            "confidence_threshold": calibration["threshold"],
            "target": f"confident answers right at least {CONFIDENT_ACCURACY:.1%} of the time",
            "confident_share": round(calibration["coverage"], 4),
            "accuracy_when_confident": round(calibration["accuracy_when_confident"], 4),
            "measured_on": f"{result['per_kind'] * (len(KINDS) - 1)} rendered photos "
            f"(training/photo_eval.py, seed {EVAL_SEED})",
            **pixel_entries(result["pixel_calibration"][name]),
            "date": dt.date.today().isoformat(),
        }
        path.write_text(json.dumps(card, indent=2) + "\n")


def render_markdown(result: dict[str, Any], command: str) -> str:
    models = result["models"]
    lines = [
        "# Photos and scans of digits",
        "",
        f"Command: `{command}`  ",
        f"Date: {dt.date.today().isoformat()}  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, no GPU",
        "",
        f"{result['per_kind']} pictures per kind rendered by training/photos.py from MNIST "
        "validation digits (held out of training), read by the service's own steps "
        "(service/imaging/photo.py), classified by each committed ONNX model. 'photo': conditions "
        "at random (ruled lines 60%, shadow 50%, ink black/blue/dark blue/pencil, tilt, blur, "
        "JPEG 60-95); the other rows force one condition on, strongly. A refused digit "
        "counts as wrong.",
        "",
        "| kind | refused | " + " | ".join(models) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in models) + " |",
    ]
    for kind, entry in result["kinds"].items():
        cells = " | ".join(f"{100 * entry['accuracy'][m]:.1f}%" for m in models)
        lines.append(f"| {kind} | {entry['refused']}/{entry['pictures']} | {cells} |")
    lines += [
        "",
        "| model | MNIST t10k | confidence threshold | confident answers "
        "| right when confident | right when unsure | pixel threshold | t10k confident |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for m in models:
        c = result["calibration"][m]
        pixel = result.get("pixel_calibration", {}).get(m)
        lines.append(
            f"| {m} | {100 * result['t10k'][m]:.2f}% | {c['threshold']:.4f} | "
            f"{100 * c['coverage']:.1f}% | {100 * c['accuracy_when_confident']:.2f}% | "
            f"{100 * c['accuracy_when_unsure']:.1f}% | "
            f"{pixel['threshold'] if pixel else '-'} | "
            f"{100 * result['t10k_confident'][m]:.1f}% |"
        )
    lines += [
        "",
        "The confidence threshold applies to photos and scans (calibrated on the rows above but "
        "scans: confident answers right at least "
        f"{CONFIDENT_ACCURACY:.1%} of the time); the pixel threshold to pixel arrays "
        "(calibrated on the 5,000 MNIST validation digits: at least "
        f"{PIXEL_CONFIDENT_ACCURACY:.1%}); t10k confident: MNIST t10k at the pixel threshold.",
        "",
    ]
    if result["blank_refused"] is not None:
        lines.append(
            f"Blank paper (lines, shadows, noise, specks; {result['blanks']} pictures): "
            f"{100 * result['blank_refused']:.1f}% refused with 422."
        )
        if result.get("blank_desk_refused") is not None:
            lines[-1] = (
                f"Blank paper (lines, shadows, noise, specks; {result['blanks']} pictures, a "
                f"quarter of them lying on a desk): {100 * result['blank_refused']:.1f}% of "
                f"the others refused with 422; on a desk (its edge in view, or seen at a "
                f"slant) {100 * result['blank_desk_refused']:.1f}%."
            )
    lines.append(
        f"Reading a 1008x756 picture (decode + service/imaging/photo.py): p50 "
        f"{result['reading_ms']['p50']:.1f} ms, p99 {result['reading_ms']['p99']:.1f} ms CPU."
    )
    if "big_photo_ms" in result:
        big = result["big_photo_ms"]
        lines.append(
            f"A 12-megapixel phone JPEG (4032x3024, quality 92; {big['count']} pictures): "
            f"decode + reading + one {result['default_model']} call: p50 {big['p50']:.1f} ms, "
            f"max {big['max']:.1f} ms CPU."
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.photo_eval",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--models", default="models", help="folder of exported models")
    parser.add_argument("--data-dir", help=f"data root (else ${D.DATA_DIR_ENV}, else the cache)")
    parser.add_argument("--per-kind", type=int, default=300, help="pictures per kind")
    parser.add_argument("--blanks", type=int, default=600, help="blank-paper pictures")
    parser.add_argument("--big-photos", type=int, default=20, help="12 MP JPEGs timed (0: none)")
    parser.add_argument("--out", default="loadtest/results/photo_eval.md")
    parser.add_argument(
        "--write-cards",
        action="store_true",
        help="write each model's calibrated confidence threshold into its card.json",
    )
    args = parser.parse_args(argv)
    result = evaluate(args)
    if args.write_cards:
        write_calibration(Path(args.models), result)
    command = "python -m training.photo_eval " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_markdown(result, command.strip()))
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    print(out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
