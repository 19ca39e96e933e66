"""What a reader of the docs brings along, made for the tests that run the pages' commands
(tests/test_doc_commands.py), called by the pages' hidden `<!-- doc-run: ... -->` directives:

    photo FILE DIGIT           a phone-style photo of an MNIST test digit (training/photos.py)
    new-version NAME N         version N of NAME in $DOC_MODEL_DIR: a copy of version 1,
                               renamed into place as an export does
    new-version NAME N --corrupt   the same with one flipped bit in its ONNX file
"""

from __future__ import annotations

import argparse
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from loadtest.bench_swap import corrupt_byte, new_version
from training.data import load_mnist_split
from training.photos import random_style, render

FIXTURES = Path(__file__).resolve().parent / "fixtures"
PHOTO_SEED = 7


def make_photo(target: Path, digit: int) -> None:
    """The first MNIST test digit of its class, rendered as a JPEG photo with seed PHOTO_SEED."""
    split = load_mnist_split(FIXTURES, train=False)
    pixels = split.images[int(np.flatnonzero(split.labels == digit)[0])]
    encoded, _ = render(
        pixels, random_style(np.random.default_rng(PHOTO_SEED)), np.random.default_rng(PHOTO_SEED)
    )
    buffer = io.BytesIO()
    Image.open(io.BytesIO(encoded)).convert("RGB").save(buffer, format="JPEG", quality=90)
    target.write_bytes(buffer.getvalue())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    photo = commands.add_parser("photo")
    photo.add_argument("file", type=Path)
    photo.add_argument("digit", type=int)
    version = commands.add_parser("new-version")
    version.add_argument("name")
    version.add_argument("version", type=int)
    version.add_argument("--corrupt", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "photo":
        make_photo(args.file, args.digit)
    else:
        repository = Path(os.environ["DOC_MODEL_DIR"])
        new_version(repository, args.name, args.version, corrupt_byte if args.corrupt else None)


if __name__ == "__main__":
    main()
