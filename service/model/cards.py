"""Model cards: the contract between training and serving (`models/<name>/<version>/card.json`).

A card says what a model is, what it expects and returns, how it scored, and which files hold
it with their sizes and sha256 digests. This module reads and verifies cards; it uses only the
standard library so that the serving path can load it without torch. The schema is documented
in `models/README.md`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CARD_FILE = "card.json"
# 2: integer `version` (the repository folder's name) and recorded `examples`.
SCHEMA_VERSION = 2
TASKS = ("digit-classification", "next-character")
REQUIRED_KEYS = (
    "schema_version",
    "name",
    "version",
    "task",
    "architecture",
    "inputs",
    "outputs",
    "metrics",
    "training",
    "export",
    "examples",
    "files",
)
FILE_FORMATS = ("onnx", "torchscript")


class CardError(ValueError):
    """A card that is missing, malformed, or does not match the files it describes."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def describe_file(model_dir: Path, relative: str) -> dict[str, Any]:
    """The card entry for one file: its relative path, size and sha256."""
    path = model_dir / relative
    return {"path": relative, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


@dataclass(frozen=True)
class ModelCard:
    """A verified card: every file it names exists inside `directory` and matches its digest."""

    directory: Path
    data: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.data["name"])

    @property
    def version(self) -> int:
        return int(self.data["version"])

    @property
    def task(self) -> str:
        return str(self.data["task"])

    def file_path(self, fmt: str) -> Path:
        """Absolute path of the file in format `fmt` ('onnx' or 'torchscript')."""
        try:
            entry = self.data["files"][fmt]
        except KeyError:
            raise CardError(f"{self.directory / CARD_FILE}: no {fmt!r} file listed") from None
        return self.directory / entry["path"]

    def read_verified(self, fmt: str) -> bytes:
        """The model file in format `fmt`, read once and checked against the card: the
        bytes a backend loads are the bytes whose digest matched (no check-then-reopen)."""
        entry = self.data["files"].get(fmt)
        if not isinstance(entry, dict):
            raise CardError(f"{self.directory / CARD_FILE}: no {fmt!r} file listed")
        path = _resolve_inside(self.directory, entry.get("path"), self.directory / CARD_FILE)
        return check_bytes(path, entry)

    def input_spec(self, name: str) -> dict[str, Any]:
        for spec in self.data["inputs"]:
            if spec["name"] == name:
                return dict(spec)
        raise CardError(f"{self.directory / CARD_FILE}: no input named {name!r}")


def _resolve_inside(model_dir: Path, relative: object, card_path: Path) -> Path:
    """A card may only name plain files in its own folder: no absolute paths, no `..`, no
    sub-folders, and no symlink that resolves elsewhere."""
    if not isinstance(relative, str) or not relative:
        raise CardError(f"{card_path}: a file entry has no usable 'path' ({relative!r})")
    candidate = Path(relative)
    root = model_dir.resolve()
    resolved = (model_dir / candidate).resolve()
    plain_name = len(candidate.parts) == 1 and relative not in (".", "..")
    if candidate.is_absolute() or not plain_name or resolved.parent != root:
        raise CardError(
            f"{card_path}: file path {relative!r} points outside the model directory {model_dir}"
        )
    return resolved


def verify_files(model_dir: Path, data: dict[str, Any], card_path: Path) -> None:
    files = data.get("files")
    if not isinstance(files, dict) or not files:
        raise CardError(f"{card_path}: 'files' must list at least one file")
    for fmt, entry in files.items():
        if fmt not in FILE_FORMATS:
            raise CardError(f"{card_path}: unknown file format {fmt!r} (expected {FILE_FORMATS})")
        if not isinstance(entry, dict):
            raise CardError(f"{card_path}: entry for {fmt!r} must be an object")
        path = _resolve_inside(model_dir, entry.get("path"), card_path)
        if not path.is_file():
            raise CardError(f"{card_path}: {fmt} file {path} is missing")
        check_bytes(path, entry)


def check_bytes(path: Path, entry: dict[str, Any], data: bytes | None = None) -> bytes:
    """The bytes of `path` (or `data`, already read from it), checked against the card's entry
    (size and sha256); CardError when they differ."""
    if data is None:
        if not path.is_file():
            raise CardError(f"{path}: the file named by the card is missing")
        data = path.read_bytes()
    if len(data) != entry.get("bytes"):
        raise CardError(
            f"{path}: size {len(data)} bytes does not match the card ({entry.get('bytes')} "
            "bytes); the file was changed or truncated"
        )
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry.get("sha256"):
        raise CardError(
            f"{path}: sha256 {digest} does not match the card ({entry.get('sha256')}); "
            "the file was modified after export: re-export it or restore it"
        )
    return data


def load_card(model_dir: Path, verify: bool = True) -> ModelCard:
    """Read `model_dir/card.json`, check its schema and (by default) every file it names."""
    card_path = model_dir / CARD_FILE
    if not card_path.is_file():
        raise CardError(f"{card_path}: model card is missing")
    try:
        data = json.loads(card_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CardError(f"{card_path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CardError(f"{card_path}: the card must be a JSON object")
    missing = [key for key in REQUIRED_KEYS if key not in data]
    if missing:
        raise CardError(f"{card_path}: missing keys {missing}")
    if data["schema_version"] != SCHEMA_VERSION:
        raise CardError(
            f"{card_path}: schema_version {data['schema_version']!r}, expected {SCHEMA_VERSION}"
            + (
                " (a schema 1 card: python -m training.upgrade_card upgrades it)"
                if data["schema_version"] == 1
                else ""
            )
        )
    version = data["version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CardError(f"{card_path}: version {version!r} is not a positive integer")
    if data["task"] not in TASKS:
        raise CardError(f"{card_path}: unknown task {data['task']!r} (expected one of {TASKS})")
    if verify:
        verify_files(model_dir, data, card_path)
    return ModelCard(directory=model_dir, data=data)


def short_name(name: str) -> str:
    """'mnist-birnn' -> 'birnn': the alias clients may use for a classifier."""
    return name.removeprefix("mnist-")
