"""Checkpoints: the run's `best.pt`, and the weights a fine-tuning run starts from.

A checkpoint is a plain dict (format number, model kind and config, the data's normalization or
vocabulary, the state dict, the best epoch) so that training/export.py can rebuild the model
without this package's classes being pickled, and it is always read with `weights_only=True`:
loading a checkpoint can never run code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from training.nets import build_model
from training.runtime import Runtime

CHECKPOINT_FORMAT = 1
BEST_CHECKPOINT = "best.pt"  # in the run directory: the weights of the best validation epoch


def best_checkpoint_path(run_dir: Path) -> Path:
    return run_dir / BEST_CHECKPOINT


def save_best(run_dir: Path, checkpoint: dict[str, Any], model: nn.Module, epoch: int) -> None:
    """Write `checkpoint` with `model`'s current weights as the run's best epoch so far."""
    torch.save(
        {**checkpoint, "state_dict": model.state_dict(), "best_epoch": epoch},
        best_checkpoint_path(run_dir),
    )


def load_best(model: nn.Module, run_dir: Path, rt: Runtime) -> None:
    """Reload the best checkpoint (weights_only: a checkpoint can never run code)."""
    if rt.is_distributed:
        dist.barrier()  # rank 0 finished writing best.pt
    ckpt = torch.load(best_checkpoint_path(run_dir), map_location=rt.device, weights_only=True)
    model.load_state_dict(ckpt["state_dict"])


class CheckpointError(ValueError):
    """A file that is not a checkpoint this code can rebuild a model from."""


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by this module, refusing anything that is not plain data,
    with a message that names the file (torch's own errors name neither file nor cause)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors, truncated zips, foreign objects
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint ({first_line[:200]})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"{path}: not an rnnserve checkpoint (format {found!r}, expected "
            f"{CHECKPOINT_FORMAT}); export a run directory written by training.train"
        )
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any]) -> nn.Module:
    """The checkpoint's network, rebuilt from its recorded config, in eval mode."""
    model = build_model(ckpt["kind"], ckpt["config"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def initial_weights(path: Path) -> dict[str, torch.Tensor]:
    """Weights to start from (fine-tuning): an rnnserve checkpoint (best.pt) or an exported
    TorchScript model (models/<name>/<version>/model.ts). The architecture flags must match it."""
    if path.suffix == ".ts":
        try:
            scripted = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # a truncated or foreign file: torch's message names neither
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise CheckpointError(
                f"{path}: not a readable TorchScript model ({first_line})"
            ) from exc
        return {k: v.detach().clone() for k, v in scripted.state_dict().items()}
    state: dict[str, torch.Tensor] = load_checkpoint(path)["state_dict"]
    return state


def starting_point(path: Path) -> dict[str, Any]:
    """What a fine-tuned run started from, for its card: the starting model's own card (an
    exported model.ts) or metrics (a run's best.pt), so its first stage stays on record, and
    what that one started from in turn (a model fine-tuned twice keeps all three stages)."""
    card_path, metrics_path = path.parent / "card.json", path.parent / "metrics.json"
    summary: dict[str, Any] = {"weights": str(path)}
    if card_path.exists():
        card = json.loads(card_path.read_text())
        summary.update(
            test_accuracy=card["metrics"].get("test_accuracy"),
            epochs_run=card["training"].get("epochs_run"),
            best_epoch=card["training"].get("best_epoch"),
            wall_time_s=card["training"].get("wall_time_s"),
            git_commit=card["training"].get("git_commit"),
            hyperparameters=card["training"].get("hyperparameters"),
        )
        earlier = card["training"].get("started_from")
    elif metrics_path.exists():
        metrics = json.loads(metrics_path.read_text())
        summary.update(
            test_accuracy=metrics["test"]["accuracy"],
            epochs_run=len(metrics["history"]),
            best_epoch=metrics["best_epoch"],
            wall_time_s=metrics["wall_time_s"],
            git_commit=metrics.get("git_commit"),
            hyperparameters=metrics.get("hparams"),
        )
        earlier = metrics.get("started_from")
    else:
        earlier = None
    if earlier:
        summary["started_from"] = earlier
    return summary
