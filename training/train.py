"""Training CLI: MNIST row-sequence classifiers and a character-level language model.

    python -m training.train mnist --cell rnn                 # unidirectional nn.RNN
    python -m training.train mnist --cell rnn --bidirectional
    python -m training.train charlm --corpus data/text/tinyshakespeare.txt
    torchrun --nproc_per_node=2 -m training.train mnist ...   # DDP (gloo on CPU, nccl on GPU)

Each run writes a run directory: `best.pt` (state dict + everything needed to rebuild the
model), `metrics.json`, and PNG plots. Hyper-parameters are picked on a validation split carved
from the training data; the MNIST t10k test set is touched once, by the best checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator, Sized
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler
from tqdm import tqdm

from training import data as D
from training import plots
from training.nets import (
    CELL_KINDS,
    CharLM,
    CharLMConfig,
    ClassifierConfig,
    SequenceClassifier,
    build_model,
    count_parameters,
)

CHECKPOINT_FORMAT = 1
DRY_RUN_BATCHES = 3


# --------------------------------------------------------------------------- runtime context


@dataclass
class Runtime:
    """Where and how this process trains: device, and its place in a distributed job."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    is_distributed: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(choice: str, local_rank: int = 0) -> torch.device:
    if choice == "cpu":
        return torch.device("cpu")
    if choice == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda was asked for, but no CUDA device is available")
        return torch.device("cuda", local_rank)
    return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")


@contextmanager
def runtime_context(device_choice: str) -> Iterator[Runtime]:
    """Join the torchrun process group when launched by torchrun; single process otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        yield Runtime(device=pick_device(device_choice))
        return
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_choice, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        yield Runtime(device=device, rank=rank, world_size=world_size, is_distributed=True)
    finally:
        dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    """Same seed, same CPU result: python, numpy and torch RNGs plus deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def git_commit() -> str | None:
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


# --------------------------------------------------------------------------- training loop


@dataclass
class EpochStats:
    loss: float
    acc: float | None = None
    predictions: np.ndarray | None = field(default=None, repr=False)
    targets: np.ndarray | None = field(default=None, repr=False)


def make_loader(
    dataset: Dataset[Any], batch_size: int, rt: Runtime, shuffle: bool, seed: int, epoch: int
) -> DataLoader[Any]:
    """A DataLoader whose order depends only on (seed, epoch); sharded per rank under DDP."""
    sampler: Any
    if rt.is_distributed:
        sampler = DistributedSampler(
            dataset,
            num_replicas=rt.world_size,
            rank=rt.rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=False,
        )
        sampler.set_epoch(epoch)
    elif shuffle:
        generator = torch.Generator().manual_seed(seed * 1000 + epoch)
        sampler = RandomSampler(cast(Sized, dataset), generator=generator)
    else:
        sampler = None
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=0)


