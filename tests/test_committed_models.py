"""The committed default models: verified cards, runnable ONNX files, the promised quality."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from service.model.cards import CardError, load_card
from service.model.numerics import normalize
from service.model.repository import discover_cards
from tests.conftest import ROOT
from training.data import load_mnist_split
from training.retrace import baked_devices

MODELS = ROOT / "models"
EXPECTED = {"mnist-rnn", "mnist-birnn", "mnist-bigru", "char-rnn"}


def test_every_default_model_is_committed_and_verifies() -> None:
    cards = {c.name: c for c in discover_cards(MODELS)}
    assert set(cards) >= EXPECTED
    for card in cards.values():
        assert not card.data["training"]["dry_run"], card.name
        for entry in card.data["files"].values():
            assert entry["bytes"] < 5_000_000, f"{card.name}/{entry['path']} is not small"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_committed_onnx_runs_at_batch_1_and_256(name: str) -> None:
    card = load_card(MODELS / name / "1")
    session = ort.InferenceSession(str(card.file_path("onnx")), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    if card.task == "digit-classification":
        for batch in (1, 256):
            (logits,) = session.run(
                None, {"pixels": rng.standard_normal((batch, 28, 28), dtype=np.float32)}
            )
            assert logits.shape == (batch, 10) and np.isfinite(logits).all()
        return
    rows, _, hidden = card.input_spec("state")["shape"]
    vocab = len(card.data["vocabulary"])
    for batch in (1, 256):
        for seq in (1, 64):
            ids = rng.integers(0, vocab, (batch, seq), dtype=np.int64)
            state = np.zeros((rows, batch, hidden), np.float32)
            logits, state_out = session.run(None, {"ids": ids, "state": state})
            assert logits.shape == (batch, seq, vocab) and state_out.shape == state.shape


def onnx_session(name: str) -> tuple[ort.InferenceSession, dict[str, Any]]:
    card = load_card(MODELS / name / "1")
    session = ort.InferenceSession(str(card.file_path("onnx")), providers=["CPUExecutionProvider"])
    return session, card.data


@pytest.mark.parametrize("name", ["mnist-rnn", "mnist-birnn", "mnist-bigru"])
def test_committed_digit_models_read_mnist_test_digits(name: str, mnist_root: Path) -> None:
    """Each committed classifier, run here on the fixture's 200 MNIST t10k digits (not on its
    card's word): all three scored 98.5-100% on them when this was written; 1.5% is three
    digits. The card's own figure is the whole t10k."""
    session, card = onnx_session(name)
    test = load_mnist_split(mnist_root, train=False)
    x = normalize(test.images.astype(np.float32), card["inputs"][0]["normalization"])
    (logits,) = session.run(None, {"pixels": x})
    accuracy = float((logits.argmax(axis=1) == test.labels).mean())
    assert accuracy >= 0.98, f"{name}: {accuracy:.1%} on the fixture digits"
    assert card["metrics"]["test_accuracy"] >= 0.99, card["metrics"]


def test_committed_char_model_predicts_shakespeare(corpus_path: Path) -> None:
    """The char model's loss, computed here on three 2,000-character passages of the fixture
    text (the corpus' opening, which the model trained on: 1.34-1.51 nats/char when this was
    written), is no worse than its card's validation figure (1.57) and not suspiciously low."""
    session, card = onnx_session("char-rnn")
    stoi = {c: i for i, c in enumerate(card["vocabulary"])}
    rows, _, hidden = card["inputs"][1]["shape"]
    text = corpus_path.read_text()
    losses = []
    for start in (0, 20_000, 38_000):
        ids = np.array([[stoi[c] for c in text[start : start + 2000]]], dtype=np.int64)
        state = np.zeros((rows, 1, hidden), np.float32)
        logits, _ = session.run(None, {"ids": ids[:, :-1], "state": state})
        z = logits[0].astype(np.float64)
        z -= z.max(axis=1, keepdims=True)
        log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        losses.append(float(-log_probs[np.arange(ids.shape[1] - 1), ids[0, 1:]].mean()))
    loss = float(np.mean(losses))
    assert 1.2 < loss <= card["metrics"]["val_loss_nats_per_char"] + 0.02, losses


def test_committed_architectures_are_as_named() -> None:
    cards = {c.name: c.data for c in discover_cards(MODELS)}
    assert cards["mnist-birnn"]["architecture"]["bidirectional"] is True
    assert cards["mnist-bigru"]["architecture"]["bidirectional"] is True
    assert cards["mnist-rnn"]["architecture"]["bidirectional"] is False
    assert {cards[n]["architecture"]["cell"] for n in ("mnist-rnn", "mnist-birnn")} == {"rnn"}
    assert cards["mnist-bigru"]["architecture"]["cell"] == "gru"
    assert cards["char-rnn"]["architecture"]["cell"] == "lstm"


def test_tampering_one_byte_of_a_committed_file_is_caught(tmp_path: Path) -> None:
    for name in sorted(EXPECTED):
        copy = shutil.copytree(MODELS / name / "1", tmp_path / name)
        card = json.loads((copy / "card.json").read_text())
        target = copy / card["files"]["torchscript"]["path"]
        blob = bytearray(target.read_bytes())
        blob[-1] ^= 0x01
        target.write_bytes(bytes(blob))
        with pytest.raises(CardError, match=rf"{name}/model\.ts: sha256"):
            load_card(copy)


def test_committed_torchscript_files_follow_the_device_they_are_loaded_on() -> None:
    """A trace that bakes its device (the classifiers' RNN made its own zero state on the CPU)
    loads everywhere but fails on CUDA: "Input and hidden tensors are not at the same device".
    Readable on the CPU: no fixed device anywhere in the files' code."""
    import torch

    for card in discover_cards(MODELS):
        scripted = torch.jit.load(str(card.file_path("torchscript")), map_location="cpu")
        assert baked_devices(scripted) == [], card.name
