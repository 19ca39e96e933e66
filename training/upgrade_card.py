"""Upgrade a model exported before the versioned repository (card schema 1) to schema 2.

    python -m training.upgrade_card models/mnist-rnn [models/char-rnn ...]

Schema 1 kept a model's files directly in `models/<name>/` with a free-form version string.
Schema 2 (the repository, service/model/repository.py) keeps them in `models/<name>/<N>/` with
the integer version N and recorded examples: inputs with the outputs PyTorch gives for them,
which the service re-runs before a model serves. This moves the files into version 1 (or
`--version`), records the examples from the TorchScript file with the export's own inputs
(training/export.py: real MNIST test digits when the data is at hand), and checks the result
as the service will: checksums, then the ONNX file against the examples in onnxruntime. The
model files are not touched, so their sha256 stay what they were.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from service.model.cards import CARD_FILE, SCHEMA_VERSION, CardError
from service.model.repository import load_version
from service.model.runtime import OnnxBackend
from service.model.verify import verify_loaded
from training.export import example_feeds, record_examples, torch_runner
from training.nets import CharLM, CharLMConfig, ClassifierConfig, SequenceClassifier


def reference_of(card: dict[str, Any], folder: Path) -> Any:
    """The TorchScript file as a runner, and an untrained module of the card's architecture
    (example_feeds needs only its kind and sizes)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.load(str(folder / card["files"]["torchscript"]["path"]))
    scripted.eval()
    arch = {k: v for k, v in card["architecture"].items() if k not in ("class", "parameters")}
    shape: torch.nn.Module
    if card["architecture"]["class"] == "CharLM":
        shape = CharLM(CharLMConfig(**arch))
    else:
        shape = SequenceClassifier(ClassifierConfig(**arch))
    return torch_runner(scripted), shape


def upgrade(folder: Path, version: int, data_dir: str | None) -> Path:
    """Upgrade the schema-1 model in `folder`; the new version folder."""
    card_path = folder / CARD_FILE
    if not card_path.is_file():
        raise CardError(f"{card_path}: no card directly in this folder: nothing to upgrade")
    card = json.loads(card_path.read_text(encoding="utf-8"))
    if card.get("schema_version") != 1:
        raise CardError(f"{card_path}: schema_version {card.get('schema_version')!r}, not 1")
    target = folder / str(version)
    if target.exists():
        raise CardError(f"{target} exists already: choose another --version")
    runner, shape = reference_of(card, folder)
    card["schema_version"] = SCHEMA_VERSION
    card["version"] = version
    examples = record_examples(
        runner,
        example_feeds(shape, data_dir),
        [o["name"] for o in card["outputs"]],
        float(card["export"]["tolerance"]),
    )
    # the examples go before `files`, as export writes them
    files = card.pop("files")
    card["examples"] = examples
    card["files"] = files
    staging = folder / f".incoming-{version}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    for entry in files.values():
        shutil.move(str(folder / entry["path"]), str(staging / entry["path"]))
    card_path.unlink()
    (staging / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
    staging.rename(target)
    loaded = load_version(folder.parent, folder.name, version)
    worst = verify_loaded(loaded, OnnxBackend(loaded, "cpu", 1, required=False))
    print(f"{folder.name}: -> {target}, ONNX within {worst:.2e} of the examples", file=sys.stderr)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m training.upgrade_card",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("folders", type=Path, nargs="+", help="schema-1 model folders")
    parser.add_argument("--version", type=int, default=1, help="the version they become")
    parser.add_argument("--data-dir", help="data root for the examples' MNIST digits")
    args = parser.parse_args(argv)
    try:
        for folder in args.folders:
            upgrade(folder, args.version, args.data_dir)
    except CardError as exc:
        raise SystemExit(f"upgrade failed: {exc}") from None


if __name__ == "__main__":
    main()
