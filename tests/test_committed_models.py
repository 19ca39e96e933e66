"""The committed default models: verified cards, runnable ONNX files, the promised quality."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from service.cards import CardError, discover_cards, load_card
from tests.conftest import ROOT

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
    card = load_card(MODELS / name)
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


def test_committed_models_meet_the_quality_bar() -> None:
    """The figures the README promises, read from the cards (measured at training time)."""
    cards = {c.name: c.data for c in discover_cards(MODELS)}
    assert cards["mnist-rnn"]["metrics"]["test_accuracy"] >= 0.985
    assert cards["mnist-birnn"]["metrics"]["test_accuracy"] >= 0.988
    assert cards["char-rnn"]["metrics"]["val_loss_nats_per_char"] <= 1.60
    assert cards["mnist-birnn"]["architecture"]["bidirectional"] is True
    assert {cards[n]["architecture"]["cell"] for n in ("mnist-rnn", "mnist-birnn")} == {"rnn"}


def test_tampering_one_byte_of_a_committed_file_is_caught(tmp_path: Path) -> None:
    for name in sorted(EXPECTED):
        copy = shutil.copytree(MODELS / name, tmp_path / name)
        card = json.loads((copy / "card.json").read_text())
        target = copy / card["files"]["torchscript"]["path"]
        blob = bytearray(target.read_bytes())
        blob[-1] ^= 0x01
        target.write_bytes(bytes(blob))
        with pytest.raises(CardError, match=rf"{name}/model\.ts: sha256"):
            load_card(copy)
