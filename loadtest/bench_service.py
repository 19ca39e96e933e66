"""HTTP benchmark of the running service: throughput and latency at 1, 8, 32, 64 clients.

    python -m loadtest.bench_service                 # starts its own servers, ~4 minutes
    python -m loadtest.bench_service --seconds 5 --clients 1 8
    python -m loadtest.bench_service --rounds 3 --clients 32 --scenarios "pixels, batching on" \
        "pixels, batching off"                       # alternating rounds, median ratio

For each scenario a fresh `bentoml serve` is started on a free 127.0.0.1 port (with its
BentoML home and temp dir in a scratch folder), timed to readiness, loaded by closed-loop
clients (each sends its next request when the previous one answered) for a fixed time, and
stopped. Scenarios: the lean pixel route (/v1/digits, continuous batching) and the native
pixel endpoint (/classify_pixels, BentoML's adaptive batching), each with batching on and off
(one 28x28 image per request), the image upload endpoint and next-character prediction.
Reported per level: requests/s, p50/p95/p99 latency, errors, and the worker's resident
memory. Only loopback addresses are ever targeted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from loadtest.payloads import PROMPTS
from loadtest.payloads import digits as real_digits
from loadtest.servers import start_server, wait_ready, worker_rss_mb

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Level:
    scenario: str
    clients: int
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    round: int = 0


@dataclass
class Request:
    path: str
    json: Any = None
    form: tuple[str, bytes] | None = None  # (field, png bytes) for uploads


def scenario_requests(name: str) -> list[Request]:
    if name.startswith("lean pixels"):
        return [Request("/v1/digits", {"pixels": d.pixels}) for d in real_digits()]
    if name.startswith("pixels"):
        return [
            Request("/classify_pixels", {"images": [{"pixels": d.pixels}]}) for d in real_digits()
        ]
    if name == "image upload":
        return [Request("/classify_image", form=("image", d.png)) for d in real_digits()]
    if name == "next_char":
        return [Request("/next_char", {"text": p, "k": 5}) for p in PROMPTS]
    raise ValueError(f"unknown scenario {name!r}")


async def one_client(
    session: aiohttp.ClientSession,
    url: str,
    requests: list[Request],
    stop_at: float,
    latencies: list[float],
    errors: list[int],
    offset: int,
) -> None:
    i = offset
    while time.perf_counter() < stop_at:
        req = requests[i % len(requests)]
        i += 1
        started = time.perf_counter()
        try:
            if req.form is not None:
                data = aiohttp.FormData()
                data.add_field(req.form[0], req.form[1], filename="d.png", content_type="image/png")
                resp_ctx = session.post(url + req.path, data=data)
            else:
                resp_ctx = session.post(url + req.path, json=req.json)
            async with resp_ctx as resp:
                await resp.read()
                ok = resp.status == 200
        except aiohttp.ClientError:
            ok = False
        if ok:
            latencies.append((time.perf_counter() - started) * 1000)
        else:
            errors.append(1)


async def run_level(
    url: str, requests: list[Request], clients: int, seconds: float, warmup: float
) -> tuple[list[float], int, float]:
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        if warmup:
            await asyncio.gather(
                *(
                    one_client(session, url, requests, time.perf_counter() + warmup, [], [], c)
                    for c in range(clients)
                )
            )
        latencies: list[float] = []
        errors: list[int] = []
        started = time.perf_counter()
        await asyncio.gather(
            *(
                one_client(session, url, requests, started + seconds, latencies, errors, c)
                for c in range(clients)
            )
        )
        return latencies, len(errors), time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


SCENARIOS = {
    "lean pixels, batching on": {},
    "lean pixels, batching off": {"batching": "off"},
    "pixels, batching on": {},
    "pixels, batching off": {"batching": "off"},
    "image upload": {},
    "next_char": {},
}


def bench(
    clients: list[int],
    seconds: float,
    warmup: float,
    scenarios: list[str],
    settings: dict[str, str],
    rounds: int = 1,
) -> dict[str, Any]:
    """Every scenario once per round, rounds one after the other, so that scenarios compared
    with each other (batching on and off) alternate and share the machine's mood."""
    levels: list[Level] = []
    servers: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="rnnserve-bench-") as tmp:
        for round_no in range(rounds):
            for name in scenarios:
                scratch = Path(tmp) / f"{round_no}-{name.replace(' ', '_').replace(',', '')}"
                scratch.mkdir()
                server_settings: dict[str, Any] = {**settings, **SCENARIOS[name]}
                server = start_server(scratch, wait=False, **server_settings)
                ready_s = wait_ready(server, 120)  # from process start to /readyz == 200
                try:
                    requests = scenario_requests(name)
                    for c in clients:
                        lat, errors, elapsed = asyncio.run(
                            run_level(server.url, requests, c, seconds, warmup)
                        )
                        level = Level(
                            name,
                            c,
                            len(lat),
                            errors,
                            len(lat) / elapsed,
                            percentile(lat, 50),
                            percentile(lat, 95),
                            percentile(lat, 99),
                            round_no,
                        )
                        levels.append(level)
                        print(
                            f"round {round_no + 1} {name:26s} {c:3d} clients: {level.rps:8.1f} "
                            f"req/s  p50 {level.p50_ms:6.1f}  p95 {level.p95_ms:6.1f}  p99 "
                            f"{level.p99_ms:6.1f} ms  errors {errors}",
                            flush=True,
                        )
                    info = servers.setdefault(name, {"ready_s": [], "worker_rss_mb": []})
                    info["ready_s"].append(round(ready_s, 2))
                    sizes = worker_rss_mb(server.process.pid)  # the largest worker's
                    info["worker_rss_mb"].append(round(sizes[-1], 1) if sizes else float("nan"))
                finally:
                    server.stop()
    return {"levels": [asdict(lv) for lv in levels], "servers": servers, "rounds": rounds}


