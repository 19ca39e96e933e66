"""Time the test suite's two layers, for the figures docs/development.md quotes.

    python -m loadtest.time_tests            # writes loadtest/results/test_times.md

Runs `pytest -m "not slow"` (the fast layer: units and the in-process service) and then the
whole suite, each in a fresh interpreter from the repository root, and records the wall time
and the counts pytest reports. pyproject.toml's addopts apply (two xdist workers), as
they do for `make test`. A layer that fails is recorded as failed and the script exits
non-zero: a timing of a broken suite is no figure to quote.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"fast layer": ["-m", "not slow"], "whole suite": []}
# pytest -q's last line: "418 passed, 2 deselected in 358.65s (0:05:58)"
SUMMARY = re.compile(r"^=*\s*(\d+ (?:passed|failed|error).*?) in [\d.]+s", re.MULTILINE)


@dataclass(frozen=True)
class Timing:
    layer: str
    command: str
    seconds: float
    summary: str
    ok: bool


def run_layer(layer: str, extra: list[str]) -> Timing:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    found = SUMMARY.findall(done.stdout)
    summary = found[-1] if found else "no pytest summary (see its output)"
    shown = " ".join(["pytest", *(f'"{a}"' if " " in a else a for a in extra)])
    return Timing(layer, shown, seconds, summary, done.returncode == 0)


def pytest_addopts() -> str:
    """The options pyproject.toml adds to every pytest run (the worker count among them)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return str(config["tool"]["pytest"]["ini_options"].get("addopts", ""))


def render(timings: list[Timing]) -> str:
    lines = [
        "# Test suite timings",
        "",
        "Command: `python -m loadtest.time_tests`  ",
        f"Date: {dt.date.today().isoformat()}  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, no other job running  ",
        f"pytest options from pyproject.toml: `{pytest_addopts()}`",
        "",
        "| layer | command | wall time s | result |",
        "| --- | --- | ---: | --- |",
    ]
    for t in timings:
        result = t.summary if t.ok else f"FAILED: {t.summary}"
        lines.append(f"| {t.layer} | `{t.command}` | {t.seconds:.0f} | {result} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "loadtest" / "results" / "test_times.md")
    args = parser.parse_args(argv)
    timings = []
    for layer, extra in LAYERS.items():
        timing = run_layer(layer, extra)
        print(f"{layer}: {timing.seconds:.0f} s, {timing.summary}", flush=True)
        timings.append(timing)
    args.out.write_text(render(timings))
    print(args.out.read_text())
    return 0 if all(t.ok for t in timings) else 1


if __name__ == "__main__":
    raise SystemExit(main())
