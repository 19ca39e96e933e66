"""Training CLI: MNIST row-sequence classifiers and a character-level language model.

    python -m training.train mnist --cell rnn                 # unidirectional nn.RNN
    python -m training.train mnist --cell rnn --bidirectional
    python -m training.train charlm --corpus data/text/tinyshakespeare.txt
    torchrun --nproc_per_node=2 -m training.train mnist ...   # DDP (gloo on CPU, nccl on GPU)

Each run writes a run directory: `best.pt` (state dict + everything needed to rebuild the
model), `metrics.json`, and PNG plots. Hyper-parameters are picked on a validation split carved
from the training data; the MNIST t10k test set is touched once, by the best checkpoint.

This module is the command line only; the work is done by
    config.py       the run's settings (`RunConfig`), built once from the flags
    runtime.py      device, torchrun process group, seeds
    loop.py         loaders, learning-rate schedule, one epoch, `fit`
    checkpoints.py  best.pt: save, load, rebuild; fine-tuning starting points
    mnist_run.py    the MNIST task (augmentation, photo mixing)
    charlm_run.py   the character-model task (sampling)
    results.py      the end of every run: metrics.json, curves, summary lines
The names other code has long reached through this module (`train.load_checkpoint`,
`train.main`, ...) are re-exported here.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from training import data as D
from training.charlm_run import generate, train_charlm
from training.checkpoints import CheckpointError, load_checkpoint, model_from_checkpoint
from training.config import CharRunConfig, ConfigError, MnistRunConfig, RunConfig
from training.loop import DRY_RUN_BATCHES, make_loader
from training.mnist_run import Augmenter, train_mnist
from training.nets import CELL_KINDS
from training.results import RunReport, finish_run
from training.runtime import Runtime, runtime_context, seed_everything

# Names other code reaches through `training.train` (export, tests, scripts), kept where they
# were before the split; new code should import them from their own modules.
__all__ = [
    "Augmenter",
    "Runtime",
    "build_parser",
    "generate",
    "load_checkpoint",
    "main",
    "make_loader",
    "model_from_checkpoint",
]


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(
        prog="python -m training.train", description=__doc__.split("\n\n")[0], formatter_class=fmt
    )
    sub = parser.add_subparsers(dest="task", required=True)

    def common(p: argparse.ArgumentParser, epochs: int, batch: int, lr: float) -> None:
        p.add_argument("--name", help="run name (default: derived from the task and cell)")
        p.add_argument("--out", help="run directory (default: runs/<name>)")
        p.add_argument("--data-dir", help=f"data root (else ${D.DATA_DIR_ENV}, else the cache)")
        p.add_argument("--epochs", type=int, default=epochs, help="maximum epochs")
        p.add_argument("--batch-size", type=int, default=batch, help="per process")
        p.add_argument("--eval-batch-size", type=int, default=1024)
        p.add_argument("--lr", type=float, default=lr, help="peak Adam learning rate")
        p.add_argument("--weight-decay", type=float, default=0.0)
        p.add_argument("--clip", type=float, default=1.0, help="max gradient norm (0: off)")
        p.add_argument(
            "--schedule",
            choices=("cosine", "none"),
            default="cosine",
            help="after a short linear warm-up",
        )
        p.add_argument(
            "--patience",
            type=int,
            default=5,
            help="stop after this many epochs without a better validation (0: never)",
        )
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
        p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's)")
        p.add_argument(
            "--dry-run",
            action="store_true",
            help=f"one epoch of {DRY_RUN_BATCHES} batches: a smoke test",
        )
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        p.add_argument("--cell", choices=CELL_KINDS, default="rnn" if epochs > 10 else "lstm")
        p.add_argument("--hidden", type=int, default=128 if epochs > 10 else 256)
        p.add_argument("--layers", type=int, default=2)
        p.add_argument("--dropout", type=float, default=0.0, help="between recurrent layers")

    mnist = sub.add_parser("mnist", help="row-by-row MNIST digit classifier", formatter_class=fmt)
    common(mnist, epochs=30, batch=128, lr=1e-3)
    mnist.add_argument("--bidirectional", action="store_true")
    mnist.add_argument(
        "--val-size",
        type=int,
        default=0,
        help="validation images held out of train (0: min(5000, 10%%))",
    )
    mnist.add_argument(
        "--augment",
        action="store_true",
        help="random small rotations/scalings/shifts of training images",
    )
    mnist.add_argument(
        "--shapes",
        type=float,
        default=0.0,
        help="with --augment, this share of the images is also slanted, bent elastically "
        "and drawn with thicker or thinner strokes (writers and pens, 0: none)",
    )
    mnist.add_argument(
        "--photos",
        type=float,
        default=0.0,
        help="also train on this fraction of the training digits rendered as photos and "
        "scans and read back by the service's steps (0: none)",
    )
    mnist.add_argument(
        "--init-from",
        help="start from these weights (a best.pt checkpoint or an exported model.ts)",
    )
    mnist.add_argument(
        "--download",
        action="store_true",
        help="download MNIST into the data root first (needs internet)",
    )

    charlm = sub.add_parser("charlm", help="character-level language model", formatter_class=fmt)
    common(charlm, epochs=10, batch=64, lr=2e-3)
    charlm.add_argument(
        "--corpus", help="UTF-8 text file (default: <data-dir>/text/tinyshakespeare.txt)"
    )
    charlm.add_argument("--seq-len", type=int, default=128, help="training window length")
    charlm.add_argument("--embed", type=int, default=64, help="embedding size")
    charlm.add_argument("--sample-len", type=int, default=400, help="characters per sample")
    return parser


def default_name(args: argparse.Namespace) -> str:
    """runs/<name> when --name is not given: the task and the cell (mnist-birnn, char-lstm)."""
    if args.task == "mnist":
        return f"mnist-{'bi' if args.bidirectional else ''}{args.cell}"
    return f"char-{args.cell}"


def run_task(config: RunConfig, rt: Runtime, run_dir: Path) -> RunReport:
    """The task the config is for (its class says which)."""
    if isinstance(config, MnistRunConfig):
        return train_mnist(config, rt, run_dir)
    if isinstance(config, CharRunConfig):
        return train_charlm(config, rt, run_dir)
    raise TypeError(f"no task for {type(config).__name__}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse the flags, train, record the run; returns what metrics.json holds."""
    args = build_parser().parse_args(argv)
    args.name = args.name or default_name(args)
    try:
        config = RunConfig.from_args(args)
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None
    if config.threads:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    run_dir = Path(args.out or Path("runs") / config.name)
    try:
        with runtime_context(config.device) as rt:
            if rt.is_main:
                run_dir.mkdir(parents=True, exist_ok=True)
            if rt.is_distributed:
                dist.barrier()  # the run directory exists before any rank writes to it
            return finish_run(run_task(config, rt, run_dir), config, rt, run_dir)
    except (D.DataError, CheckpointError) as exc:  # the user's input, not a defect: one line
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
