"""Data: MNIST from IDX files, a validation split, and a character corpus cut into windows.

MNIST is read straight from the four standard IDX files (gzipped or not) in the layout
torchvision uses, `<root>/MNIST/raw/`, without writing anything next to them: the data root may
be a read-only shared folder. Downloading happens only on request (`download_mnist`).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

DATA_DIR_ENV = "RNNSERVE_DATA_DIR"
MNIST_MEAN = 0.1307  # pixel/255 mean of the MNIST training set
MNIST_STD = 0.3081  # pixel/255 std of the MNIST training set
SPLIT_SEED = 20240101  # fixed: the validation split never depends on the training seed

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


class DataError(RuntimeError):
    """Missing or corrupt data, with a message that says what was expected where."""


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rnnserve" / "data"


def resolve_data_dir(cli_value: str | None) -> Path:
    """Data root: the CLI flag, else $RNNSERVE_DATA_DIR, else the user's cache directory."""
    if cli_value:
        return Path(cli_value).expanduser()
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return default_cache_dir()


def _missing_help(root: Path, wanted: Path) -> str:
    return (
        f"MNIST file not found: {wanted} (looked for it and its .gz form).\n"
        f"Expected the four standard IDX files ({', '.join(MNIST_FILES.values())}, optionally "
        f"gzipped) in {root / 'MNIST' / 'raw'}.\n"
        f"Point --data-dir (or ${DATA_DIR_ENV}) at a folder that holds MNIST/raw/, "
        "or pass --download on a machine with internet to fetch them there."
    )


def _open_idx(root: Path, stem: str) -> bytes:
    raw_dir = root / "MNIST" / "raw"
    for candidate in (raw_dir / stem, raw_dir / f"{stem}.gz"):
        if candidate.is_file():
            try:
                if candidate.suffix == ".gz":
                    with gzip.open(candidate, "rb") as fh:
                        return fh.read()
                return candidate.read_bytes()
            except (OSError, EOFError) as exc:
                raise DataError(f"MNIST file {candidate} is unreadable or corrupt: {exc}") from exc
    raise DataError(_missing_help(root, raw_dir / stem))


def parse_idx(blob: bytes, name: str) -> np.ndarray:
    """Parse an IDX (LeCun) file of unsigned bytes into an array, validating its header."""
    if len(blob) < 4:
        raise DataError(f"{name}: file too short to be an IDX file ({len(blob)} bytes)")
    zero, dtype_code, ndim = struct.unpack(">HBB", blob[:4])
    if zero != 0 or dtype_code != 0x08 or ndim not in (1, 3):
        raise DataError(f"{name}: not an unsigned-byte IDX file (bad magic number)")
    header_len = 4 + 4 * ndim
    if len(blob) < header_len:
        raise DataError(f"{name}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", blob[4:header_len])
    expected = int(np.prod(dims))
    if len(blob) - header_len != expected:
        raise DataError(
            f"{name}: corrupt or truncated IDX data: header says {dims} "
            f"({expected} bytes), file holds {len(blob) - header_len} bytes"
        )
    return np.frombuffer(blob, dtype=np.uint8, offset=header_len).reshape(dims).copy()


