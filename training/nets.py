"""Model architectures: a row-by-row MNIST sequence classifier and a character-level language model.

Both are deliberately plain wrappers around `nn.RNN` / `nn.LSTM` / `nn.GRU` so that the exported
graphs (ONNX, TorchScript) map onto the native recurrent ops and the numpy reference in
`reference.py` can reproduce them exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import nn

CellKind = Literal["rnn", "lstm", "gru"]
CELL_KINDS: tuple[str, ...] = ("rnn", "lstm", "gru")


def make_recurrent(
    cell: str,
    input_size: int,
    hidden_size: int,
    num_layers: int,
    dropout: float,
    bidirectional: bool = False,
) -> nn.RNNBase:
    """Build the torch recurrent module for `cell` (batch_first, tanh for plain RNN)."""
    cls: type[nn.RNNBase]
    if cell == "rnn":
        cls = nn.RNN
    elif cell == "lstm":
        cls = nn.LSTM
    elif cell == "gru":
        cls = nn.GRU
    else:
        raise ValueError(f"unknown cell {cell!r}; expected one of {CELL_KINDS}")
    return cls(
        input_size=input_size,
        hidden_size=hidden_size,
        num_layers=num_layers,
        batch_first=True,
        # torch warns (and ignores it) when dropout is set on a single layer: keep it quiet.
        dropout=dropout if num_layers > 1 else 0.0,
        bidirectional=bidirectional,
    )


def init_recurrent_(rnn: nn.RNNBase) -> None:
    """Orthogonal hidden-to-hidden weights and zero biases.

    A plain tanh RNN trained over 28 steps suffers from vanishing/exploding gradients with
    torch's default uniform init; orthogonal recurrent matrices keep the spectrum near 1 and are
    the usual remedy. Gated cells get the same treatment, per gate block.
    """
    for name, param in rnn.named_parameters():
        if name.startswith("weight_hh"):
            hidden = param.shape[1]
            for block in param.data.split(hidden, dim=0):
                nn.init.orthogonal_(block)
        elif name.startswith("weight_ih"):
            nn.init.xavier_uniform_(param.data)
        elif name.startswith("bias"):
            nn.init.zeros_(param.data)
            if isinstance(rnn, nn.LSTM):
                # Forget-gate bias of 1 in total (0.5 in each of bias_ih and bias_hh; gate order
                # i, f, g, o): an LSTM that remembers by default trains faster.
                hidden = param.shape[0] // 4
                param.data[hidden : 2 * hidden].fill_(0.5)


@dataclass(frozen=True)
class ClassifierConfig:
    """Hyper-parameters that fully rebuild a `SequenceClassifier` (stored in checkpoints/cards)."""

    input_size: int = 28  # pixels per row
    seq_len: int = 28  # rows per image (documentation only: the network accepts any length)
    hidden_size: int = 128
    num_layers: int = 2
    cell: str = "rnn"
    bidirectional: bool = False
    dropout: float = 0.0  # between recurrent layers
    num_classes: int = 10

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SequenceClassifier(nn.Module):
    """Reads an image as a sequence of rows and classifies it from the final hidden state(s).

    The bidirectional head concatenates the last layer's final *forward* state (after the last
    row) and final *backward* state (after the first row), both taken from h_n. Taking
    `out[:, -1, :]` instead, as popular tutorials do, feeds the head a backward state that has
    seen one row only.
    """

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        self.rnn = make_recurrent(
            config.cell,
            config.input_size,
            config.hidden_size,
            config.num_layers,
            config.dropout,
            config.bidirectional,
        )
        init_recurrent_(self.rnn)
        self.directions = 2 if config.bidirectional else 1
        self.fc = nn.Linear(config.hidden_size * self.directions, config.num_classes)
        self.is_lstm = config.cell == "lstm"
        self.bidirectional = config.bidirectional

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, T=28, F=28) -> logits (B, num_classes)
        # h0 made from x (`new_zeros`), not left to the RNN: a trace records the RNN's own zeros
        # with the tracing device baked in (cpu), which fails on CUDA; `new_zeros` follows x's
        # device and batch at run time (found on the first GPU run).
        h0 = x.new_zeros((self.rnn.num_layers * self.directions, x.shape[0], self.rnn.hidden_size))
        _, state = self.rnn(x, (h0, h0) if self.is_lstm else h0)
        h_n = state[0] if self.is_lstm else state  # (num_layers * directions, B, H)
        # (B, 2H) = [forward final, backward final], or (B, H)
        last = torch.cat((h_n[-2], h_n[-1]), dim=1) if self.bidirectional else h_n[-1]
        return self.fc(last)


@dataclass(frozen=True)
class CharLMConfig:
    """Hyper-parameters that fully rebuild a `CharLM` (stored in checkpoints/cards)."""

    vocab_size: int
    embed_dim: int = 64
    hidden_size: int = 256
    num_layers: int = 2
    cell: str = "lstm"
    dropout: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def state_rows(self) -> int:
        """Rows of the packed state tensor: (h) per layer, or (h, c) per layer for an LSTM."""
        return self.num_layers * (2 if self.cell == "lstm" else 1)


class CharLM(nn.Module):
    """Embedding -> recurrent stack -> linear over the vocabulary, with an explicit state.

    The recurrent state is packed into ONE tensor of shape (state_rows, B, H) for every cell
    kind (an LSTM's h and c are stacked) so that exports have a single, uniform state input
    and output whatever the cell: zeros start a fresh sequence, and feeding the returned state
    back in continues it, which is how the service generates text one step at a time.
    """

    def __init__(self, config: CharLMConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.embed_dim)
        self.rnn = make_recurrent(
            config.cell, config.embed_dim, config.hidden_size, config.num_layers, config.dropout
        )
        init_recurrent_(self.rnn)
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden_size, config.vocab_size)
        self.is_lstm = config.cell == "lstm"
        self.num_layers = config.num_layers

    def initial_state(self, batch_size: int, device: torch.device | None = None) -> torch.Tensor:
        """Zeros of shape (state_rows, B, H): the state of a fresh sequence."""
        return torch.zeros(
            self.config.state_rows, batch_size, self.config.hidden_size, device=device
        )

    def forward(
        self, ids: torch.Tensor, state: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # ids: (B, T) int64; state: (S, B, H) or None -> logits (B, T, V), new state (S, B, H)
        if state is None:
            state = self.initial_state(ids.shape[0], ids.device)
        x = self.drop(self.embed(ids))  # (B, T, E)
        if self.is_lstm:
            h0, c0 = state[: self.num_layers], state[self.num_layers :]
            out, (h_n, c_n) = self.rnn(x, (h0.contiguous(), c0.contiguous()))
            new_state = torch.cat((h_n, c_n), dim=0)
        else:
            out, new_state = self.rnn(x, state.contiguous())
        logits = self.head(self.drop(out))  # (B, T, V)
        return logits, new_state


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_model(kind: str, config: dict[str, Any]) -> nn.Module:
    """Rebuild a model from the (kind, config) pair saved in checkpoints."""
    if kind == "mnist":
        return SequenceClassifier(ClassifierConfig(**config))
    if kind == "charlm":
        return CharLM(CharLMConfig(**config))
    raise ValueError(f"unknown model kind {kind!r}; expected 'mnist' or 'charlm'")