def lr_lambda(total_steps: int, warmup_steps: int, schedule: str) -> Any:
    """Linear warm-up then cosine decay to 2% of the peak (or constant with `none`)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "none":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


class Augmenter:
    """Small random affine distortions of whole batches (rotation, scale, shift), on the fly.

    MNIST models that read rows are sensitive to exact placement; mild jitter of the kind
    handwriting has anyway is the cheapest way to close part of the validation-to-test gap.
    Works on normalized images: the background value is restored where the warp pads.
    """

    def __init__(
        self, seed: int, degrees: float = 10.0, shift: float = 2.0, scale: float = 0.1
    ) -> None:
        self.generator = torch.Generator().manual_seed(seed + 1)
        self.degrees, self.shift, self.scale = degrees, shift, scale
        self.background = (0.0 - D.MNIST_MEAN) / D.MNIST_STD

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, 28, 28) normalized -> same shape, warped
        batch = x.shape[0]
        rand = torch.rand(batch, 4, generator=self.generator) * 2 - 1  # U(-1, 1)
        angle = rand[:, 0] * math.radians(self.degrees)
        zoom = 1 + rand[:, 1] * self.scale
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.stack(
            [
                torch.stack([cos, -sin, rand[:, 2] * self.shift * 2 / 28], dim=1),
                torch.stack([sin, cos, rand[:, 3] * self.shift * 2 / 28], dim=1),
            ],
            dim=1,
        ).to(x.device)  # (B, 2, 3)
        grid = F.affine_grid(theta, [batch, 1, 28, 28], align_corners=False)
        warped = F.grid_sample(
            (x - self.background).unsqueeze(1), grid, align_corners=False, padding_mode="zeros"
        )
        return warped.squeeze(1) + self.background


def logits_and_targets(
    model: nn.Module,
    batch: list[torch.Tensor],
    device: torch.device,
    augment: Augmenter | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = (t.to(device, non_blocking=True) for t in batch)
    if augment is not None:
        x = augment(x)
    out = model(x)
    if isinstance(out, tuple):  # CharLM: (logits (B, T, V), state)
        logits = out[0]
        return logits.reshape(-1, logits.shape[-1]), y.reshape(-1)
    return out, y


def run_epoch(
    model: nn.Module,
    loader: DataLoader[Any],
    rt: Runtime,
    optimizer: torch.optim.Optimizer | None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    clip: float,
    max_batches: int | None,
    desc: str,
    progress: bool,
    keep_predictions: bool = False,
    augment: Augmenter | None = None,
) -> EpochStats:
    """One pass over `loader`: trains when an optimizer is given, evaluates otherwise."""
    training = optimizer is not None
    model.train(training)
    total_loss = torch.zeros((), dtype=torch.float64)
    correct = torch.zeros((), dtype=torch.float64)
    count = torch.zeros((), dtype=torch.float64)
    preds: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    n_batches = len(loader) if max_batches is None else min(len(loader), max_batches)
    bar = tqdm(total=n_batches, desc=desc, leave=False, disable=not progress, dynamic_ncols=True)
    with torch.set_grad_enabled(training):
        for i, batch in enumerate(loader):
            if i >= n_batches:
                break
            logits, y = logits_and_targets(model, batch, rt.device, augment if training else None)
            loss = F.cross_entropy(logits, y)
            if training:
                assert optimizer is not None
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if clip > 0:
                    nn.utils.clip_grad_norm_(model.parameters(), clip)
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
            pred = logits.detach().argmax(dim=1)
            total_loss += loss.detach().double().cpu() * y.numel()
            correct += (pred == y).sum().double().cpu()
            count += y.numel()
            if keep_predictions:
                preds.append(pred.cpu().numpy())
                targets.append(y.cpu().numpy())
            bar.set_postfix(
                loss=f"{(total_loss / count).item():.4f}",
                acc=f"{(correct / count).item():.4f}",
            )
            bar.update(1)
    bar.close()
    if rt.is_distributed:  # every rank sees the same totals: decisions stay in lockstep
        stacked = torch.stack([total_loss, correct, count])
        dist.all_reduce(stacked)
        total_loss, correct, count = stacked[0], stacked[1], stacked[2]
    return EpochStats(
        loss=(total_loss / count).item(),
        acc=(correct / count).item(),
        predictions=np.concatenate(preds) if preds else None,
        targets=np.concatenate(targets) if targets else None,
    )


@dataclass
class TrainResult:
    history: list[dict[str, Any]]
    best_epoch: int
    best_val: EpochStats
    wall_time_s: float
    stopped_early: bool


def fit(
    model: nn.Module,
    train_set: Dataset[Any] | Any,
    val_set: Dataset[Any],
    args: argparse.Namespace,
    rt: Runtime,
    checkpoint: dict[str, Any],
    run_dir: Path,
    higher_is_better: bool,
) -> TrainResult:
    """Train with Adam, clipping and warm-up + cosine LR; keep the best epoch on validation.

    `train_set` may be a callable epoch -> Dataset (the char model shifts its windows every
    epoch). The best state dict is written to `run_dir/best.pt` together with `checkpoint`.
    """
    wrapped: nn.Module = model
    if rt.is_distributed:
        wrapped = DistributedDataParallel(
            model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None
        )
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    epochs = 1 if args.dry_run else args.epochs
    max_batches = DRY_RUN_BATCHES if args.dry_run else None
    augment = Augmenter(args.seed + rt.rank) if getattr(args, "augment", False) else None

    def dataset_for(epoch: int) -> Dataset[Any]:
        return train_set(epoch) if callable(train_set) else train_set

    steps_per_epoch = len(make_loader(dataset_for(0), args.batch_size, rt, True, args.seed, 0))
    if max_batches is not None:
        steps_per_epoch = min(steps_per_epoch, max_batches)
    total_steps = max(1, epochs * steps_per_epoch)
    warmup = max(1, min(steps_per_epoch, total_steps // 20))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(total_steps, warmup, args.schedule)
    )

    history: list[dict[str, Any]] = []
    best_score = -math.inf
    best_epoch = 0
    best_val: EpochStats | None = None
    stale = 0
    stopped_early = False
    started = time.perf_counter()
    # bars only on a terminal: redirected to a file or a pipe they are noise (epoch lines stay)
    progress = rt.is_main and not args.no_progress and sys.stderr.isatty()
    epoch_bar = tqdm(range(1, epochs + 1), desc="epochs", disable=not progress, dynamic_ncols=True)
    for epoch in epoch_bar:
        t0 = time.perf_counter()
        loader = make_loader(dataset_for(epoch), args.batch_size, rt, True, args.seed, epoch)
        train_stats = run_epoch(
            wrapped,
            loader,
            rt,
            optimizer,
            scheduler,
            args.clip,
            max_batches,
            f"train {epoch}",
            progress,
            augment=augment,
        )
        val_loader = make_loader(val_set, args.eval_batch_size, rt, False, args.seed, epoch)
        val_stats = run_epoch(
            model, val_loader, rt, None, None, 0.0, max_batches, f"val {epoch}", progress
        )
        record = {
            "epoch": epoch,
            "train_loss": train_stats.loss,
            "val_loss": val_stats.loss,
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": round(time.perf_counter() - t0, 2),
        }
        if higher_is_better:
            record.update(train_acc=train_stats.acc, val_acc=val_stats.acc)
        history.append(record)
        # accuracy (ties broken by loss) for classifiers, loss for language models
        score = (
            (val_stats.acc or 0.0) - 1e-6 * val_stats.loss if higher_is_better else -val_stats.loss
        )
        if score > best_score:
            best_score, best_epoch, best_val, stale = score, epoch, val_stats, 0
            if rt.is_main:
                checkpoint.update(state_dict=model.state_dict(), best_epoch=epoch)
                torch.save(checkpoint, run_dir / "best.pt")
        else:
            stale += 1
        if rt.is_main:
            summary = f"val_loss={val_stats.loss:.4f}"
            if higher_is_better:
                summary += f" val_acc={100 * (val_stats.acc or 0):.2f}%"
            epoch_bar.set_postfix_str(summary)
            tqdm.write(
                f"epoch {epoch:3d}  train_loss={train_stats.loss:.4f}  {summary}  "
                f"lr={record['lr']:.2e}  {record['seconds']:.1f}s"
                + ("  *best*" if best_epoch == epoch else ""),
                file=sys.stderr,
            )
        if args.patience and stale >= args.patience:
            stopped_early = True
            if rt.is_main:
                tqdm.write(f"early stop: no improvement for {stale} epochs", file=sys.stderr)
            break
    epoch_bar.close()
    assert best_val is not None
    return TrainResult(
        history=history,
        best_epoch=best_epoch,
        best_val=best_val,
        wall_time_s=time.perf_counter() - started,
        stopped_early=stopped_early,
    )


def load_best(model: nn.Module, run_dir: Path, rt: Runtime) -> None:
    """Reload the best checkpoint (weights_only: a checkpoint can never run code)."""
    if rt.is_distributed:
        dist.barrier()  # rank 0 finished writing best.pt
    ckpt = torch.load(run_dir / "best.pt", map_location=rt.device, weights_only=True)
    model.load_state_dict(ckpt["state_dict"])


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by this module, refusing anything that is not plain data."""
    ckpt: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not an rnnserve checkpoint (format {ckpt.get('format')!r})")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any]) -> nn.Module:
    model = build_model(ckpt["kind"], ckpt["config"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


# --------------------------------------------------------------------------- MNIST


def initial_weights(path: Path) -> dict[str, torch.Tensor]:
    """Weights to start from (fine-tuning): an rnnserve checkpoint (best.pt) or an exported
    TorchScript model (models/<name>/model.ts). The architecture flags must match it."""
    if path.suffix == ".ts":
        scripted = torch.jit.load(str(path), map_location="cpu")
        return {k: v.detach().clone() for k, v in scripted.state_dict().items()}
    state: dict[str, torch.Tensor] = load_checkpoint(path)["state_dict"]
    return state


def starting_point(path: Path) -> dict[str, Any]:
    """What a fine-tuned run started from, for its card: the starting model's own card (an
    exported model.ts) or metrics (a run's best.pt), so its first stage stays on record."""
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
    return summary


def with_photos(
    train: D.MnistArrays, val: D.MnistArrays, args: argparse.Namespace, run_dir: Path, rt: Runtime
) -> tuple[D.MnistArrays, D.MnistArrays, str]:
    """Training and validation digits plus the same digits rendered as photos and scans
    and read back by the service's own steps (training/photos.py, service/photo.py): the
    models learn what the service will show them. Cached next to the runs."""
    from training.photos import cached_photo_digits

    cache = run_dir.parent / "photo-cache"
    if rt.is_main:
        tqdm.write(
            f"rendering {args.photos:.0%} of the digits as photos (cached in {cache})",
            file=sys.stderr,
        )
    photo_train = cached_photo_digits(train.images, train.labels, args.photos, args.seed, cache)
    photo_val = cached_photo_digits(val.images, val.labels, 1.0, args.seed + 1, cache)

    def joined(arrays: D.MnistArrays, extra: tuple[np.ndarray, np.ndarray]) -> D.MnistArrays:
        return D.MnistArrays(
            np.concatenate([arrays.images, extra[0]]), np.concatenate([arrays.labels, extra[1]])
        )

    split = (
        f"{len(val)} images held out of MNIST train + {len(photo_val[1])} photo/scan renders "
        "of them (training/photos.py)"
    )
    return joined(train, photo_train), joined(val, photo_val), split


def train_mnist(args: argparse.Namespace, rt: Runtime, run_dir: Path) -> dict[str, Any]:
    root = D.resolve_data_dir(args.data_dir)
    if args.download and rt.is_main:
        D.download_mnist(root)
    if rt.is_distributed:
        dist.barrier()
    full_train = D.load_mnist_split(root, train=True)
    test = D.load_mnist_split(root, train=False)
    val_size = args.val_size if args.val_size else min(5000, len(full_train) // 10)
    train, val = D.train_val_split(full_train, val_size)
    val_split = f"{len(val)} images held out of MNIST train"
    if args.photos > 0:
        train, val, val_split = with_photos(train, val, args, run_dir, rt)
    if rt.is_main:
        tqdm.write(
            f"MNIST from {root}: train {len(train)}, validation {len(val)}, test {len(test)}",
            file=sys.stderr,
        )
    config = ClassifierConfig(
        hidden_size=args.hidden,
        num_layers=args.layers,
        cell=args.cell,
        bidirectional=args.bidirectional,
        dropout=args.dropout,
    )
    model = SequenceClassifier(config)
    if args.init_from:
        model.load_state_dict(initial_weights(Path(args.init_from)))
    model = model.to(rt.device)
    checkpoint: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "kind": "mnist",
        "name": args.name,
        "config": config.to_dict(),
        "normalization": {"mean": D.MNIST_MEAN, "std": D.MNIST_STD, "scale": 1 / 255},
    }
    result = fit(
        model,
        D.to_dataset(train),
        D.to_dataset(val),
        args,
        rt,
        checkpoint,
        run_dir,
        higher_is_better=True,
    )
    load_best(model, run_dir, rt)
    test_loader = make_loader(D.to_dataset(test), args.eval_batch_size, rt, False, 0, 0)
    max_batches = DRY_RUN_BATCHES if args.dry_run else None
    test_stats = run_epoch(
        model,
        test_loader,
        rt,
        None,
        None,
        0.0,
        max_batches,
        "test",
        False,
        keep_predictions=not rt.is_distributed,
    )
    metrics: dict[str, Any] = {
        "kind": "mnist",
        "config": config.to_dict(),
        "parameters": count_parameters(model),
        "history": result.history,
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "val": {
            "split": val_split,
            "loss": result.best_val.loss,
            "accuracy": result.best_val.acc,
        },
        "test": {
            "split": "MNIST t10k" + (" (dry run: first batches only)" if args.dry_run else ""),
            "loss": test_stats.loss,
            "accuracy": test_stats.acc,
        },
        "data": {
            "name": "MNIST",
            "root": str(root),
            "sha256": D.mnist_checksum(root),
            "train": len(train),
            "val": len(val),
            "test": len(test),
        },
        "wall_time_s": result.wall_time_s,
    }
    if args.init_from:
        metrics["started_from"] = starting_point(Path(args.init_from))
    if rt.is_main:
        plots.plot_curves(result.history, run_dir / "curves.png", args.name)
        if test_stats.predictions is not None and test_stats.targets is not None:
            matrix = np.zeros((10, 10), dtype=np.int64)
            np.add.at(matrix, (test_stats.targets, test_stats.predictions), 1)
            metrics["test"]["confusion_matrix"] = matrix.tolist()
            plots.plot_confusion(
                matrix,
                run_dir / "confusion.png",
                f"{args.name}: test accuracy {100 * (test_stats.acc or 0):.2f}%",
            )
        tqdm.write(
            f"best epoch {result.best_epoch}: val acc {100 * (result.best_val.acc or 0):.2f}%, "
            f"test acc {100 * (test_stats.acc or 0):.2f}% ({result.wall_time_s:.0f}s)",
            file=sys.stderr,
        )
    return metrics


# --------------------------------------------------------------------------- char model


@torch.no_grad()
def generate(
    model: CharLM,
    vocab: D.Vocabulary,
    prompt: str,
    length: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
) -> str:
    """Sample `length` characters after `prompt`, one step at a time with carried state."""
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    ids = torch.tensor([vocab.encode(prompt)], dtype=torch.long, device=device)
    logits, state = model(ids)  # (1, T, V), state after the prompt
    last = logits[0, -1]
    out: list[int] = []
    for _ in range(length):
        scaled = last.float().cpu() / max(temperature, 1e-6)
        if top_k is not None and top_k < scaled.numel():
            kth = torch.topk(scaled, top_k).values[-1]
            scaled = scaled.masked_fill(scaled < kth, -math.inf)
        nxt = int(torch.multinomial(F.softmax(scaled, dim=-1), 1, generator=generator))
        out.append(nxt)
        step_logits, state = model(torch.tensor([[nxt]], device=device), state)
        last = step_logits[0, -1]
    return vocab.decode(out)


SAMPLE_PROMPTS = ("ROMEO:\n", "First Citizen:\n", "KING RICHARD III:\nNow ")


def train_charlm(args: argparse.Namespace, rt: Runtime, run_dir: Path) -> dict[str, Any]:
    corpus_path = (
        Path(args.corpus)
        if args.corpus
        else D.resolve_data_dir(args.data_dir) / "text" / "tinyshakespeare.txt"
    )
    corpus = D.Corpus.from_file(corpus_path)
    vocab = corpus.vocab
    if rt.is_main:
        tqdm.write(
            f"corpus {corpus_path}: {len(corpus.train_ids)} train / {len(corpus.val_ids)} "
            f"validation characters, vocabulary {len(vocab)}"
            + (
                f", {corpus.dropped_val_chars} unseen validation chars dropped"
                if corpus.dropped_val_chars
                else ""
            ),
            file=sys.stderr,
        )
    config = CharLMConfig(
        vocab_size=len(vocab),
        embed_dim=args.embed,
        hidden_size=args.hidden,
        num_layers=args.layers,
        cell=args.cell,
        dropout=args.dropout,
    )
    model = CharLM(config).to(rt.device)
    checkpoint: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "kind": "charlm",
        "name": args.name,
        "config": config.to_dict(),
        "vocab": vocab.itos,
    }
    seq_len = args.seq_len

    def train_windows(epoch: int) -> Dataset[Any]:
        # a new phase each epoch, so the model does not always see the same window borders
        offset = (epoch * 7919 + args.seed) % seq_len
        return D.windows(corpus.train_ids, seq_len, offset)

    val_set = D.windows(corpus.val_ids, seq_len)
    result = fit(
        model, train_windows, val_set, args, rt, checkpoint, run_dir, higher_is_better=False
    )
    load_best(model, run_dir, rt)
    val_loss = result.best_val.loss
    metrics: dict[str, Any] = {
        "kind": "charlm",
        "config": config.to_dict(),
        "parameters": count_parameters(model),
        "history": result.history,
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "val": {
            "split": "last 10% of the corpus"
            + (" (dry run: first batches only)" if args.dry_run else ""),
            "loss_nats_per_char": val_loss,
            "bits_per_char": val_loss / math.log(2),
            "seq_len": seq_len,
        },
        "data": {
            "name": corpus_path.name,
            "sha256": corpus.checksum,
            "train_chars": len(corpus.train_ids),
            "val_chars": len(corpus.val_ids),
        },
        "vocab": vocab.itos,
        "wall_time_s": result.wall_time_s,
    }
    if rt.is_main:
        plots.plot_curves(result.history, run_dir / "curves.png", args.name)
        samples = [
            (p, generate(model, vocab, p, args.sample_len, 0.8, None, seed=args.seed))
            for p in SAMPLE_PROMPTS
            if all(c in vocab.stoi for c in p)
        ] or [(vocab.itos[0], generate(model, vocab, vocab.itos[0], args.sample_len, 0.8))]
        metrics["samples"] = [{"prompt": p, "text": t, "temperature": 0.8} for p, t in samples]
        (run_dir / "samples.txt").write_text(
            "\n\n".join(f"=== prompt {p!r} (temperature 0.8)\n{p}{t}" for p, t in samples)
        )
        plots.plot_samples(samples, run_dir / "samples.png", f"{args.name} samples")
        tqdm.write(
            f"best epoch {result.best_epoch}: val loss {val_loss:.4f} nats/char "
            f"({val_loss / math.log(2):.4f} bits/char), {result.wall_time_s:.0f}s",
            file=sys.stderr,
        )
        tqdm.write(f"sample:\n{samples[0][0]}{samples[0][1][:300]}", file=sys.stderr)
    return metrics


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
    if args.task == "mnist":
        return f"mnist-{'bi' if args.bidirectional else ''}{args.cell}"
    return f"char-{args.cell}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    args.name = args.name or default_name(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    run_dir = Path(args.out or Path("runs") / args.name)
    try:
        with runtime_context(args.device) as rt:
            if rt.is_main:
                run_dir.mkdir(parents=True, exist_ok=True)
            if rt.is_distributed:
                dist.barrier()
            task = train_mnist if args.task == "mnist" else train_charlm
            metrics = task(args, rt, run_dir)
            metrics.update(
                name=args.name,
                seed=args.seed,
                device=str(rt.device),
                world_size=rt.world_size,
                torch_version=torch.__version__,
                git_commit=git_commit(),
                dry_run=args.dry_run,
                hparams={k: v for k, v in vars(args).items() if k not in ("out",)},
                checkpoint=str(run_dir / "best.pt"),
            )
            if rt.is_main:
                (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
                tqdm.write(f"run written to {run_dir}", file=sys.stderr)
            return metrics
    except D.DataError as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
