"""PNG plots for a training run: learning curves, a confusion matrix, sample generations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np


def plot_curves(history: list[dict[str, Any]], path: Path, title: str) -> None:
    """Loss (and accuracy when present) per epoch, train vs validation."""
    epochs = [h["epoch"] for h in history]
    has_acc = "val_acc" in history[0]
    fig, axes = plt.subplots(1, 2 if has_acc else 1, figsize=(11 if has_acc else 6, 4))
    ax_loss = axes[0] if has_acc else axes
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy (nats)")
    ax_loss.set_title(f"{title}: loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    if has_acc:
        ax_acc = axes[1]
        ax_acc.plot(epochs, [100 * h["train_acc"] for h in history], "o-", label="train")
        ax_acc.plot(epochs, [100 * h["val_acc"] for h in history], "o-", label="validation")
        ax_acc.set_xlabel("epoch")
        ax_acc.set_ylabel("accuracy (%)")
        ax_acc.set_title(f"{title}: accuracy")
        ax_acc.grid(alpha=0.3)
        ax_acc.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion(matrix: np.ndarray, path: Path, title: str) -> None:
    """Confusion matrix (rows: true digit, columns: predicted) with counts in the cells."""
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    image = ax.imshow(np.log1p(matrix), cmap="Blues")
    n = matrix.shape[0]
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    threshold = np.log1p(matrix).max() / 2
    for i in range(n):
        for j in range(n):
            colour = "white" if np.log1p(matrix[i, j]) > threshold else "black"
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7, color=colour)
    fig.colorbar(image, ax=ax, label="log(1 + count)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_samples(samples: list[tuple[str, str]], path: Path, title: str) -> None:
    """Render (prompt, continuation) pairs as an image, the prompt in bold."""
    fig, axes = plt.subplots(len(samples), 1, figsize=(10, 2.6 * len(samples)))
    axes_list = list(np.atleast_1d(axes))
    for ax, (prompt, text) in zip(axes_list, samples, strict=True):
        ax.axis("off")
        ax.text(0, 1, f"prompt: {prompt!r}", fontweight="bold", va="top", family="monospace")
        ax.text(0, 0.82, text[:600], va="top", family="monospace", fontsize=8, wrap=True)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
