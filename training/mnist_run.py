"""The MNIST task: a row-by-row digit classifier, its augmentation and photo mixing.

Hyper-parameters are picked on a validation split carved from MNIST train; the t10k test set is
read once, by the best checkpoint, at the end of the run.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from training import data as D
from training import plots
from training.checkpoints import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    initial_weights,
    load_best,
    starting_point,
)
from training.config import MnistRunConfig
from training.loop import evaluate, fit
from training.nets import ClassifierConfig, SequenceClassifier, count_parameters
from training.results import RunReport, task_metrics
from training.runtime import Runtime


class Augmenter:
    """Small random affine distortions of whole batches (rotation, scale, shift), on the fly.

    MNIST models that read rows are sensitive to exact placement; mild jitter of the kind
    handwriting has anyway is the cheapest way to close part of the validation-to-test gap.
    Works on normalized images: the background value is restored where the warp pads.

    With `shapes` > 0, that share of the images also gets what varies between writers and
    pens rather than between placements (the photo stage's digits are all MNIST's writers,
    re-drawn): a slant (shear), an elastic distortion (a smooth random displacement field,
    Simard et al. 2003) and a stroke made thicker or thinner (a grey dilation or erosion,
    blended in part). The reading normalizes size and position but not a writer's hand.
    """

    def __init__(
        self,
        seed: int,
        degrees: float = 10.0,
        shift: float = 2.0,
        scale: float = 0.1,
        shapes: float = 0.0,
        slant: float = 0.3,
        elastic: float = 2.0,
    ) -> None:
        self.generator = torch.Generator().manual_seed(seed + 1)
        self.degrees, self.shift, self.scale = degrees, shift, scale
        self.shapes, self.slant, self.elastic = shapes, slant, elastic
        self.background = (0.0 - D.MNIST_MEAN) / D.MNIST_STD
        self.smoothing = _gaussian_kernel(sigma=4.0, radius=8)

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
        )  # (B, 2, 3)
        chosen = torch.zeros(batch, dtype=torch.bool)
        if self.shapes > 0:
            chosen = torch.rand(batch, generator=self.generator) < self.shapes
            shear = (torch.rand(batch, generator=self.generator) * 2 - 1) * self.slant
            theta[:, 0, 1] += torch.where(chosen, shear, torch.zeros_like(shear))
        grid = F.affine_grid(theta.to(x.device), [batch, 1, 28, 28], align_corners=False)
        if chosen.any():
            grid = grid + self._displacement(chosen).to(x.device)
        warped = F.grid_sample(
            (x - self.background).unsqueeze(1), grid, align_corners=False, padding_mode="zeros"
        )
        if chosen.any():
            warped = self._restroked(warped, chosen.to(x.device))
        return warped.squeeze(1) + self.background

    def _displacement(self, chosen: torch.Tensor) -> torch.Tensor:
        """(B, 28, 28, 2) offsets in grid units: smoothed uniform noise scaled so its largest
        offset is up to `elastic` pixels, zero for the images not chosen."""
        batch = chosen.shape[0]
        noise = torch.rand(batch * 2, 1, 28, 28, generator=self.generator) * 2 - 1
        pad = self.smoothing.shape[-1] // 2
        smooth = F.conv2d(F.pad(noise, (pad, pad, pad, pad), mode="reflect"), self.smoothing)
        smooth = smooth.view(batch, 2, 28, 28)
        peak = smooth.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
        size = torch.rand(batch, 1, 1, 1, generator=self.generator) * self.elastic
        offsets = smooth / peak * size * chosen.view(batch, 1, 1, 1) * (2 / 28)
        return offsets.permute(0, 2, 3, 1)

    def _restroked(self, ink: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        """Strokes thickened (half of the chosen) or thinned (the other half) by a 3x3 grey
        dilation or erosion, blended in by a random share so widths vary continuously; a
        thinned digit is brought back to its darkest value, as the reading scales ink so
        strokes reach full darkness (it never hands the model a faint digit)."""
        batch = ink.shape[0]
        draw = torch.rand(batch, 2, generator=self.generator).to(ink.device)
        thicker = F.max_pool2d(ink, 3, stride=1, padding=1)
        thinner = -F.max_pool2d(-ink, 3, stride=1, padding=1)
        thicken = (draw[:, 0] < 0.5).view(batch, 1, 1, 1)
        share = (draw[:, 1] * chosen).view(batch, 1, 1, 1)
        share = torch.where(thicken, share, share * 0.6)
        mixed = ink + share * (torch.where(thicken, thicker, thinner) - ink)
        peak = ink.amax(dim=(1, 2, 3), keepdim=True)
        mixed_peak = mixed.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
        return torch.where(thicken, mixed, mixed * (peak / mixed_peak))


def _gaussian_kernel(sigma: float, radius: int) -> torch.Tensor:
    """(1, 1, 2r+1, 2r+1) normalized Gaussian for smoothing displacement fields."""
    steps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    line = torch.exp(-(steps**2) / (2 * sigma**2))
    kernel = torch.outer(line, line)
    return (kernel / kernel.sum()).view(1, 1, 2 * radius + 1, 2 * radius + 1)


def with_photos(
    train: D.MnistArrays, val: D.MnistArrays, config: MnistRunConfig, run_dir: Path, rt: Runtime
) -> tuple[D.MnistArrays, D.MnistArrays, str]:
    """Training and validation digits plus the same digits rendered as photos and scans
    and read back by the service's own steps (training/photos.py, service/imaging/photo.py): the
    models learn what the service will show them. Cached next to the runs."""
    from training.photos import cached_photo_digits  # scipy and the service's reader: only here

    cache = run_dir.parent / "photo-cache"
    if rt.is_main:
        tqdm.write(
            f"rendering {config.photos:.0%} of the digits as photos (cached in {cache})",
            file=sys.stderr,
        )
    photo_train = cached_photo_digits(train.images, train.labels, config.photos, config.seed, cache)
    photo_val = cached_photo_digits(val.images, val.labels, 1.0, config.seed + 1, cache)

    def joined(arrays: D.MnistArrays, extra: tuple[np.ndarray, np.ndarray]) -> D.MnistArrays:
        return D.MnistArrays(
            np.concatenate([arrays.images, extra[0]]), np.concatenate([arrays.labels, extra[1]])
        )

    split = (
        f"{len(val)} images held out of MNIST train + {len(photo_val[1])} photo/scan renders "
        "of them (training/photos.py)"
    )
    return joined(train, photo_train), joined(val, photo_val), split


def confusion_matrix(targets: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """(10, 10) counts: row = true digit, column = predicted digit."""
    matrix = np.zeros((10, 10), dtype=np.int64)
    np.add.at(matrix, (targets, predictions), 1)
    return matrix


def train_mnist(config: MnistRunConfig, rt: Runtime, run_dir: Path) -> RunReport:
    """Train, keep the best validation epoch, then score it once on the t10k test set."""
    root = D.resolve_data_dir(config.data_dir)
    if config.download and rt.is_main:
        D.download_mnist(root)
    if rt.is_distributed:
        dist.barrier()  # rank 0 finished downloading
    full_train = D.load_mnist_split(root, train=True)
    test = D.load_mnist_split(root, train=False)
    val_size = config.val_size if config.val_size else min(5000, len(full_train) // 10)
    train, val = D.train_val_split(full_train, val_size)
    val_split = f"{len(val)} images held out of MNIST train"
    if config.photos > 0:
        train, val, val_split = with_photos(train, val, config, run_dir, rt)
    if rt.is_main:
        tqdm.write(
            f"MNIST from {root}: train {len(train)}, validation {len(val)}, test {len(test)}",
            file=sys.stderr,
        )
    model_config = ClassifierConfig(
        hidden_size=config.hidden,
        num_layers=config.layers,
        cell=config.cell,
        bidirectional=config.bidirectional,
        dropout=config.dropout,
    )
    model = SequenceClassifier(model_config)
    if config.init_from:
        weights = initial_weights(Path(config.init_from))  # CheckpointError: not a model file
        try:
            model.load_state_dict(weights)
        except RuntimeError as exc:  # torch lists every mismatched tensor: keep the first
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            raise CheckpointError(
                f"--init-from {config.init_from}: its weights do not fit the architecture "
                f"flags given (--cell, --hidden, --layers, --bidirectional must match the run "
                f"it came from): {lines[1] if len(lines) > 1 else lines[0]}"
            ) from None
    model = model.to(rt.device)
    checkpoint: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "kind": "mnist",
        "name": config.name,
        "config": model_config.to_dict(),
        "normalization": {"mean": D.MNIST_MEAN, "std": D.MNIST_STD, "scale": 1 / 255},
    }
    # each rank warps its own batches differently (and the same way on every rerun)
    augment = Augmenter(config.seed + rt.rank, shapes=config.shapes) if config.augment else None
    result = fit(
        model,
        D.to_dataset(train),
        D.to_dataset(val),
        config,
        rt,
        checkpoint,
        run_dir,
        higher_is_better=True,
        augment=augment,
    )
    load_best(model, run_dir, rt)
    # the confusion matrix needs every prediction, which one rank alone does not see
    test_stats = evaluate(
        model, D.to_dataset(test), config, rt, "test", keep_predictions=not rt.is_distributed
    )
    metrics = task_metrics(
        "mnist",
        model_config.to_dict(),
        count_parameters(model),
        result,
        val={
            "split": val_split,
            "loss": result.best_val.loss,
            "accuracy": result.best_val.acc,
        },
        test={
            "split": "MNIST t10k" + (" (dry run: first batches only)" if config.dry_run else ""),
            "loss": test_stats.loss,
            "accuracy": test_stats.acc,
        },
        data={
            "name": "MNIST",
            "root": str(root),
            "sha256": D.mnist_checksum(root),
            "train": len(train),
            "val": len(val),
            "test": len(test),
        },
    )
    if config.init_from:
        metrics["started_from"] = starting_point(Path(config.init_from))
    if not rt.is_main:
        return RunReport(metrics)
    if test_stats.predictions is not None and test_stats.targets is not None:
        matrix = confusion_matrix(test_stats.targets, test_stats.predictions)
        metrics["test"]["confusion_matrix"] = matrix.tolist()
        plots.plot_confusion(
            matrix,
            run_dir / "confusion.png",
            f"{config.name}: test accuracy {100 * (test_stats.acc or 0):.2f}%",
        )
    summary = (
        f"best epoch {result.best_epoch}: val acc {100 * (result.best_val.acc or 0):.2f}%, "
        f"test acc {100 * (test_stats.acc or 0):.2f}% ({result.wall_time_s:.0f}s)"
    )
    return RunReport(metrics, [summary])