def median_levels(levels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (scenario, clients): the median of the rounds (errors: their sum)."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for lv in levels:
        groups.setdefault((lv["scenario"], lv["clients"]), []).append(lv)
    rows = []
    for (scenario, clients), group in groups.items():
        row: dict[str, Any] = {"scenario": scenario, "clients": clients}
        for key in ("rps", "p50_ms", "p95_ms", "p99_ms"):
            row[key] = float(np.median([lv[key] for lv in group]))
        row["errors"] = sum(lv["errors"] for lv in group)
        rows.append(row)
    return rows


def batching_ratios(levels: list[dict[str, Any]], route: str, clients: int = 32) -> list[float]:
    """Batching on / off requests/s of `route` at `clients`, one ratio per round."""
    by = {(lv["scenario"], lv["clients"], lv["round"]): lv["rps"] for lv in levels}
    ratios = []
    for round_no in sorted({lv["round"] for lv in levels}):
        on = by.get((f"{route}, batching on", clients, round_no))
        off = by.get((f"{route}, batching off", clients, round_no))
        if on and off:
            ratios.append(on / off)
    return ratios


def render(result: dict[str, Any], args: argparse.Namespace) -> str:
    rounds = result.get("rounds", 1)
    command = " ".join(["python -m loadtest.bench_service", *map(shlex.quote, args.argv)])
    lines = [
        f"Command: `{command}`",
        "",
        f"Machine: {os.cpu_count()} CPU cores ({platform.machine()}), no GPU; "
        f"{args.seconds:g} s per level after {args.warmup:g} s warm-up; client and server on "
        "the same machine" + (f"; median of {rounds} alternating rounds." if rounds > 1 else "."),
        "",
        "| scenario | clients | req/s | p50 ms | p95 ms | p99 ms | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for lv in median_levels(result["levels"]):
        lines.append(
            f"| {lv['scenario']} | {lv['clients']} | {lv['rps']:.0f} | "
            f"{lv['p50_ms']:.1f} | {lv['p95_ms']:.1f} | {lv['p99_ms']:.1f} | "
            f"{lv['errors']} |"
        )
    lines += ["", "| server | ready after start (s) | worker RSS (MB) |", "| --- | ---: | ---: |"]
    for name, info in result["servers"].items():
        ready, rss = info["ready_s"], info["worker_rss_mb"]
        lines.append(f"| {name} | {min(ready):.1f}-{max(ready):.1f} | {max(rss):.0f} |")
    lines += ["", "Worker RSS: the largest after the last level, over the rounds."]
    for route in ("lean pixels", "pixels"):
        ratios = batching_ratios(result["levels"], route)
        if ratios:
            each = ", ".join(f"{r:.2f}x" for r in ratios)
            lines += [
                "",
                f"{route}: batching on vs off at 32 clients: "
                + (f"{each} (median {float(np.median(ratios)):.2f}x)" if len(ratios) > 1 else each)
                + " requests/s.",
            ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.bench_service",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--seconds", type=float, default=10.0, help="per level")
    parser.add_argument("--warmup", type=float, default=2.0, help="per level, not counted")
    parser.add_argument("--scenarios", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS))
    parser.add_argument(
        "--rounds", type=int, default=1, help="repeat every scenario, alternating; report medians"
    )
    parser.add_argument("--backend", choices=("onnx", "torchscript"), default="onnx")
    parser.add_argument("--json", type=Path, help="also write raw results here")
    parser.add_argument("--markdown", type=Path, help="also write the tables here")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    result = bench(
        args.clients,
        args.seconds,
        args.warmup,
        args.scenarios,
        {"backend": args.backend, "model_dir": str(ROOT / "models")},
        args.rounds,
    )
    table = render(result, args)
    print("\n" + table)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if args.markdown:
        args.markdown.write_text(table + "\n")


if __name__ == "__main__":
    main()
