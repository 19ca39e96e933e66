"""MNIST IDX loading, the validation split, data-root resolution and the text corpus."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from training import data as D


def test_load_fixture_mnist(mnist_root: Path) -> None:
    train = D.load_mnist_split(mnist_root, train=True)
    test = D.load_mnist_split(mnist_root, train=False)
    assert train.images.shape == (600, 28, 28) and train.images.dtype == np.uint8
    assert test.images.shape == (200, 28, 28)
    assert set(np.unique(train.labels)) == set(range(10))
    # the first MNIST training digit is a 5, the first test digit a 7
    assert train.labels[0] == 5 and test.labels[0] == 7


def test_reads_uncompressed_idx_too(mnist_root: Path, tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in (mnist_root / "MNIST" / "raw").glob("*.gz"):
        (raw / gz.stem).write_bytes(gzip.decompress(gz.read_bytes()))
    a = D.load_mnist_split(tmp_path, train=False)
    b = D.load_mnist_split(mnist_root, train=False)
    assert np.array_equal(a.images, b.images)


def test_normalization_matches_mnist_statistics(mnist_root: Path) -> None:
    x = D.normalize_images(D.load_mnist_split(mnist_root, train=True).images)
    assert x.dtype == torch.float32
    # a 600-image sample: close to (0, 1), not exactly
    assert abs(x.mean().item()) < 0.1 and abs(x.std().item() - 1) < 0.1


def test_validation_split_is_fixed_disjoint_and_complete(mnist_root: Path) -> None:
    full = D.load_mnist_split(mnist_root, train=True)
    train_a, val_a = D.train_val_split(full, 60)
    _train_b, val_b = D.train_val_split(full, 60)
    assert len(train_a) == 540 and len(val_a) == 60
    assert np.array_equal(val_a.images, val_b.images)  # same split every time
    # disjoint and complete: every image lands in exactly one side
    flat = {img.tobytes() for img in full.images}
    assert {i.tobytes() for i in train_a.images} | {i.tobytes() for i in val_a.images} == flat
    _, val_other = D.train_val_split(full, 60, seed=1)
    assert not np.array_equal(val_a.images, val_other.images)
    with pytest.raises(D.DataError, match="--val-size 600"):
        D.train_val_split(full, 600)


def test_missing_data_error_says_where_and_how(tmp_path: Path) -> None:
    with pytest.raises(D.DataError) as err:
        D.load_mnist_split(tmp_path, train=True)
    message = str(err.value)
    assert str(tmp_path / "MNIST" / "raw") in message
    assert "train-images-idx3-ubyte" in message
    assert "--data-dir" in message and "--download" in message


def test_corrupt_data_is_reported(mnist_root: Path, tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    shutil.copytree(mnist_root / "MNIST" / "raw", raw)
    target = raw / "t10k-images-idx3-ubyte.gz"
    blob = gzip.decompress(target.read_bytes())
    target.write_bytes(gzip.compress(blob[:-100]))  # truncated payload
    with pytest.raises(D.DataError, match="corrupt or truncated"):
        D.load_mnist_split(tmp_path, train=False)
    target.write_bytes(b"not gzip at all")
    with pytest.raises(D.DataError, match="unreadable or corrupt"):
        D.load_mnist_split(tmp_path, train=False)
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x09\x01abcd"))
    with pytest.raises(D.DataError, match="bad magic"):
        D.parse_idx(gzip.decompress((raw / "t10k-labels-idx1-ubyte.gz").read_bytes()), "x")


def test_data_dir_resolution_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(D.DATA_DIR_ENV, str(tmp_path / "env"))
    assert D.resolve_data_dir(str(tmp_path / "cli")) == tmp_path / "cli"
    assert D.resolve_data_dir(None) == tmp_path / "env"
    monkeypatch.delenv(D.DATA_DIR_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert D.resolve_data_dir(None) == tmp_path / "cache" / "rnnserve" / "data"


def test_loading_never_writes_to_the_data_root(mnist_root: Path) -> None:
    before = sorted((p.name, p.stat().st_mtime_ns) for p in mnist_root.rglob("*"))
    D.load_mnist_split(mnist_root, train=True)
    D.mnist_checksum(mnist_root)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in mnist_root.rglob("*")) == before


def test_corpus_split_vocab_and_windows(corpus_path: Path) -> None:
    corpus = D.Corpus.from_file(corpus_path)
    text = corpus_path.read_text(encoding="utf-8")
    assert len(corpus.train_ids) == int(len(text) * 0.9)
    assert len(corpus.train_ids) + len(corpus.val_ids) + corpus.dropped_val_chars == len(text)
    assert corpus.vocab.itos == sorted(corpus.vocab.itos)
    assert corpus.vocab.decode(corpus.train_ids[:14].tolist()) == text[:14]
    ds = D.windows(corpus.train_ids, 50, offset=3)
    x, y = ds.tensors
    assert x.shape[1] == 50 and x.shape == y.shape
    assert torch.equal(x[0, 1:], y[0, :-1])  # targets are the inputs shifted by one
    assert torch.equal(x[1, 0:1], y[0, -1:])  # non-overlapping, contiguous windows
    assert torch.equal(x[0], corpus.train_ids[3:53])


def test_corpus_errors(tmp_path: Path) -> None:
    with pytest.raises(D.DataError, match="not found"):
        D.Corpus.from_file(tmp_path / "nope.txt")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe" * 100)
    with pytest.raises(D.DataError, match="UTF-8"):
        D.Corpus.from_file(bad)
