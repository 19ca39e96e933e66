"""Shapes and heads of the architectures, for every cell, direction and depth."""

from __future__ import annotations

import pytest
import torch

from training.nets import (
    CELL_KINDS,
    CharLM,
    CharLMConfig,
    ClassifierConfig,
    SequenceClassifier,
    build_model,
)


@pytest.mark.parametrize("cell", CELL_KINDS)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("layers", [1, 3])
def test_classifier_output_shape(cell: str, bidirectional: bool, layers: int) -> None:
    model = SequenceClassifier(
        ClassifierConfig(cell=cell, bidirectional=bidirectional, num_layers=layers, hidden_size=16)
    )
    for batch in (1, 5):
        assert model(torch.randn(batch, 28, 28)).shape == (batch, 10)
    head_inputs = 32 if bidirectional else 16
    assert model.fc.in_features == head_inputs


def test_bidirectional_head_reads_both_final_states() -> None:
    """The head must see h_n[-2] (forward after row 27) and h_n[-1] (backward after row 0)."""
    torch.manual_seed(0)
    model = SequenceClassifier(
        ClassifierConfig(cell="rnn", bidirectional=True, num_layers=2, hidden_size=8)
    ).eval()
    x = torch.randn(3, 28, 28)
    out, h_n = model.rnn(x)
    expected = model.fc(torch.cat((h_n[-2], h_n[-1]), dim=1))
    torch.testing.assert_close(model(x), expected)
    # the backward direction's final state is its output at t=0, not at t=-1
    torch.testing.assert_close(h_n[-1], out[:, 0, 8:])
    assert not torch.allclose(h_n[-1], out[:, -1, 8:])
    # and the tutorial bug (out[:, -1, :]) gives a different answer
    assert not torch.allclose(model(x), model.fc(out[:, -1, :]))


def test_backward_direction_sees_the_first_row() -> None:
    """Changing only the first row must change a BiRNN's backward final state."""
    torch.manual_seed(0)
    model = SequenceClassifier(ClassifierConfig(bidirectional=True, hidden_size=8)).eval()
    x = torch.randn(1, 28, 28)
    y = x.clone()
    y[:, 0] += 1.0
    _, h_x = model.rnn(x)
    _, h_y = model.rnn(y)
    assert not torch.allclose(h_x[-1], h_y[-1])


@pytest.mark.parametrize("cell", CELL_KINDS)
def test_charlm_shapes_and_state(cell: str) -> None:
    config = CharLMConfig(vocab_size=20, embed_dim=8, hidden_size=16, num_layers=2, cell=cell)
    model = CharLM(config).eval()
    ids = torch.randint(0, 20, (4, 11))
    logits, state = model(ids)
    assert logits.shape == (4, 11, 20)
    rows = 4 if cell == "lstm" else 2
    assert state.shape == (rows, 4, 16) == model.initial_state(4).shape
    # step-by-step with carried state == the whole sequence at once
    step_state = model.initial_state(4)
    steps = []
    for t in range(11):
        step_logits, step_state = model(ids[:, t : t + 1], step_state)
        steps.append(step_logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(step_state, state, rtol=1e-5, atol=1e-5)


def test_build_model_round_trip() -> None:
    config = ClassifierConfig(cell="gru", hidden_size=12)
    model = build_model("mnist", config.to_dict())
    assert isinstance(model, SequenceClassifier) and model.config == config
    with pytest.raises(ValueError, match="unknown model kind"):
        build_model("vision", {})
    with pytest.raises(ValueError, match="unknown cell"):
        SequenceClassifier(ClassifierConfig(cell="transformer"))
