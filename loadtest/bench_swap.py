"""Model swaps under load: what an SRE's rollout does to the clients, and to worker memory.

    python -m loadtest.bench_swap [--workers 2] [--clients 16] [--cycles 20]

A real `bentoml serve` with model control `explicit` and `--workers` workers, on a copy of the
committed repository (in a temp dir), `--clients` threads posting V2 inferences to mnist-rnn
on connections of their own the whole time. Then, in order:

1. version 2 appears (a copy of version 1, renamed into place as export does) and is loaded:
   the load call's time, failed requests, and the versions answered after the call returned;
2. a version 3 with one flipped byte is loaded: refused, with failed requests and versions;
3. `--cycles` unload + load cycles of the model, the workers' resident memory before and after.

Writes loadtest/results/model_swap.md (and .json). Only 127.0.0.1; bounded in time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil

from loadtest.servers import Server, start_server

ROOT = Path(__file__).resolve().parents[1]
MODEL = "mnist-rnn"
KEEP = ("mnist-rnn", "mnist-bigru", "char-rnn")  # the default classifier must be among them
INFER = {
    "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 28, 28], "data": [0.0] * 784}]
}
Change = Callable[[dict[str, Any], Path], None]


def copy_repository(target: Path, names: tuple[str, ...] = KEEP) -> Path:
    """Version 1 of `names` from the committed repository into `target`."""
    for name in names:
        shutil.copytree(ROOT / "models" / name / "1", target / name / "1")
    return target


def new_version(repo: Path, name: str, version: int, change: Change | None = None) -> Path:
    """A copy of version 1 of `name` as `version` (the same files; `change(card, folder)` may
    alter it), written under a hidden name and renamed into place, as export does."""
    staging = repo / name / f".incoming-{version}"
    shutil.copytree(repo / name / "1", staging)
    card = json.loads((staging / "card.json").read_text())
    card["version"] = version
    if change is not None:
        change(card, staging)
    (staging / "card.json").write_text(json.dumps(card))
    final = repo / name / str(version)
    staging.rename(final)
    return final


def corrupt_byte(card: dict[str, Any], folder: Path) -> None:
    """One flipped bit in the middle of the ONNX file (the card unchanged)."""
    target = folder / "model.onnx"
    blob = bytearray(target.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    target.write_bytes(bytes(blob))


class Traffic:
    """`clients` threads posting V2 inferences until stopped, each on a connection of its own,
    renewed every 20 requests so that the kernel spreads them over the workers."""

    def __init__(self, url: str, clients: int, model: str = MODEL) -> None:
        self.url = url
        self.path = f"/v2/models/{model}/infer"
        self.stop = threading.Event()
        self.results: list[tuple[float, float, int, str]] = []  # start, end, status, version
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(clients)]

    def run(self) -> None:
        while not self.stop.is_set():
            with httpx.Client(base_url=self.url, timeout=30) as client:
                for _ in range(20):
                    if self.stop.is_set():
                        return
                    started = time.monotonic()
                    try:
                        r = client.post(self.path, json=INFER)
                        status, version = r.status_code, str(r.json().get("model_version", ""))
                    except (httpx.HTTPError, ValueError) as exc:
                        status, version = -1, type(exc).__name__
                    with self.lock:
                        self.results.append((started, time.monotonic(), status, version))

    def __enter__(self) -> Traffic:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)

    def since(self, moment: float) -> list[tuple[float, float, int, str]]:
        """Requests sent at or after `moment`."""
        with self.lock:
            return [r for r in self.results if r[0] >= moment]

    def latency_ms(self, start: float, end: float) -> dict[str, float]:
        """p50 and p99 of the answered requests sent between `start` and `end`."""
        with self.lock:
            took = sorted(
                1000 * (r[1] - r[0]) for r in self.results if start <= r[0] < end and r[2] == 200
            )
        if not took:
            return {"p50": 0.0, "p99": 0.0}
        return {
            "p50": round(took[len(took) // 2], 1),
            "p99": round(took[min(len(took) - 1, int(len(took) * 0.99))], 1),
        }

    def failed(self) -> list[tuple[float, float, int, str]]:
        with self.lock:
            return [r for r in self.results if r[2] != 200]


def workers_rss_mb(server: Server) -> float:
    """Resident memory of the server's worker processes, in MB (the arbiter left out)."""
    total = 0
    for proc in psutil.Process(server.process.pid).children(recursive=True):
        try:
            if "worker" in " ".join(proc.cmdline()):
                total += proc.memory_info().rss
        except psutil.Error:
            continue
    return total / 1e6


def control(server: Server, action: str, name: str = MODEL) -> tuple[int, float, str]:
    """A repository call: status, seconds, error text."""
    started = time.perf_counter()
    r = httpx.post(f"{server.url}/v2/repository/models/{name}/{action}", timeout=300)
    error = r.json().get("error", "") if r.content else ""
    return r.status_code, time.perf_counter() - started, error


