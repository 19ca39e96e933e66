"""The end of a run, the same for both tasks: its metrics.json, learning curves, final lines.

A task (training/mnist_run.py, training/charlm_run.py) returns a `RunReport`: its own part of
metrics.json and the lines that sum it up. `finish_run` adds what every run records (name,
seed, device, versions, the settings from the `RunConfig`), draws the learning curves, prints
the summary and writes metrics.json, which training/export.py later turns into the model card.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from training import plots
from training.checkpoints import best_checkpoint_path
from training.config import RunConfig
from training.loop import TrainResult
from training.runtime import Runtime


@dataclass
class RunReport:
    """A task's outcome: its part of metrics.json, and (on the main rank) the lines that
    close its log, printed before "run written to ..."."""

    metrics: dict[str, Any]
    summary: list[str] = field(default_factory=list)


def task_metrics(
    kind: str,
    model_config: dict[str, Any],
    parameters: int,
    result: TrainResult,
    **sections: Any,
) -> dict[str, Any]:
    """The metrics every task reports, with the task's own `sections` (val, test, data, ...,
    in that order) before the wall time: the order metrics.json has always had."""
    return {
        "kind": kind,
        "config": model_config,
        "parameters": parameters,
        "history": result.history,
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        **sections,
        "wall_time_s": result.wall_time_s,
    }


def git_commit() -> str | None:
    """The commit this code was run from, for the card (None outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
            timeout=10,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def finish_run(report: RunReport, config: RunConfig, rt: Runtime, run_dir: Path) -> dict[str, Any]:
    """Record the run: the task's metrics plus what every run keeps (how, where and with which
    settings it ran); on the main rank also the curves, the summary lines and metrics.json."""
    metrics = {
        **report.metrics,
        "name": config.name,
        "seed": config.seed,
        "device": str(rt.device),
        "world_size": rt.world_size,
        "torch_version": torch.__version__,
        "git_commit": git_commit(),
        "dry_run": config.dry_run,
        "hparams": config.hyperparameters(),
        "checkpoint": str(best_checkpoint_path(run_dir)),
    }
    if rt.is_main:
        plots.plot_curves(metrics["history"], run_dir / "curves.png", config.name)
        for line in report.summary:
            tqdm.write(line, file=sys.stderr)
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        tqdm.write(f"run written to {run_dir}", file=sys.stderr)
    return metrics
