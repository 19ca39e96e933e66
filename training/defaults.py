"""The committed default models: their exact training settings, and one command that rebuilds
them all (train, then export into models/, then print the summary).

    python -m training.defaults all          # what `make models` runs
    python -m training.defaults train --only mnist-rnn
    python -m training.defaults export

Runs go to runs/<name>/ with their logs in runs/logs/<name>.log. With --jobs 2 (the default),
two trainings run side by side with one torch thread each, which on a 2-core machine finishes
sooner than one at a time with two threads (these small recurrent nets scale poorly across
threads).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from training import export, summary

# name -> arguments for `python -m training.train` (data location comes from the environment)
DEFAULT_MODELS: dict[str, list[str]] = {
    "mnist-rnn": ["mnist", "--cell", "rnn", "--augment", "--epochs", "40", "--patience", "10"],
    "mnist-birnn": [
        "mnist",
        "--cell",
        "rnn",
        "--bidirectional",
        "--augment",
        "--epochs",
        "30",
        "--patience",
        "8",
    ],
    "mnist-bigru": [
        "mnist",
        "--cell",
        "gru",
        "--bidirectional",
        "--dropout",
        "0.2",
        "--augment",
        "--epochs",
        "20",
        "--patience",
        "5",
    ],
    "char-rnn": [
        "charlm",
        "--cell",
        "lstm",
        "--hidden",
        "256",
        "--layers",
        "2",
        "--dropout",
        "0.2",
        "--epochs",
        "25",
        "--patience",
        "4",
    ],
}


def train_one(name: str, runs: Path, threads: int, data_dir: str | None) -> tuple[str, int, float]:
    log_path = runs / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "training.train",
        *DEFAULT_MODELS[name],
        "--name",
        name,
        "--out",
        str(runs / name),
        "--no-progress",
        "--threads",
        str(threads),
    ]
    if data_dir:
        cmd += ["--data-dir", data_dir]
    started = time.perf_counter()
    print(f"[{name}] training, log: {log_path}", file=sys.stderr, flush=True)
    with log_path.open("w") as log:
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    elapsed = time.perf_counter() - started
    status = "done" if code == 0 else f"FAILED (exit {code}, see {log_path})"
    print(f"[{name}] {status} in {elapsed / 60:.1f} min", file=sys.stderr, flush=True)
    return name, code, elapsed


def train_all(names: list[str], runs: Path, jobs: int, data_dir: str | None) -> bool:
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = list(pool.map(lambda n: train_one(n, runs, threads, data_dir), names))
    return all(code == 0 for _, code, _ in results)


def export_all(names: list[str], runs: Path, models: Path, data_dir: str | None) -> None:
    for name in names:
        card = export.export_run(runs / name, models / name, data_dir=data_dir)
        print(
            f"[{name}] exported via {card['export']['onnx']['exporter']} -> {models / name}",
            file=sys.stderr,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.defaults",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("step", choices=("train", "export", "all"))
    parser.add_argument("--only", nargs="+", choices=list(DEFAULT_MODELS), help="a subset")
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--jobs", type=int, default=2, help="trainings run side by side")
    parser.add_argument("--data-dir", help="data root (else $RNNSERVE_DATA_DIR, else the cache)")
    args = parser.parse_args(argv)
    names = args.only or list(DEFAULT_MODELS)
    if args.step in ("train", "all") and not train_all(names, args.runs, args.jobs, args.data_dir):
        return 1
    if args.step in ("export", "all"):
        export_all(names, args.runs, args.models, args.data_dir)
        return summary.main([str(args.models)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