@dataclass
class MnistArrays:
    """uint8 images (N, 28, 28) and int64 labels (N,) for one split."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def load_mnist_split(root: Path, train: bool) -> MnistArrays:
    prefix = "train" if train else "test"
    images = parse_idx(_open_idx(root, MNIST_FILES[f"{prefix}_images"]), f"{prefix} images")
    labels = parse_idx(_open_idx(root, MNIST_FILES[f"{prefix}_labels"]), f"{prefix} labels")
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{prefix} images: expected shape (N, 28, 28), got {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{prefix}: {len(images)} images but {labels.shape} labels")
    if labels.max(initial=0) > 9:
        raise DataError(f"{prefix} labels: values outside 0..9")
    return MnistArrays(images=images, labels=labels.astype(np.int64))


def mnist_checksum(root: Path) -> str:
    """sha256 over the decompressed contents of the four files: provenance for model cards."""
    digest = hashlib.sha256()
    for stem in MNIST_FILES.values():
        digest.update(_open_idx(root, stem))
    return digest.hexdigest()


def normalize_images(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 28, 28) scaled to [0, 1] then standardized."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    return x.sub_(MNIST_MEAN).div_(MNIST_STD)


def to_dataset(arrays: MnistArrays) -> TensorDataset:
    return TensorDataset(normalize_images(arrays.images), torch.from_numpy(arrays.labels))


def train_val_split(
    arrays: MnistArrays, val_size: int, seed: int = SPLIT_SEED
) -> tuple[MnistArrays, MnistArrays]:
    """Carve a fixed, seeded validation split out of the training set."""
    if not 0 < val_size < len(arrays):
        raise DataError(
            f"--val-size {val_size}: the training set has {len(arrays)} images, so the "
            f"validation split must hold 1..{len(arrays) - 1} of them"
        )
    order = np.random.default_rng(seed).permutation(len(arrays))
    val_idx, train_idx = np.sort(order[:val_size]), np.sort(order[val_size:])
    return (
        MnistArrays(arrays.images[train_idx], arrays.labels[train_idx]),
        MnistArrays(arrays.images[val_idx], arrays.labels[val_idx]),
    )


def download_mnist(root: Path) -> None:
    """Fetch MNIST into `root` with torchvision (only when the user asked for it)."""
    from torchvision.datasets import MNIST  # heavy import, only on this path

    root.mkdir(parents=True, exist_ok=True)
    for train in (True, False):
        MNIST(root=str(root), train=train, download=True)


# --------------------------------------------------------------------------- text


class Vocabulary:
    """Character <-> id mapping, sorted by code point so it is stable across runs."""

    def __init__(self, chars: list[str]) -> None:
        self.itos = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.itos)}

    @classmethod
    def from_text(cls, text: str) -> Vocabulary:
        return cls(sorted(set(text)))

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        return [self.stoi[c] for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.itos[i] for i in ids)


@dataclass
class Corpus:
    """A text corpus split 90/10 into train/validation ids, vocabulary from the train part."""

    vocab: Vocabulary
    train_ids: torch.Tensor  # (N_train,) int64
    val_ids: torch.Tensor  # (N_val,) int64
    dropped_val_chars: int  # validation characters absent from the training vocabulary
    checksum: str  # sha256 of the corpus file

    @classmethod
    def from_file(cls, path: Path, train_fraction: float = 0.9) -> Corpus:
        if not path.is_file():
            raise DataError(
                f"text corpus not found: {path}. Pass --corpus PATH to a UTF-8 text file "
                f"(Tiny Shakespeare is expected at <data-dir>/text/tinyshakespeare.txt)."
            )
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"text corpus {path} is not valid UTF-8: {exc}") from exc
        if len(text) < 100:
            raise DataError(f"text corpus {path} is too short ({len(text)} characters)")
        split = int(len(text) * train_fraction)
        train_text, val_text = text[:split], text[split:]
        vocab = Vocabulary.from_text(train_text)
        val_kept = [c for c in val_text if c in vocab.stoi]
        return cls(
            vocab=vocab,
            train_ids=torch.tensor(vocab.encode(train_text), dtype=torch.long),
            val_ids=torch.tensor(vocab.encode("".join(val_kept)), dtype=torch.long),
            dropped_val_chars=len(val_text) - len(val_kept),
            checksum=hashlib.sha256(raw).hexdigest(),
        )


def windows(ids: torch.Tensor, seq_len: int, offset: int = 0) -> TensorDataset:
    """Cut ids into non-overlapping (input, target) windows of seq_len, targets shifted by one.

    x[i] = ids[o + i*L : o + (i+1)*L], y[i] = the same window one character later.
    """
    usable = (len(ids) - offset - 1) // seq_len
    if usable < 1:
        raise DataError(f"text too short for one window of {seq_len} characters")
    end = offset + usable * seq_len
    x = ids[offset:end].view(usable, seq_len)
    y = ids[offset + 1 : end + 1].view(usable, seq_len)
    return TensorDataset(x, y)
