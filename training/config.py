"""A training run's settings, typed: built once from the command line, read by every stage.

The command line (training/train.py) parses flags into an `argparse.Namespace`; the runs get a
frozen `MnistRunConfig` or `CharRunConfig` instead, so a misspelt setting is a type error rather
than an AttributeError an hour into a run, and nothing downstream can change a setting halfway.

The same object is what a run records: `hyperparameters()` is what metrics.json stores under
`hparams` and export.py copies into the model card. Its keys and their order are the flags' own
(argparse's `dest` names, in the order the parser declares them), so cards written before and
after this module existed read the same.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, Literal

Schedule = Literal["cosine", "none"]
DeviceChoice = Literal["auto", "cpu", "cuda"]

# Parsed flags that are not config fields: `task` is the config's class (and recorded as such),
# `out` says where the run directory goes, which is not a setting of the run and never recorded.
NOT_FIELDS = frozenset({"task", "out"})


class ConfigError(ValueError):
    """Flags that no run can use (the message names the flag)."""


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """The settings both tasks share: naming, data, the optimisation loop, the network's
    recurrent core. Field order is the order of the flags in `--help` (and in the record)."""

    task: ClassVar[str]

    name: str
    data_dir: str | None
    epochs: int  # the most epochs; early stopping (patience) may end the run sooner
    batch_size: int  # per process under torchrun
    eval_batch_size: int
    lr: float  # the peak of the warm-up + cosine schedule
    weight_decay: float
    clip: float  # max gradient norm, 0 for none
    schedule: Schedule
    patience: int  # epochs without a better validation score before stopping, 0 for never
    seed: int
    device: DeviceChoice
    threads: int  # torch CPU threads, 0 for torch's own choice
    dry_run: bool  # one epoch of a few batches: a smoke test
    no_progress: bool
    cell: str
    hidden: int
    layers: int
    dropout: float

    @staticmethod
    def from_args(args: argparse.Namespace) -> RunConfig:
        """The config of the task `args.task` names, from the parsed flags (`args.name` already
        filled in). A flag that no config field takes is refused here: otherwise a new flag
        could be parsed, never used and never recorded without anyone noticing."""
        cls = CONFIG_FOR_TASK[args.task]
        values = vars(args)
        names = [f.name for f in fields(cls)]
        unknown = set(values) - set(names) - NOT_FIELDS
        missing = set(names) - set(values)
        if unknown or missing:
            raise TypeError(
                f"{cls.__name__} and the {args.task} flags disagree: flags without a field "
                f"{sorted(unknown)}, fields without a flag {sorted(missing)}"
            )
        return cls(**{name: values[name] for name in names})

    def __post_init__(self) -> None:
        """Settings no run can use are refused before anything starts, with the flag named."""
        checks = [
            (self.epochs >= 1, "--epochs must be at least 1"),
            (self.batch_size >= 1 and self.eval_batch_size >= 1, "batch sizes must be >= 1"),
            (self.lr >= 0, "--lr must not be negative"),
            (self.hidden >= 1 and self.layers >= 1, "--hidden and --layers must be >= 1"),
            (0 <= self.dropout < 1, "--dropout must lie in [0, 1)"),
            (self.patience >= 0, "--patience must not be negative (0: never stop early)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def hyperparameters(self) -> dict[str, Any]:
        """The settings as a run's metrics.json records them (`hparams`): the task, then every
        field in declaration order, under the flags' names."""
        return {"task": self.task, **asdict(self)}


@dataclass(frozen=True, kw_only=True)
class MnistRunConfig(RunConfig):
    """The row-by-row digit classifier's settings."""

    task: ClassVar[str] = "mnist"

    bidirectional: bool
    val_size: int  # validation images held out of train, 0 for min(5000, 10%)
    augment: bool  # random small affine warps of training batches
    shapes: float  # share of augmented images also slanted, elastically bent, restroked
    photos: float  # fraction of training digits also rendered as photos/scans, 0 for none
    init_from: str | None  # weights to fine-tune from: a best.pt or an exported model.ts
    download: bool

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dropout and self.layers == 1:
            # the classifier's only dropout is nn.RNN's, between stacked layers: with one
            # layer it would be recorded in the card and do nothing
            raise ConfigError(
                "--dropout acts between recurrent layers; with --layers 1 it would do "
                "nothing: use --layers 2 or more, or leave --dropout at 0"
            )
        if not 0 <= self.shapes <= 1:
            raise ConfigError("--shapes is a share of the training images: 0..1")
        if self.shapes and not self.augment:
            raise ConfigError("--shapes varies the --augment warps: give --augment too")
        if not 0 <= self.photos <= 1:
            raise ConfigError("--photos is a fraction of the training digits: 0..1")
        if self.init_from and not Path(self.init_from).is_file():
            raise ConfigError(f"--init-from {self.init_from}: no such file")


@dataclass(frozen=True, kw_only=True)
class CharRunConfig(RunConfig):
    """The character-level language model's settings."""

    task: ClassVar[str] = "charlm"

    corpus: str | None  # None: <data root>/text/tinyshakespeare.txt
    seq_len: int  # training window length (characters)
    embed: int
    sample_len: int  # characters per sample generated at the end of the run


CONFIG_FOR_TASK: dict[str, type[RunConfig]] = {
    MnistRunConfig.task: MnistRunConfig,
    CharRunConfig.task: CharRunConfig,
}
