"""A/B benchmark of two revisions of the service, in one run, alternating.

    python -m loadtest.ab --baseline 246c5e2                    # lean pixels at 32 clients
    python -m loadtest.ab --baseline HEAD~3 --scenarios "lean pixels, batching on" next_char \
        --clients 1 32 --rounds 5 --out loadtest/results/ab-pipeline.md

The baseline is checked out into a temporary git worktree and served from there; the candidate
is this checkout. Each round starts a fresh server of each revision in turn and loads it with
the closed-loop clients of loadtest/bench_service.py, so both share the machine's mood: quote
the per-round ratios, not absolute figures (the machines are shared and drift by ~20%).
Only 127.0.0.1 is targeted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.bench_service import SCENARIOS, percentile, run_level, scenario_requests
from loadtest.servers import start_server

ROOT = Path(__file__).resolve().parent.parent


def worktree(revision: str, into: Path) -> Path:
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(into), revision],
        check=True,
        capture_output=True,
    )
    return into


def measure(
    source: Path, scenario: str, clients: int, seconds: float, warmup: float, scratch: Path
) -> dict[str, float]:
    settings: dict[str, Any] = {"model_dir": str(source / "models"), **SCENARIOS[scenario]}
    server = start_server(scratch, cwd=source, **settings)
    try:
        lat, errors, elapsed = asyncio.run(
            run_level(server.url, scenario_requests(scenario), clients, seconds, warmup)
        )
    finally:
        server.stop()
    return {
        "rps": len(lat) / elapsed,
        "p50_ms": percentile(lat, 50),
        "p99_ms": percentile(lat, 99),
        "errors": errors,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", required=True, help="git revision to compare against")
    parser.add_argument(
        "--scenarios", nargs="+", default=["lean pixels, batching on"], choices=list(SCENARIOS)
    )
    parser.add_argument("--clients", type=int, nargs="+", default=[32])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--out", type=Path, help="write the markdown report here")
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="rnnserve-ab-") as tmp:
        base = worktree(args.baseline, Path(tmp) / "baseline")
        try:
            for round_no in range(args.rounds):
                for scenario in args.scenarios:
                    for clients in args.clients:
                        for label, source in (("baseline", base), ("candidate", ROOT)):
                            scratch = Path(tmp) / f"{round_no}-{label}-{clients}-{len(rows)}"
                            m = measure(
                                source, scenario, clients, args.seconds, args.warmup, scratch
                            )
                            rows.append(
                                {
                                    "round": round_no,
                                    "scenario": scenario,
                                    "clients": clients,
                                    "label": label,
                                    **m,
                                }
                            )
                            print(
                                f"round {round_no + 1} {scenario:26s} {clients:3d} clients "
                                f"{label:9s}: {m['rps']:8.1f} req/s p50 {m['p50_ms']:6.1f} "
                                f"p99 {m['p99_ms']:6.1f} ms errors {m['errors']}",
                                flush=True,
                            )
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], check=False
            )
    report = render(rows, args, argv)
    print(report)
    if args.out:
        args.out.write_text(report)
    return 0


def render(rows: list[dict[str, Any]], args: argparse.Namespace, argv: list[str]) -> str:
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    lines = [
        "# A/B: baseline vs candidate",
        "",
        f"Command: `python -m loadtest.ab {' '.join(map(shlex.quote, argv))}`  ",
        f"Date: {time.strftime('%Y-%m-%d')}  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, client and server on the same machine  ",
        f"Baseline: `{args.baseline}`; candidate: `{head}` (with the working tree's changes, "
        "if any); "
        f"{args.seconds:g} s per run after {args.warmup:g} s warm-up, {args.rounds} rounds, "
        "each round runs baseline then candidate.",
        "",
        "| scenario | clients | baseline req/s | candidate req/s | ratio per round | median "
        "ratio | baseline p99 ms | candidate p99 ms | errors |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for scenario in args.scenarios:
        for clients in args.clients:
            pick = [r for r in rows if r["scenario"] == scenario and r["clients"] == clients]
            base = [r for r in pick if r["label"] == "baseline"]
            cand = [r for r in pick if r["label"] == "candidate"]
            ratios = [c["rps"] / b["rps"] for b, c in zip(base, cand, strict=True)]
            lines.append(
                f"| {scenario} | {clients} | {np.median([r['rps'] for r in base]):.0f} | "
                f"{np.median([r['rps'] for r in cand]):.0f} | "
                f"{', '.join(f'{x:.2f}' for x in ratios)} | {np.median(ratios):.2f}x | "
                f"{np.median([r['p99_ms'] for r in base]):.1f} | "
                f"{np.median([r['p99_ms'] for r in cand]):.1f} | "
                f"{sum(r['errors'] for r in pick)} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
