"""Re-trace committed classifier TorchScript files with the current model code, same weights.

Why: a change to how a model is *traced*, not to what it learned, must reach the committed
`model.ts` files without a retraining. The first GPU run found one: the classifier let the RNN
make its own zero state, and a trace bakes that state's device (the CPU it was traced on) into
the file, so `model.ts` failed on CUDA. This rebuilds the module from the card's architecture,
loads the old file's weights, traces it again, checks that the new file gives the old file's
outputs on CPU (identical up to float noise) and that its code names no device, then writes it
and updates the card's checksum. The ONNX file is untouched (its zeros already follow the
batch).

    python -m training.retrace models/mnist-rnn/1 models/mnist-birnn/1 models/mnist-bigru/1
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import time
import warnings
from pathlib import Path

import torch

from training.export import classifier_spec, export_torchscript
from training.nets import ClassifierConfig, SequenceClassifier

# Outputs of the re-traced file must match the old one within this (same weights, same ops).
TOLERANCE = 1e-5


def baked_devices(module: torch.jit.ScriptModule) -> list[str]:
    """Lines of a TorchScript module's code (its submodules' too) that name a fixed device:
    such a file runs only on that device, whatever `map_location` says."""
    return [
        f"{name or 'forward'}: {line.strip()}"
        for name, sub in module.named_modules()
        if hasattr(sub, "code")
        for line in sub.code.splitlines()
        if "torch.device(" in line
    ]


def rebuilt_classifier(
    card: dict[str, object], weights: dict[str, torch.Tensor]
) -> SequenceClassifier:
    architecture = dict(card["architecture"])  # type: ignore[call-overload]
    names = {f.name for f in dataclasses.fields(ClassifierConfig)}
    model = SequenceClassifier(
        ClassifierConfig(**{k: architecture[k] for k in names if k in architecture})
    )
    model.load_state_dict(weights)
    return model.eval()


@dataclasses.dataclass(frozen=True)
class Retraced:
    model: str
    baked_before: list[str]
    max_abs_diff: float


def retrace(model_dir: Path) -> Retraced:
    """Re-trace one committed classifier in place; return what changed."""
    card_path = model_dir / "card.json"
    card = json.loads(card_path.read_text())
    if card["task"] != "digit-classification":
        raise SystemExit(
            f"{model_dir}: only classifiers are re-traced (the char model takes its state)"
        )
    ts_path = model_dir / card["files"]["torchscript"]["path"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        old = torch.jit.load(str(ts_path), map_location="cpu").eval()
    model = rebuilt_classifier(card, {k: v.detach().clone() for k, v in old.state_dict().items()})
    new_path = ts_path.with_suffix(".new.ts")
    export_torchscript(model, classifier_spec(model), new_path)
    new = torch.jit.load(str(new_path), map_location="cpu").eval()
    probe = torch.rand(
        64,
        model.config.seq_len,
        model.config.input_size,
        generator=torch.Generator().manual_seed(0),
    )
    with torch.inference_mode():
        diff = float((new(probe) - old(probe)).abs().max())
    if diff > TOLERANCE or baked_devices(new):
        new_path.unlink()
        raise SystemExit(f"{model_dir}: re-trace differs by {diff} or bakes {baked_devices(new)}")
    before = baked_devices(old)
    new_path.replace(ts_path)
    data = ts_path.read_bytes()
    card["files"]["torchscript"].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    card["export"]["torchscript"]["retraced"] = {
        "date": time.strftime("%Y-%m-%d"),
        "why": "the zero state followed the tracing device (cpu); now it follows the input",
        "max_abs_diff_vs_previous_file": diff,
    }
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    return Retraced(card["name"], before, diff)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dirs", nargs="+", type=Path)
    args = parser.parse_args(argv)
    for model_dir in args.model_dirs:
        print(retrace(model_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
