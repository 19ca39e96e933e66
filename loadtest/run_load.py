"""Stepped, bounded Locust load test of the traffic mix, with a report.

    python -m loadtest.run_load                         # starts rnnserve, steps 1/8/32/64 users
    python -m loadtest.run_load --host http://127.0.0.1:3000 --steps 8 32 --seconds 20

The side-by-side comparison with FastAPI and Triton is loadtest/compare.py (`make compare`).

Each step is one headless Locust run of fixed length that stops by itself. Written to --out
(default loadtest/results/): Locust's CSV and HTML per step, `summary.md` (requests/s,
p50/p95/p99 and failures per endpoint and step), `load.png` (throughput and latency against
users). Traffic goes to 127.0.0.1 unless --host says otherwise.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from loadtest.servers import start_server

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"


@dataclass
class Row:
    target: str
    users: int
    name: str
    requests: int
    failures: int
    rps: float
    p50: float
    p95: float
    p99: float


def run_locust(
    host: str,
    users: int,
    seconds: float,
    prefix: Path,
    user_classes: list[str] | None = None,
    locustfile: Path = LOCUSTFILE,
    env: dict[str, str] | None = None,
) -> list[Row]:
    """One bounded headless Locust run; returns its per-endpoint rows (and 'Aggregated')."""
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(locustfile),
        "--headless",
        "--host",
        host,
        "-u",
        str(users),
        "-r",
        str(users),
        "-t",
        f"{seconds:g}s",
        "--stop-timeout",
        "5",
        "--csv",
        str(prefix),
        "--html",
        f"{prefix}.html",
        "--only-summary",
        "--loglevel",
        "WARNING",
        *(user_classes or []),
    ]
    subprocess.run(
        cmd,
        cwd=ROOT,
        check=False,
        timeout=seconds + 120,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )
    rows = []
    with open(f"{prefix}_stats.csv", newline="") as fh:
        for rec in csv.DictReader(fh):
            rows.append(
                Row(
                    "",
                    users,
                    rec["Name"],
                    int(rec["Request Count"]),
                    int(rec["Failure Count"]),
                    float(rec["Requests/s"]),
                    percentile_ms(rec["50%"]),
                    percentile_ms(rec["95%"]),
                    percentile_ms(rec["99%"]),
                )
            )
    return rows


def percentile_ms(cell: str) -> float:
    """A percentile cell of Locust's stats CSV: milliseconds, or "N/A" (or empty) where the
    endpoint had no request to measure, read as 0 (the request count says why)."""
    return 0.0 if cell in ("", "N/A") else float(cell)


def table(rows: list[Row]) -> str:
    lines = [
        "| target | users | endpoint | requests | failures | req/s | p50 ms | p95 ms | p99 ms |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r.target} | {r.users} | {r.name} | {r.requests} | {r.failures} | "
            f"{r.rps:.1f} | {r.p50:.0f} | {r.p95:.0f} | {r.p99:.0f} |"
        )
    return "\n".join(lines)


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg = [r for r in rows if r.name == "Aggregated"]
    users = [r.users for r in agg]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(users, [r.rps for r in agg], "o-")
    left.set_xlabel("concurrent users")
    left.set_ylabel("requests/s (all endpoints)")
    left.set_title("throughput")
    left.set_xscale("log", base=2)
    left.grid(alpha=0.3)
    for label in ("p50", "p95", "p99"):
        right.plot(users, [getattr(r, label) for r in agg], "o-", label=label)
    right.set_xlabel("concurrent users")
    right.set_ylabel("latency (ms)")
    right.set_title("latency percentiles")
    right.set_xscale("log", base=2)
    right.grid(alpha=0.3)
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.run_load",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--host", help="target a running server instead of starting one")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--seconds", type=float, default=20.0, help="per step")
    parser.add_argument("--out", type=Path, default=ROOT / "loadtest" / "results")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    machine = f"{os.cpu_count()} CPU cores ({platform.machine()}), no GPU, client on the same host"
    with tempfile.TemporaryDirectory(prefix="rnnserve-load-") as tmp:
        scratch = Path(tmp)
        server = (
            None if args.host else start_server(scratch / "serve", model_dir=str(ROOT / "models"))
        )
        host = args.host or (server.url if server else "")
        rows: list[Row] = []
        try:
            for users in args.steps:
                step = run_locust(host, users, args.seconds, args.out / f"step-{users}")
                for r in step:
                    r.target = "rnnserve"
                rows += step
                agg = next(r for r in step if r.name == "Aggregated")
                print(
                    f"{users:3d} users: {agg.rps:7.1f} req/s  p50 {agg.p50:.0f}  p95 "
                    f"{agg.p95:.0f}  p99 {agg.p99:.0f} ms  failures {agg.failures}",
                    flush=True,
                )
        finally:
            if server is not None:
                server.stop()
        summary = (
            f"Locust mix (pixels 5 : image 2 : text 3), {args.seconds:g} s per step; "
            f"{machine}.\n\n" + table(rows)
        )
        (args.out / "summary.md").write_text(summary + "\n")
        plot(rows, args.out / "load.png")
        print("\n" + summary)


if __name__ == "__main__":
    main()
