"""The numpy reference reproduces torch's nn.RNN and the classifier head."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from training.nets import ClassifierConfig, SequenceClassifier
from training.reference import classifier_forward, rnn_forward


def _weights(module: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_rnn_forward_matches_torch_float64(layers: int, bidirectional: bool) -> None:
    torch.manual_seed(layers)
    rnn = nn.RNN(5, 7, num_layers=layers, batch_first=True, bidirectional=bidirectional).double()
    x = torch.randn(3, 9, 5, dtype=torch.float64)
    h0 = torch.randn(layers * (2 if bidirectional else 1), 3, 7, dtype=torch.float64)
    out_t, h_t = rnn(x, h0)
    out_n, h_n = rnn_forward(x.numpy(), _weights(rnn), layers, bidirectional, h0.numpy())
    assert np.abs(out_n - out_t.detach().numpy()).max() < 1e-6
    assert np.abs(h_n - h_t.detach().numpy()).max() < 1e-6


@pytest.mark.parametrize("bidirectional", [False, True])
def test_classifier_forward_matches_torch_float32(bidirectional: bool) -> None:
    """Same weights in float32, the reference in float64: agreement to 1e-6 on the logits."""
    torch.manual_seed(1)
    model = SequenceClassifier(
        ClassifierConfig(cell="rnn", bidirectional=bidirectional, num_layers=2, hidden_size=32)
    ).eval()
    x = torch.randn(4, 28, 28)
    with torch.no_grad():
        expected = model(x).double().numpy()
    weights = {k: v.astype(np.float64) for k, v in _weights(model).items()}
    got = classifier_forward(x.double().numpy(), weights, 2, bidirectional)
    assert np.abs(got - expected).max() < 1e-5
    assert (got.argmax(1) == expected.argmax(1)).all()


def test_classifier_forward_matches_torch_float64_to_1e6() -> None:
    torch.manual_seed(2)
    model = SequenceClassifier(ClassifierConfig(bidirectional=True, hidden_size=64)).double()
    x = torch.randn(8, 28, 28, dtype=torch.float64)
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    got = classifier_forward(x.numpy(), _weights(model), 2, True)
    assert np.abs(got - expected).max() < 1e-6
