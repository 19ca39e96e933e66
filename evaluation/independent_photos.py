"""How well the service reads digit photos it was not tuned on: pictures from a second,
independently written renderer (evaluation/scene.py, evaluation/strokes.py), read by the
service's own steps (read_upload, as training/photo_eval.py does), classified by
every committed ONNX digit model; and the UCI optical digits (another collection) upscaled.

    python -m evaluation.independent_photos --per-condition 100 --seed 31 \\
        --out loadtest/results/independent_photos.md

An instrument only: nothing here may choose thresholds, calibrate or train (the renderer that
those use is training/photos.py, which this package never imports). Reports, per condition
and model: accuracy (a refused digit counts as wrong), refusals by reason, and how the
service's `confident` flag (the card's calibrated threshold and the input check) splits the
misreads and the right answers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image

from evaluation.scene import CONDITIONS, DigitSource, render_picture
from service.errors import UnusableInput
from service.imaging.uploads import ImageLimits, read_upload
from service.model.inference import UNCALIBRATED_THRESHOLD
from service.model.input_check import InputCheck
from service.model.numerics import normalize, softmax
from service.model.repository import discover_cards

DEFAULT_SEED = 31  # issue #31; any seed is as good, but results name the one they used
LIMITS = ImageLimits(max_pixels=50_000_000, max_side=20_000, max_aspect=20.0)  # photo_eval's
UCI_SIZES = (28, 56, 112)
REFUSALS = ("no visible digit", "no single digit")  # the reading's two kinds of 422


@dataclass
class DigitModel:
    """A committed classifier as the service judges its answers: probabilities from the ONNX
    file, `confident` = top probability >= the card's calibrated threshold and the 28x28
    reading passes the card's input check (service/engine/pipeline.py's Classified)."""

    name: str
    session: ort.InferenceSession
    normalization: dict[str, float]
    threshold: float
    input_check: InputCheck | None

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        x = normalize(pixels, self.normalization)
        (logits,) = self.session.run(None, {self.session.get_inputs()[0].name: x})
        return softmax(np.asarray(logits))

    def confident(self, pixels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
        sure = probabilities.max(axis=1) >= self.threshold
        if self.input_check is not None:
            sure &= self.input_check.typical(pixels)
        return np.asarray(sure)


def load_models(models_root: Path) -> list[DigitModel]:
    """Every digit classifier in the repository (each model's served version)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    loaded = []
    for card in discover_cards(models_root):
        if card.task != "digit-classification":
            continue
        session = ort.InferenceSession(
            card.read_verified("onnx"), options, providers=["CPUExecutionProvider"]
        )
        calibration = card.data.get("calibration") or {}
        loaded.append(
            DigitModel(
                card.name,
                session,
                card.input_spec("pixels")["normalization"],
                float(calibration.get("confidence_threshold", UNCALIBRATED_THRESHOLD)),
                InputCheck.from_card(card.data.get("input_check")),
            )
        )
    return loaded


def read(data: bytes) -> tuple[np.ndarray | None, str]:
    """The service's reading of one upload: the 28x28 pixels, or None and why it was
    refused."""
    try:
        return read_upload(data, LIMITS).pixels, ""
    except UnusableInput as exc:
        message = str(exc)
        return None, next((r for r in REFUSALS if r in message), "other")


def score(
    models: list[DigitModel], labels: np.ndarray, readings: list[np.ndarray | None]
) -> dict[str, dict[str, int]]:
    """Per model: right answers, misreads, and how many of each were not confident (refused
    pictures count as neither: they are wrong, and reported apart)."""
    kept = [i for i, r in enumerate(readings) if r is not None]
    read_ones = [r for r in readings if r is not None]
    out = {}
    for model in models:
        entry = {"right": 0, "misread": 0, "right_unsure": 0, "misread_unsure": 0}
        if kept:
            pixels = np.stack(read_ones).astype(np.float32)
            probs = model.probabilities(pixels)
            right = probs.argmax(axis=1) == labels[kept]
            unsure = ~model.confident(pixels, probs)
            entry = {
                "right": int(right.sum()),
                "misread": int((~right).sum()),
                "right_unsure": int((right & unsure).sum()),
                "misread_unsure": int((~right & unsure).sum()),
            }
        out[model.name] = entry
    return out


def uci_picture(image_8x8: np.ndarray, size: int, margin: bool) -> bytes:
    """A UCI digit (8x8, 0..16) as a plain black-on-white PNG, upscaled (bicubic) to
    size x size; with `margin`, on white paper a quarter of the size wide on each side."""
    ink = np.clip(image_8x8 * (255 / 16), 0, 255).astype(np.uint8)
    digit = Image.fromarray(255 - ink).resize((size, size), Image.Resampling.BICUBIC)
    if margin:
        pad = size // 4
        paper = Image.new("L", (size + 2 * pad, size + 2 * pad), 255)
        paper.paste(digit, (pad, pad))
        digit = paper
    buffer = io.BytesIO()
    digit.save(buffer, format="PNG")
    return buffer.getvalue()


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    models = load_models(Path(args.models))
    if not models:
        raise SystemExit(f"no digit models under {args.models}")
    names = [m.name for m in models]
    default = os.environ.get("RNNSERVE_DEFAULT_DIGIT_MODEL", "mnist-bigru")
    default = default if default in names else names[0]
    root = None if args.glyphs_only else _data_root(args.data_dir)
    digits = DigitSource.from_data_dir(root)
    conditions = args.conditions.split(",") if args.conditions else list(CONDITIONS)
    result: dict[str, Any] = {
        "models": names,
        "default_model": default,
        "thresholds": {m.name: m.threshold for m in models},
        "per_condition": args.per_condition,
        "seed": args.seed,
        "sources": "MNIST t10k traced + glyph templates" if root else "glyph templates",
        "revision": args.revision or revision(),
        "conditions": {},
        "uci": {},
    }
    render_s, read_ms = 0.0, []
    examples = Path(args.save_examples) if args.save_examples else None
    for condition in conditions:
        labels, sources, readings, reasons = [], [], [], []
        for index in range(args.per_condition):
            started = time.perf_counter()
            picture = render_picture(condition, args.seed, index, digits)
            render_s += time.perf_counter() - started
            if examples is not None and index < 4:
                examples.mkdir(parents=True, exist_ok=True)
                name = f"{condition}-{index}-label{picture.label}-{picture.source}.jpg"
                (examples / name).write_bytes(picture.data)
            started = time.perf_counter()
            pixels, reason = read(picture.data)
            read_ms.append(1000 * (time.perf_counter() - started))
            labels.append(picture.label)
            sources.append(picture.source)
            readings.append(pixels)
            reasons.append(reason)
        label_array = np.asarray(labels)
        entry: dict[str, Any] = {
            "pictures": len(labels),
            "refused": {r: reasons.count(r) for r in (*REFUSALS, "other") if r in reasons},
            "models": score(models, label_array, readings),
            "by_source": {},
        }
        for source in sorted(set(sources)):
            picked = [i for i, s in enumerate(sources) if s == source]
            part = score(
                [m for m in models if m.name == default],
                label_array[picked],
                [readings[i] for i in picked],
            )
            entry["by_source"][source] = {"pictures": len(picked), **part[default]}
        result["conditions"][condition] = entry
        print(f"{condition}: {_summary(entry, default)}", file=sys.stderr)
    if args.uci > 0:
        from sklearn.datasets import load_digits  # bundled with scikit-learn: offline

        uci = load_digits()
        chosen = np.random.default_rng(args.seed).permutation(len(uci.target))[: args.uci]
        for size in args.uci_sizes:
            for margin in (False, True):
                pairs = [read(uci_picture(uci.images[i], size, margin)) for i in chosen]
                readings = [p for p, _ in pairs]
                reasons = [r for _, r in pairs]
                key = f"{size}px{' + margin' if margin else ''}"
                result["uci"][key] = {
                    "pictures": len(chosen),
                    "refused": {r: reasons.count(r) for r in (*REFUSALS, "other") if r in reasons},
                    "models": score(models, uci.target[chosen], readings),
                }
                print(f"uci {key}: {_summary(result['uci'][key], default)}", file=sys.stderr)
    count = max(1, len(read_ms))
    result["render_ms_per_picture"] = 1000 * render_s / count
    result["read_ms"] = {"p50": float(np.percentile(read_ms, 50)) if read_ms else 0.0}
    return result


def revision() -> str:
    """Which reading and models were measured: the commit of the checkout that holds the
    imported service package, and whether service/ or models/ differ from it (someone else's
    edits in progress would otherwise be measured unnamed)."""
    checkout = Path(read_upload.__code__.co_filename).resolve().parents[2]

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(checkout), *args], capture_output=True, text=True, check=False
        )
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return "unknown (not a git checkout)"
    dirty = git("status", "--porcelain", "--", "service", "models")
    return commit + (" with uncommitted changes in service/ or models/" if dirty else ", clean")


