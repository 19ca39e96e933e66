"""A numpy reference forward pass of `nn.RNN` (tanh), multi-layer and bidirectional.

It spells out the maths the exports must compute,

    h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh),

layer by layer (layer k > 0 reads the concatenated [forward, backward] outputs of layer k-1),
and proves that the ONNX and TorchScript files compute the same thing as PyTorch.
Weights are read from a state dict by torch's own parameter names, e.g. `weight_ih_l0_reverse`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def _run_direction(
    x: np.ndarray,
    w_ih: np.ndarray,
    w_hh: np.ndarray,
    b_ih: np.ndarray,
    b_hh: np.ndarray,
    h0: np.ndarray,
    reverse: bool,
) -> tuple[np.ndarray, np.ndarray]:
    # x: (B, T, F), h0: (B, H) -> outputs (B, T, H), final state (B, H)
    batch, steps, _ = x.shape
    outputs = np.empty((batch, steps, w_hh.shape[0]), dtype=x.dtype)
    projected = x @ w_ih.T + b_ih  # (B, T, H): the input part of every step at once
    h = h0
    order = range(steps - 1, -1, -1) if reverse else range(steps)
    for t in order:
        h = np.tanh(projected[:, t] + h @ w_hh.T + b_hh)
        outputs[:, t] = h
    return outputs, h


def rnn_forward(
    x: np.ndarray,
    weights: Mapping[str, np.ndarray],
    num_layers: int,
    bidirectional: bool = False,
    h0: np.ndarray | None = None,
    prefix: str = "",
) -> tuple[np.ndarray, np.ndarray]:
    """Numpy twin of `nn.RNN(batch_first=True, nonlinearity='tanh')` in eval mode.

    x: (B, T, F); h0: (num_layers * directions, B, H) or None for zeros.
    Returns (output (B, T, directions * H), h_n (num_layers * directions, B, H)).
    """
    directions = 2 if bidirectional else 1
    hidden = weights[f"{prefix}weight_hh_l0"].shape[0]
    batch = x.shape[0]
    if h0 is None:
        h0 = np.zeros((num_layers * directions, batch, hidden), dtype=x.dtype)
    layer_input = x
    finals: list[np.ndarray] = []
    for layer in range(num_layers):
        outs: list[np.ndarray] = []
        for direction in range(directions):
            suffix = f"l{layer}" + ("_reverse" if direction == 1 else "")
            out, h_last = _run_direction(
                layer_input,
                weights[f"{prefix}weight_ih_{suffix}"],
                weights[f"{prefix}weight_hh_{suffix}"],
                weights[f"{prefix}bias_ih_{suffix}"],
                weights[f"{prefix}bias_hh_{suffix}"],
                h0[layer * directions + direction],
                reverse=direction == 1,
            )
            outs.append(out)
            finals.append(h_last)
        layer_input = np.concatenate(outs, axis=2) if directions == 2 else outs[0]
    return layer_input, np.stack(finals)


def classifier_forward(
    x: np.ndarray,
    weights: Mapping[str, np.ndarray],
    num_layers: int,
    bidirectional: bool,
) -> np.ndarray:
    """Numpy twin of `SequenceClassifier` with cell 'rnn': logits (B, num_classes).

    The head reads h_n of the last layer: [forward final, backward final] when bidirectional.
    """
    _, h_n = rnn_forward(x, weights, num_layers, bidirectional, prefix="rnn.")
    last = np.concatenate((h_n[-2], h_n[-1]), axis=1) if bidirectional else h_n[-1]
    return last @ weights["fc.weight"].T + weights["fc.bias"]
