"""Flood test: offer several times the load the service can carry, and see it shed the excess.

    python -m loadtest.flood                      # starts its own server, 4x for 8 s
    python -m loadtest.flood --factor 4 --seconds 8 --images 256

1. Capacity: closed-loop clients send `--images`-image binary requests to POST /v1/digits for a
   few seconds; their rate is what one worker carries (C requests/s).
2. Flood: an open-loop generator sends `--factor` x C requests/s for `--seconds` (a request
   leaves on its schedule whether or not earlier ones were answered, as real traffic does).
   Every request carries its own arrangement of real MNIST test digits, so a mixed-up answer
   shows: each accepted answer must give exactly the labels that were sent.
3. Recovery: right after the flood, single requests at idle pace.

Expected: the excess is refused at once with 503 + Retry-After (admission control), accepted
requests keep a bounded latency (queue bound / max wait), no request is lost or answered wrongly,
and the first requests after the flood are as fast as before it. Writes flood.json and flood.md
into --out (default loadtest/results). Only 127.0.0.1 is targeted; the run is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import aiohttp
import numpy as np

from loadtest.payloads import digits
from loadtest.servers import start_server, worker_peak_mb

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Outcome:
    status: int  # 0: no answer (connection error or timeout)
    seconds: float
    wrong: bool = False
    retry_after: bool = False


@dataclass
class FloodResult:
    capacity_rps: float
    offered_rps: float
    seconds: float
    images: int
    idle_ms: float
    outcomes: list[Outcome] = field(default_factory=list)
    after_ms: list[float] = field(default_factory=list)
    worker_peak_mb: float = 0.0


class DigitRequests:
    """Binary /v1/digits bodies of real test digits, a different arrangement each time."""

    def __init__(self, images: int, seed: int = 0) -> None:
        pool = digits()
        self.pixels = np.array([d.pixels for d in pool], dtype=np.uint8)  # (64, 28, 28)
        self.labels = np.array([d.label for d in pool])
        self.images = images
        self.rng = np.random.default_rng(seed)

    def next(self) -> tuple[bytes, list[int]]:
        order = self.rng.integers(0, len(self.labels), self.images)
        return self.pixels[order].tobytes(), self.labels[order].tolist()


async def send(
    session: aiohttp.ClientSession, url: str, body: bytes, labels: list[int], images: int
) -> Outcome:
    headers = {
        "content-type": "application/octet-stream",
        "x-tensor-shape": f"{images},28,28",
        "x-tensor-datatype": "UINT8",
    }
    started = time.perf_counter()
    try:
        async with session.post(f"{url}/v1/digits", data=body, headers=headers) as resp:
            payload = await resp.read()
            elapsed = time.perf_counter() - started
            outcome = Outcome(resp.status, elapsed, retry_after="retry-after" in resp.headers)
            if resp.status == 200:
                outcome.wrong = json.loads(payload)["digits"] != labels
            return outcome
    except (TimeoutError, aiohttp.ClientError):
        return Outcome(0, time.perf_counter() - started)


async def capacity(url: str, requests: DigitRequests, seconds: float, clients: int) -> float:
    """Requests/s that closed-loop clients get answered (200) by the server."""
    done = 0
    stop = time.perf_counter() + seconds
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def client() -> None:
            nonlocal done
            while time.perf_counter() < stop:
                body, labels = requests.next()
                outcome = await send(session, url, body, labels, requests.images)
                done += outcome.status == 200

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return done / (time.perf_counter() - started)


async def idle_latency_ms(url: str, requests: DigitRequests, count: int) -> list[float]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        out = []
        for _ in range(count):
            body, labels = requests.next()
            outcome = await send(session, url, body, labels, requests.images)
            if outcome.status != 200 or outcome.wrong:
                raise RuntimeError(f"an idle request failed: {outcome}")
            out.append(outcome.seconds * 1000)
            await asyncio.sleep(0.05)
        return out


async def flood(url: str, requests: DigitRequests, rate: float, seconds: float) -> list[Outcome]:
    """Open loop: request i leaves at i / rate seconds, answered or not."""
    total = int(rate * seconds)
    bodies = [requests.next() for _ in range(total)]  # prepared: the generator only sends
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.perf_counter()
        tasks = []
        for i, (body, labels) in enumerate(bodies):
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(session, url, body, labels, requests.images)))
        return list(await asyncio.gather(*tasks))


def run_flood(
    url: str,
    factor: float = 4.0,
    seconds: float = 8.0,
    images: int = 256,
    server_pid: int | None = None,
) -> FloodResult:
    if urlparse(url).hostname != "127.0.0.1":
        raise SystemExit("the flood test targets 127.0.0.1 only")
    requests = DigitRequests(images)
    idle = asyncio.run(idle_latency_ms(url, requests, 10))
    rate = asyncio.run(capacity(url, requests, 4.0, clients=4))
    result = FloodResult(rate, rate * factor, seconds, images, statistics.median(idle))
    result.outcomes = asyncio.run(flood(url, requests, rate * factor, seconds))
    result.after_ms = asyncio.run(idle_latency_ms(url, requests, 10))
    result.worker_peak_mb = worker_peak_mb(server_pid)
    return result


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(result: FloodResult) -> dict[str, Any]:
    by_status: dict[str, int] = {}
    for o in result.outcomes:
        by_status[str(o.status)] = by_status.get(str(o.status), 0) + 1
    accepted = [o.seconds * 1000 for o in result.outcomes if o.status == 200]
    refused = [o.seconds * 1000 for o in result.outcomes if o.status == 503]
    return {
        "capacity_rps": round(result.capacity_rps, 1),
        "offered_rps": round(result.offered_rps, 1),
        "seconds": result.seconds,
        "images_per_request": result.images,
        "requests": len(result.outcomes),
        "by_status": by_status,
        "wrong_answers": sum(o.wrong for o in result.outcomes),
        "refused_without_retry_after": sum(
            1 for o in result.outcomes if o.status == 503 and not o.retry_after
        ),
        "accepted_p50_ms": round(percentile(accepted, 0.5), 1),
        "accepted_p99_ms": round(percentile(accepted, 0.99), 1),
        "refused_p50_ms": round(percentile(refused, 0.5), 1),
        "refused_p99_ms": round(percentile(refused, 0.99), 1),
        "idle_p50_ms": round(result.idle_ms, 1),
        "after_first_ms": round(result.after_ms[0], 1),
        "after_p50_ms": round(statistics.median(result.after_ms), 1),
        "worker_peak_mb": round(result.worker_peak_mb, 1),
    }


def render(s: dict[str, Any], command: str, machine: str, date: str) -> str:
    return "\n".join(
        [
            "# Flood test",
            "",
            f"Command: `{command}`  ",
            f"Date: {date}  ",
            f"Machine: {machine}",
            "",
            "| capacity req/s | offered req/s | requests | 200 | 503 | other | wrong | "
            "accepted p50 / p99 ms | 503 p50 / p99 ms | idle -> after p50 ms | worker peak MB |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- | ---: |",
            f"| {s['capacity_rps']} | {s['offered_rps']} | {s['requests']} | "
            f"{s['by_status'].get('200', 0)} | {s['by_status'].get('503', 0)} | "
            f"{s['requests'] - s['by_status'].get('200', 0) - s['by_status'].get('503', 0)} | "
            f"{s['wrong_answers']} | {s['accepted_p50_ms']} / {s['accepted_p99_ms']} | "
            f"{s['refused_p50_ms']} / {s['refused_p99_ms']} | "
            f"{s['idle_p50_ms']} -> {s['after_p50_ms']} | {s['worker_peak_mb']} |",
            "",
            f"Requests of {s['images_per_request']} images to POST /v1/digits (binary), one "
            f"worker, open loop for {s['seconds']} s at "
            f"{s['offered_rps'] / s['capacity_rps']:.1f}x the measured capacity.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--factor", type=float, default=4.0, help="times capacity (default 4)")
    parser.add_argument("--seconds", type=float, default=8.0, help="flood length (default 8)")
    parser.add_argument("--images", type=int, default=256, help="images a request (default 256)")
    parser.add_argument("--url", help="flood a running server on 127.0.0.1 instead")
    parser.add_argument("--server-pid", type=int, help="its arbiter's pid, to read worker memory")
    parser.add_argument("--out", type=Path, default=ROOT / "loadtest" / "results")
    args = parser.parse_args(argv)
    server = None
    if args.url is None:
        server = start_server(Path(tempfile.mkdtemp(prefix="rnnserve-flood-")))
    try:
        url = args.url or server.url  # type: ignore[union-attr]
        pid = server.process.pid if server else args.server_pid
        result = run_flood(url, args.factor, args.seconds, args.images, pid)
    finally:
        if server is not None:
            server.stop()
    s = summary(result)
    command = " ".join(["python -m loadtest.flood", *(argv if argv is not None else sys.argv[1:])])
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    date = time.strftime("%Y-%m-%d")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "flood.json").write_text(
        json.dumps({"command": command, "machine": machine, "date": date, **s}, indent=2) + "\n"
    )
    (args.out / "flood.md").write_text(render(s, command.strip(), machine, date))
    print(render(s, command.strip(), machine, date))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