def _data_root(cli_value: str | None) -> Path | None:
    """MNIST's data root: the flag, else $RNNSERVE_DATA_DIR, else ../shared/data beside the
    checkout (the Makefile's default), else none (glyph templates only, said in the results)."""
    candidates = [cli_value, os.environ.get("RNNSERVE_DATA_DIR")]
    candidates.append(str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    for candidate in candidates:
        if candidate and (Path(candidate) / "MNIST" / "raw").is_dir():
            return Path(candidate)
    if cli_value:
        raise SystemExit(f"{cli_value}: no MNIST/raw/ there")
    return None


def _refused(entry: dict[str, Any]) -> int:
    return int(sum(entry["refused"].values()))


def _accuracy(entry: dict[str, Any], model: str) -> float:
    return float(entry["models"][model]["right"] / max(1, entry["pictures"]))


def _summary(entry: dict[str, Any], model: str) -> str:
    return (
        f"{model} {100 * _accuracy(entry, model):.1f}%, "
        f"refused {_refused(entry)}/{entry['pictures']}"
    )


def _share(part: int, whole: int) -> str:
    return f"{part}/{whole}" if whole else "0/0"


def render_markdown(result: dict[str, Any], command: str) -> str:
    models, default = result["models"], result["default_model"]
    lines = [
        "# Photos from an independent renderer, and UCI digits",
        "",
        f"Command: `{command}`  ",
        f"Date: {dt.date.today().isoformat()}  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, no GPU  ",
        f"Reading and models measured: {result['revision']}",
        "",
        f"{result['per_condition']} pictures per condition (seed {result['seed']}) rendered by "
        "evaluation/scene.py, a renderer written independently of training/photos.py and used "
        "only here (never for training, thresholds or calibration): digits from "
        f"{result['sources']} (half each), re-drawn as pen trajectories with a pen model, on "
        "paper, under light, through a camera, saved as JPEG. Each row forces one condition on "
        "over everyday settings (`phone`: everything at random). Read by the service's own "
        "steps (service/imaging/uploads.py's read_upload), classified by each "
        "committed ONNX model. A refused digit counts as wrong.",
        "",
        "| condition | what | refused | " + " | ".join(models) + " |",
        "| --- | --- | ---: | " + " | ".join("---:" for _ in models) + " |",
    ]
    totals = {"pictures": 0, "refused": 0, **{m: 0 for m in models}}
    for condition, entry in result["conditions"].items():
        cells = " | ".join(f"{100 * _accuracy(entry, m):.1f}%" for m in models)
        refused = _share(_refused(entry), entry["pictures"])
        lines.append(f"| {condition} | {CONDITIONS[condition]} | {refused} | {cells} |")
        totals["pictures"] += entry["pictures"]
        totals["refused"] += _refused(entry)
        for m in models:
            totals[m] += entry["models"][m]["right"]
    if result["conditions"]:
        n = max(1, totals["pictures"])
        cells = " | ".join(f"{100 * totals[m] / n:.1f}%" for m in models)
        lines.append(
            f"| **all** | every condition above | {totals['refused']}/{totals['pictures']} "
            f"| {cells} |"
        )
        lines += [
            "",
            f"Refusals by reason, and the {default} model (the default) by digit source "
            "(accuracy, refused counted wrong):",
            "",
            "| condition | no visible digit | no single digit | other 422 | "
            + " | ".join(f"{s} digits" for s in _sources(result))
            + " |",
            "| --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in _sources(result)) + " |",
        ]
        for condition, entry in result["conditions"].items():
            counts = [str(entry["refused"].get(r, 0)) for r in (*REFUSALS, "other")]
            by_source = []
            for source in _sources(result):
                part = entry["by_source"].get(source)
                if part is None:
                    by_source.append("-")
                else:
                    share = part["right"] / max(1, part["pictures"])
                    by_source.append(f"{100 * share:.1f}% of {part['pictures']}")
            lines.append(f"| {condition} | " + " | ".join(counts + by_source) + " |")
        lines += [
            "",
            "The service's `confident` flag (top probability >= the card's calibrated "
            "threshold, and the 28x28 reading passes the card's input check), over every "
            "picture above that was read (refused ones are not answered):",
            "",
            "| model | threshold | misreads flagged not confident | right answers not confident |",
            "| --- | ---: | ---: | ---: |",
        ]
        for m in models:
            misread = sum(e["models"][m]["misread"] for e in result["conditions"].values())
            misread_unsure = sum(
                e["models"][m]["misread_unsure"] for e in result["conditions"].values()
            )
            right = sum(e["models"][m]["right"] for e in result["conditions"].values())
            right_unsure = sum(
                e["models"][m]["right_unsure"] for e in result["conditions"].values()
            )
            lines.append(
                f"| {m} | {result['thresholds'][m]:.4f} | {_share(misread_unsure, misread)} "
                f"({_percent(misread_unsure, misread)}) | {_share(right_unsure, right)} "
                f"({_percent(right_unsure, right)}) |"
            )
        lines += [
            "",
            f"Per condition, {default}: misreads flagged not confident / misreads, and right "
            "answers not confident / right answers:",
            "",
            "| condition | misreads not confident | right answers not confident |",
            "| --- | ---: | ---: |",
        ]
        for condition, entry in result["conditions"].items():
            e = entry["models"][default]
            lines.append(
                f"| {condition} | {_share(e['misread_unsure'], e['misread'])} "
                f"| {_share(e['right_unsure'], e['right'])} |"
            )
    if result["uci"]:
        lines += [
            "",
            "UCI optical digits (scikit-learn's bundled copy: 43 writers, 8x8, 17 grey levels; "
            f"{next(iter(result['uci'].values()))['pictures']} of them, chosen by the seed): "
            "plain black on white PNGs, upscaled bicubic to each size, alone or on white "
            "paper a quarter of the size wide on each side.",
            "",
            "| UCI picture | refused | " + " | ".join(models) + " |",
            "| --- | ---: | " + " | ".join("---:" for _ in models) + " |",
        ]
        for key, entry in result["uci"].items():
            cells = " | ".join(f"{100 * _accuracy(entry, m):.1f}%" for m in models)
            lines.append(f"| {key} | {_share(_refused(entry), entry['pictures'])} | {cells} |")
    lines += [
        "",
        f"Rendering: {result['render_ms_per_picture']:.0f} ms per picture; reading (decode + "
        f"read_upload): p50 {result['read_ms']['p50']:.1f} ms (wall, on this machine).",
    ]
    return "\n".join(lines) + "\n"


def _sources(result: dict[str, Any]) -> list[str]:
    return sorted({s for e in result["conditions"].values() for s in e["by_source"]})


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m evaluation.independent_photos",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--per-condition", type=int, default=100, help="pictures per condition")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--out", default="loadtest/results/independent_photos.md")
    parser.add_argument("--models", default="models", help="folder of exported models")
    parser.add_argument(
        "--data-dir", help="data root holding MNIST/raw/ (else $RNNSERVE_DATA_DIR, ../shared/data)"
    )
    parser.add_argument(
        "--glyphs-only", action="store_true", help="no MNIST digits: glyph templates only"
    )
    parser.add_argument("--conditions", help=f"comma-separated subset of: {', '.join(CONDITIONS)}")
    parser.add_argument("--uci", type=int, default=300, help="UCI digits per size (0: none)")
    parser.add_argument(
        "--uci-sizes",
        type=lambda v: [int(s) for s in v.split(",")],
        default=list(UCI_SIZES),
        help="comma-separated sides in pixels",
    )
    parser.add_argument("--save-examples", help="write the first 4 JPEGs per condition here")
    parser.add_argument(
        "--revision", help="what was measured, when not a git checkout (else from git)"
    )
    args = parser.parse_args(argv)
    unknown = set(args.conditions.split(",")) - set(CONDITIONS) if args.conditions else set()
    if unknown:
        parser.error(f"unknown conditions: {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = evaluate(args)
    shown = argv if argv is not None else sys.argv[1:]
    command = " ".join(["python -m evaluation.independent_photos", *shown])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_markdown(result, command.strip()))
    print(out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
