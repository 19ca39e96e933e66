"""Capacity of one replica, and the autoscaling target derived from it.

    python -m loadtest.capacity                   # starts its own server, as one pod runs it
    python -m loadtest.capacity --seconds 6 --slo-ms 100

One server with the pod's settings (deploy/k8s/base/deployment.yaml: one worker, one
onnxruntime thread) takes closed-loop clients at rising concurrency, each step for `--seconds`,
with a traffic mix of single-digit `/v1/digits` requests and 40-character `/next_char`
requests (every answer checked). During each step /metrics is scraped every 0.25 s for
`rnnserve_requests_in_flight`, the series KEDA scales on.

The capacity of a replica is the highest throughput among the steps whose p99 stays within
`--slo-ms`; the in-flight target per replica is `--headroom` (0.7) of the mean in-flight the
server reported at that step (Little's law: in flight = throughput x latency), rounded down, at
least 1: replicas are added while the others still have room, since a new pod needs its
start-up time to help. KEDA then runs ceil(sum of in-flight over the pods / target) replicas
(docs/deployment.md has the arithmetic).
Writes capacity.json and capacity.md into --out (default loadtest/results). Only 127.0.0.1 is
targeted; the run is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp

from loadtest.payloads import digits
from loadtest.servers import Server, start_server

METRIC = "rnnserve_requests_in_flight"
STEPS = (1, 2, 4, 8, 16, 32, 48, 64)
# Scale out before a replica saturates: a new pod takes its start-up time to help
HEADROOM = 0.7


@dataclass
class Step:
    clients: int
    requests: int
    wrong: int
    errors: int
    req_per_s: float
    p50_ms: float
    p99_ms: float
    in_flight_mean: float
    in_flight_max: float


def in_flight(text: str) -> float:
    """The metric summed over workers and protocols, from a /metrics page."""
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(METRIC + "{")
    )


async def run_step(url: str, clients: int, seconds: float) -> Step:
    samples = digits(32)
    latencies: list[float] = []
    wrong = errors = 0
    stop = time.perf_counter() + seconds

    async def client(index: int, http: aiohttp.ClientSession) -> None:
        nonlocal wrong, errors
        n = index
        while time.perf_counter() < stop:
            n += 1
            started = time.perf_counter()
            if n % 2:
                digit = samples[n % len(samples)]
                async with http.post(url + "/v1/digits", json={"pixels": digit.pixels}) as r:
                    status, body = r.status, await r.json(content_type=None)
                ok = status == 200 and body["digits"] == [digit.label]
            else:
                text = {"text": "ROMEO: What light through y"}
                async with http.post(url + "/next_char", json=text) as r:
                    status, body = r.status, await r.json(content_type=None)
                ok = status == 200 and bool(body["candidates"])
            latencies.append(time.perf_counter() - started)
            if status != 200:
                errors += 1
            elif not ok:
                wrong += 1

    async def scrape(http: aiohttp.ClientSession, seen: list[float]) -> None:
        while time.perf_counter() < stop:
            async with http.get(url + "/metrics") as r:
                seen.append(in_flight(await r.text()))
            await asyncio.sleep(0.25)

    connector = aiohttp.TCPConnector(limit=clients + 2)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        seen: list[float] = []
        began = time.perf_counter()
        await asyncio.gather(*(client(i, http) for i in range(clients)), scrape(http, seen))
        elapsed = time.perf_counter() - began
    ordered = sorted(latencies)
    return Step(
        clients=clients,
        requests=len(latencies),
        wrong=wrong,
        errors=errors,
        req_per_s=round(len(latencies) / elapsed, 1),
        p50_ms=round(1000 * statistics.median(ordered), 1),
        p99_ms=round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1),
        in_flight_mean=round(statistics.fmean(seen), 2) if seen else 0.0,
        in_flight_max=max(seen) if seen else 0.0,
    )


def derive(steps: list[Step], slo_ms: float, headroom: float) -> dict[str, float]:
    """The capacity (req/s) and the in-flight target per replica, from the steps within SLO."""
    within = [s for s in steps if s.p99_ms <= slo_ms and s.errors == 0 and s.wrong == 0]
    if not within:
        raise SystemExit(f"no step kept p99 within {slo_ms} ms: lower the load or raise --slo-ms")
    best = max(within, key=lambda s: s.req_per_s)
    return {
        "capacity_req_per_s": best.req_per_s,
        "at_clients": best.clients,
        "in_flight_at_capacity": best.in_flight_mean,
        "headroom": headroom,
        "target_in_flight": max(1, math.floor(headroom * best.in_flight_mean)),
    }


def markdown(result: dict) -> str:
    d = result["derived"]
    lines = [
        "# Capacity of one replica",
        "",
        f"Command: `{result['command']}`  ",
        f"Date: {result['date']}  ",
        f"Machine: {result['machine']}",
        "",
        "One server as one pod runs it (1 worker, 1 onnxruntime thread), closed-loop clients "
        f"for {result['seconds']} s per step; half single-digit `/v1/digits`, half 40-character "
        f"`/next_char`; in flight: `{METRIC}` scraped every 0.25 s.",
        "",
        "| clients | requests | errors | wrong | req/s | p50 ms | p99 ms | in flight mean | max |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in result["steps"]:
        lines.append(
            f"| {s['clients']} | {s['requests']} | {s['errors']} | {s['wrong']} | "
            f"{s['req_per_s']} | {s['p50_ms']} | {s['p99_ms']} | {s['in_flight_mean']} | "
            f"{s['in_flight_max']:g} |"
        )
    lines += [
        "",
        f"Capacity within p99 <= {result['slo_ms']:g} ms: **{d['capacity_req_per_s']} req/s** "
        f"at {d['at_clients']} clients, {d['in_flight_at_capacity']} requests in flight on "
        f"average; with {d['headroom']:g} of it as headroom, the target per replica is "
        f"**{d['target_in_flight']} in flight** "
        "(deploy/k8s/overlays/keda/scaledobject.yaml's threshold).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--slo-ms", type=float, default=100.0)
    parser.add_argument("--steps", type=int, nargs="+", default=list(STEPS))
    parser.add_argument("--headroom", type=float, default=HEADROOM)
    parser.add_argument("--out", type=Path, default=Path("loadtest/results"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rnnserve-capacity-") as scratch:
        server: Server = start_server(Path(scratch), workers="1", threads="1")
        try:
            asyncio.run(run_step(server.url, 4, 2.0))  # warm-up, not recorded
            steps = [asyncio.run(run_step(server.url, c, args.seconds)) for c in args.steps]
        finally:
            server.stop()
    result = {
        "command": " ".join(
            ["python -m loadtest.capacity", *(sys.argv[1:] if argv is None else argv)]
        ),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "seconds": args.seconds,
        "slo_ms": args.slo_ms,
        "steps": [asdict(s) for s in steps],
        "derived": derive(steps, args.slo_ms, args.headroom),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "capacity.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "capacity.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