def run(workers: int, clients: int, cycles: int) -> dict[str, Any]:
    scratch = Path(tempfile.mkdtemp(prefix="rnnserve-bench-swap-"))
    repo = copy_repository(scratch / "models")
    server = start_server(
        scratch, model_dir=str(repo), workers=str(workers), model_control="explicit"
    )
    result: dict[str, Any] = {"workers": workers, "clients": clients, "cycles": cycles}
    try:
        with Traffic(server.url, clients) as traffic:
            time.sleep(3)
            steady = time.monotonic()
            time.sleep(3)
            new_version(repo, MODEL, 2)
            calling = time.monotonic()
            status, seconds, error = control(server, "load")
            switched = time.monotonic()
            time.sleep(3)
            after = traffic.since(switched)
            result["latency_ms"] = {
                "steady, 3 s before": traffic.latency_ms(steady, calling),
                "during the load call and 3 s after": traffic.latency_ms(calling, time.monotonic()),
            }
            result["swap"] = {
                "status": status,
                "error": error,
                "load_call_s": round(seconds, 3),
                "requests_after": len(after),
                "versions_after": sorted({r[3] for r in after}),
                "failed_so_far": len(traffic.failed()),
            }
            new_version(repo, MODEL, 3, corrupt_byte)
            status, seconds, error = control(server, "load")
            refused_at = time.monotonic()
            time.sleep(3)
            after = traffic.since(refused_at)
            result["corrupted"] = {
                "status": status,
                "error": error[:1000],
                "load_call_s": round(seconds, 3),
                "requests_after": len(after),
                "versions_after": sorted({r[3] for r in after}),
                "failed_so_far": len(traffic.failed()),
            }
            result["requests"] = len(traffic.results)
            result["failed"] = len(traffic.failed())
        shutil.rmtree(repo / MODEL / "3")  # the policy would select it on every load
        before = workers_rss_mb(server)
        timings = []
        for _ in range(cycles):
            unload = control(server, "unload")
            load = control(server, "load")
            if unload[0] != 200 or load[0] != 200:
                raise SystemExit(f"a cycle failed: unload {unload}, load {load}")
            timings.append(load[1])
        time.sleep(1)
        after_mb = workers_rss_mb(server)
        result["cycles_memory"] = {
            "workers_rss_mb_before": round(before, 1),
            "workers_rss_mb_after": round(after_mb, 1),
            "change": round(after_mb / before - 1, 4),
            "load_call_s_median": round(sorted(timings)[len(timings) // 2], 3) if timings else None,
        }
    finally:
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    return result


def report(result: dict[str, Any], command: str) -> str:
    swap, bad, mem = result["swap"], result["corrupted"], result["cycles_memory"]
    lines = [
        "# Model swaps under load",
        "",
        f"Command: `{command}`",
        f"Date: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, no GPU; {result['workers']} "
        f"workers, {result['clients']} client threads posting V2 inferences to {MODEL} the whole "
        "time, on the same host.",
        "",
        "| step | load call answers | load call s | requests after it (3 s) | versions "
        "answered after it | failed requests so far |",
        "| --- | ---: | ---: | ---: | --- | ---: |",
        f"| load version 2 | {swap['status']} | {swap['load_call_s']} | "
        f"{swap['requests_after']:,} | {', '.join(swap['versions_after'])} | "
        f"{swap['failed_so_far']} |",
        f"| load version 3 (one flipped byte) | {bad['status']} | {bad['load_call_s']} | "
        f"{bad['requests_after']:,} | {', '.join(bad['versions_after'])} | "
        f"{bad['failed_so_far']} |",
        "",
        f"{result['requests']:,} requests in all, **{result['failed']} failed**. The refused "
        f"load said: `{bad['error']}`",
        "",
        "| requests sent | p50 ms | p99 ms |",
        "| --- | ---: | ---: |",
        *(
            f"| {window} | {ms['p50']} | {ms['p99']} |"
            for window, ms in result["latency_ms"].items()
        ),
        "",
        f"{result['cycles']} unload + load cycles: the workers' resident memory "
        f"{mem['workers_rss_mb_before']} MB before, {mem['workers_rss_mb_after']} MB after "
        f"(**{mem['change']:+.1%}**); a load call took {mem['load_call_s_median']} s (median).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--cycles", type=int, default=20)
    args = parser.parse_args(argv)
    result = run(args.workers, args.clients, args.cycles)
    command = "python -m loadtest.bench_swap " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    text = report(result, command.strip())
    out = ROOT / "loadtest" / "results" / "model_swap.md"
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    print(text)
    return text


if __name__ == "__main__":
    main()
