"""Profile a serving worker under load with py-spy: where does a request's time go?

    python -m loadtest.profile_service                       # lean route, 32 users, 15 s
    python -m loadtest.profile_service --payload native --seconds 20

Starts a server (1 worker), drives it with the comparison's Locust users (no think time), and
samples the worker with py-spy (`record --format raw`, native frames off, idle threads off) for
the measured part. Prints and writes (loadtest/results/profile-<payload>.md) the functions with
the most samples on the stack (inclusive) and at the top of it (self), and keeps the collapsed
stacks (profile-<payload>.txt) for a flame graph (e.g. speedscope or flamegraph.pl).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from loadtest.compare import LOCUSTFILE
from loadtest.run_load import run_locust
from loadtest.servers import start_server, worker_processes

ROOT = Path(__file__).resolve().parent.parent


def frame_name(frame: str) -> str:
    """'function (path/to/file.py:123)' -> 'function (file.py)'."""
    if " (" not in frame:
        return frame
    name, where = frame.split(" (", 1)
    file = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(file).parts
    short = "/".join(parts[-2:]) if len(parts) > 1 else file
    return f"{name} ({short})"


# Frames every sample passes through (thread and event-loop plumbing, the CLI): left out of
# the inclusive table, which is about where the request's work goes.
PLUMBING = (
    "threading.py",
    "runpy",
    "click/",
    "asyncio/runners.py",
    "asyncio/base_events.py",
    "futures/thread.py",
    "uvicorn/_compat.py",
    "uvicorn/server.py",
    "uvicorn/main.py",
    "worker/service.py",
    "<module>",
)


def summarize(collapsed: str, top: int) -> str:
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [frame_name(f) for f in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            if not any(p in name for p in PLUMBING):
                inclusive[name] += count
    lines = [f"{total} samples of the worker's busy threads.", ""]
    for title, counter in (("self (top of the stack)", own), ("inclusive (anywhere)", inclusive)):
        lines += [f"| {title} | share |", "| --- | ---: |"]
        for name, count in counter.most_common(top):
            lines.append(f"| `{name}` | {100 * count / max(total, 1):.1f}% |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--payload", default="lean-json", help="compare_locust.py kind")
    parser.add_argument("--model", default="mnist-rnn")
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    scratch = Path(tempfile.mkdtemp(prefix="rnnserve-profile-"))
    out = ROOT / "loadtest" / "results"
    server = start_server(scratch, model_dir=str(ROOT / "models"), default_digit_model=args.model)
    env = {"COMPARE_PAYLOAD": args.payload, "COMPARE_MODEL": args.model}
    try:
        run_locust(server.url, args.users, 3, scratch / "warmup", locustfile=LOCUSTFILE, env=env)
        worker = worker_processes(server.process.pid)[0]
        raw = scratch / "profile.txt"
        record = [py_spy, "record", "--pid", str(worker.pid), "--format", "raw", "--output"]
        record += [str(raw), "--duration", str(int(args.seconds)), "--rate", "200", "--nonblocking"]
        load = threading.Thread(
            target=run_locust,
            args=(server.url, args.users, args.seconds + 2, scratch / "load"),
            kwargs={"locustfile": LOCUSTFILE, "env": env},
        )
        load.start()
        subprocess.run(record, check=True, capture_output=True, timeout=args.seconds + 60)
        load.join()
    finally:
        server.stop()
    collapsed = raw.read_text()
    (out / f"profile-{args.payload}.txt").write_text(collapsed)
    report = (
        f"# py-spy profile: {args.payload}, {args.users} users, {args.seconds:g} s\n\n"
        f"Command: `python -m loadtest.profile_service {' '.join(argv or sys.argv[1:])}`\n\n"
        + summarize(collapsed, args.top)
    )
    (out / f"profile-{args.payload}.md").write_text(report)
    print(report)
    return report


if __name__ == "__main__":
    main()
