"""The training loop both tasks share: loaders, the learning-rate schedule, one epoch, `fit`.

Nothing here knows about digits or characters: a task hands `fit` a model, its data and a
`RunConfig`, and gets back the history and the best validation epoch (whose weights `fit` has
written to the run's best.pt as it went).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sized
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

from training.checkpoints import save_best
from training.config import RunConfig
from training.runtime import Runtime

DRY_RUN_BATCHES = 3

# A change applied to each training batch of inputs on the fly (the MNIST augmentation).
BatchTransform = Callable[[torch.Tensor], torch.Tensor]
# The char model reads its corpus from a new offset each epoch: its training set is a function
# of the epoch number.
TrainSet = Dataset[Any] | Callable[[int], Dataset[Any]]


@dataclass
class EpochStats:
    loss: float
    acc: float | None = None
    predictions: np.ndarray | None = field(default=None, repr=False)
    targets: np.ndarray | None = field(default=None, repr=False)


@dataclass
class TrainResult:
    """What `fit` leaves besides best.pt: the per-epoch history and the best epoch's scores."""

    history: list[dict[str, Any]]
    best_epoch: int
    best_val: EpochStats
    wall_time_s: float
    stopped_early: bool


def max_batches_for(config: RunConfig) -> int | None:
    """A dry run reads only the first few batches of every pass (train, validation, test)."""
    return DRY_RUN_BATCHES if config.dry_run else None


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


def lr_lambda(total_steps: int, warmup_steps: int, schedule: str) -> Callable[[int], float]:
    """Linear warm-up then cosine decay to 2% of the peak (or constant with `none`)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "none":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def logits_and_targets(
    model: nn.Module,
    batch: list[torch.Tensor],
    device: torch.device,
    augment: BatchTransform | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat (N, classes) logits and (N,) targets, whichever task: the char model's per-step
    predictions are flattened so both tasks share one cross-entropy and one accuracy."""
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
    augment: BatchTransform | None = None,
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


def fit(
    model: nn.Module,
    train_set: TrainSet,
    val_set: Dataset[Any],
    config: RunConfig,
    rt: Runtime,
    checkpoint: dict[str, Any],
    run_dir: Path,
    higher_is_better: bool,
    augment: BatchTransform | None = None,
) -> TrainResult:
    """Train with Adam, clipping and warm-up + cosine LR; keep the best epoch on validation.

    `train_set` may be a callable epoch -> Dataset (the char model shifts its windows every
    epoch). The best state dict is written to `run_dir/best.pt` together with `checkpoint`.
    `augment` (training batches only) is the MNIST task's; `higher_is_better` picks the score:
    validation accuracy for classifiers, validation loss for language models.
    """
    wrapped: nn.Module = model
    if rt.is_distributed:
        wrapped = DistributedDataParallel(
            model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None
        )
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    epochs = 1 if config.dry_run else config.epochs
    max_batches = max_batches_for(config)

    def dataset_for(epoch: int) -> Dataset[Any]:
        return train_set(epoch) if callable(train_set) else train_set

    steps_per_epoch = len(make_loader(dataset_for(0), config.batch_size, rt, True, config.seed, 0))
    if max_batches is not None:
        steps_per_epoch = min(steps_per_epoch, max_batches)
    total_steps = max(1, epochs * steps_per_epoch)
    warmup = max(1, min(steps_per_epoch, total_steps // 20))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(total_steps, warmup, config.schedule)
    )

    history: list[dict[str, Any]] = []
    best_score = -math.inf
    best_epoch = 0
    best_val: EpochStats | None = None
    stale = 0
    stopped_early = False
    started = time.perf_counter()
    # bars only on a terminal: redirected to a file or a pipe they are noise (epoch lines stay)
    progress = rt.is_main and not config.no_progress and sys.stderr.isatty()
    epoch_bar = tqdm(range(1, epochs + 1), desc="epochs", disable=not progress, dynamic_ncols=True)
    for epoch in epoch_bar:
        t0 = time.perf_counter()
        loader = make_loader(dataset_for(epoch), config.batch_size, rt, True, config.seed, epoch)
        train_stats = run_epoch(
            wrapped,
            loader,
            rt,
            optimizer,
            scheduler,
            config.clip,
            max_batches,
            f"train {epoch}",
            progress,
            augment=augment,
        )
        val_loader = make_loader(val_set, config.eval_batch_size, rt, False, config.seed, epoch)
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
                save_best(run_dir, checkpoint, model, epoch)
        else:
            stale += 1
        if rt.is_main:
            summary = f"val_loss={val_stats.loss:.4f}"
            if higher_is_better:
                summary += f" val_acc={100 * (val_stats.acc or 0):.2f}%"
            epoch_bar.set_postfix_str(summary)
            # training/defaults.py follows long runs by these lines ("epoch   N  train_loss=")
            tqdm.write(
                f"epoch {epoch:3d}  train_loss={train_stats.loss:.4f}  {summary}  "
                f"lr={record['lr']:.2e}  {record['seconds']:.1f}s"
                + ("  *best*" if best_epoch == epoch else ""),
                file=sys.stderr,
            )
        if config.patience and stale >= config.patience:
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


def evaluate(
    model: nn.Module,
    dataset: Dataset[Any],
    config: RunConfig,
    rt: Runtime,
    desc: str,
    keep_predictions: bool = False,
) -> EpochStats:
    """One pass over a held-out set, in order, without progress bars (the MNIST test set)."""
    loader = make_loader(dataset, config.eval_batch_size, rt, False, 0, 0)
    return run_epoch(
        model,
        loader,
        rt,
        None,
        None,
        0.0,
        max_batches_for(config),
        desc,
        False,
        keep_predictions=keep_predictions,
    )
