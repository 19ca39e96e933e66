"""A/B of the text workload between two revisions, in one run, alternating.

    python -m loadtest.ab_text --baseline 1a42349 --rounds 3 --out loadtest/results/ab-text.md

The baseline is checked out into a temporary git worktree and served from there; the candidate
is this checkout. Each round starts a fresh server of each revision in turn and runs the
whole-text parts of loadtest/bench_text.py against it (a baseline without carried states can
run those): next_char at 1 and 32 clients with 400-character texts, and generation at 1 and 32
clients on both routes. Both revisions share the machine's mood, so quote the per-round ratios:
single runs of bench_text drift by a third from one run to the next on this machine. Only
127.0.0.1 is targeted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from loadtest import bench_text
from loadtest.ab import ROOT, worktree
from loadtest.servers import start_server

# (what, how to read it from bench_text's JSON)
MEASURES: list[tuple[str, str]] = [
    ("next_char 400 chars, 1 client, req/s", "next_char:1"),
    ("next_char 400 chars, 32 clients, req/s", "next_char:32"),
    ("/generate 500 chars, 1 client, chars/s", "generate:1"),
    ("/generate 500 chars, 32 clients, chars/s", "generate:32"),
    ("stream 500 chars, 1 client, chars/s", "stream:1"),
    ("stream 500 chars, 32 clients, chars/s", "stream:32"),
]


def run_bench(source: Path, scratch: Path, name: str, seconds: float) -> dict[str, float]:
    """One bench_text run of the whole-text parts against a fresh server of `source`."""
    server = start_server(scratch, cwd=source, model_dir=str(source / "models"))
    try:
        bench_text.main(
            [
                "--url",
                server.url,
                "--sections",
                "next_char",
                "generation",
                "--clients",
                "1",
                "32",
                "--lengths",
                "400",
                "--modes",
                "whole",
                "--seconds",
                str(seconds),
                "--gen-clients",
                "1",
                "32",
                "--httpx-clients",
                "1",
                "--out",
                str(scratch),
                "--name",
                name,
            ]
        )
    finally:
        server.stop()
    data = json.loads((scratch / f"{name}.json").read_text())
    values: dict[str, float] = {}
    for level in data["next_char"]["levels"]:
        values[f"next_char:{level['clients']}"] = level["rps"]
    for level in data["generation"]["levels"]:
        values[f"generate:{level['clients']}"] = level["generate_chars_per_s"]
        values[f"stream:{level['clients']}"] = level["stream_chars_per_s"]
    return values


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", required=True, help="the revision to compare against")
    parser.add_argument("--rounds", type=int, default=3, help="(default %(default)s)")
    parser.add_argument(
        "--seconds",
        type=float,
        default=5.0,
        help="next_char seconds per level (default %(default)s)",
    )
    parser.add_argument("--out", type=Path, help="write the Markdown report here")
    args = parser.parse_args(argv)
    runs: dict[str, list[dict[str, float]]] = {"baseline": [], "candidate": []}
    with tempfile.TemporaryDirectory(prefix="ab-text-") as tmp:
        base = worktree(args.baseline, Path(tmp) / "baseline")
        try:
            for round_no in range(args.rounds):
                for label, source in (("baseline", base), ("candidate", ROOT)):
                    scratch = Path(tmp) / f"{label}-{round_no}"
                    scratch.mkdir()
                    values = run_bench(source, scratch, f"{label}-{round_no}", args.seconds)
                    runs[label].append(values)
                    print(f"round {round_no + 1} {label}: {values}", flush=True)
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], check=False
            )
    report = render(runs, args, argv)
    print(report)
    if args.out:
        args.out.write_text(report)
    return 0


def render(
    runs: dict[str, list[dict[str, float]]], args: argparse.Namespace, argv: list[str]
) -> str:
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    lines = [
        "# A/B of the text workload: baseline vs candidate",
        "",
        f"Command: `python -m loadtest.ab_text {' '.join(map(shlex.quote, argv))}`  ",
        f"Date: {time.strftime('%Y-%m-%d')}  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, client and server on the same machine  ",
        f"Baseline: `{args.baseline}`; candidate: `{head}` (with the working tree's changes, if "
        f"any); {args.rounds} rounds, each running baseline then candidate on a fresh server; "
        "the whole-text parts of loadtest/bench_text.py (each generation client sends 2 "
        "generations back to back).",
        "",
        "| measure | baseline (median) | candidate (median) | ratio per round | median ratio |",
        "| --- | ---: | ---: | --- | ---: |",
    ]
    for what, key in MEASURES:
        base = [r[key] for r in runs["baseline"] if key in r]
        cand = [r[key] for r in runs["candidate"] if key in r]
        if not base or not cand:
            continue
        ratios = [c / b for b, c in zip(base, cand, strict=False)]
        lines.append(
            f"| {what} | {np.median(base):,.1f} | {np.median(cand):,.1f} | "
            f"{', '.join(f'{x:.2f}' for x in ratios)} | {np.median(ratios):.2f}x |"
        )
    lines += [
        "",
        "Within each revision and round, 32 clients over 1 (the batching gain):",
        "",
        "| measure | baseline, per round | candidate, per round |",
        "| --- | --- | --- |",
    ]
    for name in ("next_char", "generate", "stream"):
        gains = {
            label: [r[f"{name}:32"] / r[f"{name}:1"] for r in rows] for label, rows in runs.items()
        }
        lines.append(
            f"| {name} | {', '.join(f'{x:.1f}x' for x in gains['baseline'])} | "
            f"{', '.join(f'{x:.1f}x' for x in gains['candidate'])} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
