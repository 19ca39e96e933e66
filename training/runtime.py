"""Where this process trains: its device, its place in a torchrun job, its random seeds.

Everything that depends on how the process was launched (plain `python -m training.train` or
`torchrun --nproc_per_node=N`) is decided here, once, and handed to the rest as a `Runtime`.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass
class Runtime:
    """Where and how this process trains: device, and its place in a distributed job."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    is_distributed: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes files and prints: the other ranks compute the same numbers."""
        return self.rank == 0


def pick_device(choice: str, local_rank: int = 0) -> torch.device:
    """`--device auto` takes the GPU when there is one; `cuda` refuses to fall back to the CPU
    (a run asked for a GPU should not quietly take a hundred times longer)."""
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
