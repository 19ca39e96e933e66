"""Soak test: a steady mixed load for a long time; failures and worker memory growth.

    python -m loadtest.soak                       # 10 minutes, starts its own server
    python -m loadtest.soak --minutes 60 --clients 8 --workers 2
    python -m loadtest.soak --url http://127.0.0.1:3000 --minutes 30   # a running server

Closed-loop clients send the request mix of a real deployment (one-digit pixel requests, small
pixel batches, image uploads, next-character and short generation calls) for the whole time.
Every answer is checked: a digit must be the label of the real MNIST test digit that was sent,
text answers must carry candidates or text. Anything else, or no answer, is a failure.

Every `--sample-s` seconds the resident memory (RSS) of each worker process is sampled. Memory
growth is measured from the end of the warm-up (by default the first 10% of the run, when
caches, allocator arenas and batching buffers fill) to the end: median of the last three
samples against the median of the first three after warm-up. A leak of a few bytes per request
shows here; the one-off start-up growth does not.

Targets (exit status 1 when missed): 0 failures, memory growth under 10%. Writes soak.json,
soak.md and soak.png into --out (default loadtest/results). Only 127.0.0.1 is targeted.
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import aiohttp
import numpy as np

from loadtest.payloads import PROMPTS, Digit, digits
from loadtest.servers import Server, start_server, worker_rss_mb

ROOT = Path(__file__).resolve().parent.parent
MAX_GROWTH = 0.10
PROGRESS_EVERY_S = 60.0


@dataclass
class Sample:
    t_s: float
    requests: int
    failures: int
    worker_rss_mb: list[float]


@dataclass
class Tally:
    requests: int = 0
    failures: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    failure_examples: list[str] = field(default_factory=list)

    def fail(self, what: str) -> None:
        self.failures += 1
        if len(self.failure_examples) < 10:
            self.failure_examples.append(what)


async def check_digit(resp: aiohttp.ClientResponse, labels: list[int]) -> str | None:
    if resp.status != 200:
        return f"{resp.url.path}: HTTP {resp.status} {(await resp.text())[:200]}"
    body = await resp.json()
    answers = body if isinstance(body, list) else [body]
    got = [a.get("digit") for a in answers]
    return None if got == labels else f"{resp.url.path}: digits {got}, expected {labels}"


async def check_text(resp: aiohttp.ClientResponse, key: str) -> str | None:
    if resp.status != 200:
        return f"{resp.url.path}: HTTP {resp.status} {(await resp.text())[:200]}"
    body = await resp.json()
    return None if body.get(key) else f"{resp.url.path}: no {key} in {str(body)[:200]}"


async def one_request(
    session: aiohttp.ClientSession, url: str, i: int, pool: tuple[Digit, ...]
) -> str | None:
    """The i-th request of the mix (10 steps: 5 single pixels, 1 batch of 8, 1 upload,
    2 next_char, 1 generate). Returns a failure description or None."""
    step = i % 10
    digit = pool[i % len(pool)]
    if step < 5:
        body: dict[str, Any] = {"images": [{"pixels": digit.pixels}]}
        async with session.post(f"{url}/classify_pixels", json=body) as resp:
            return await check_digit(resp, [digit.label])
    if step == 5:
        batch = [pool[(i + k) % len(pool)] for k in range(8)]
        body = {"images": [{"pixels": d.pixels} for d in batch]}
        async with session.post(f"{url}/classify_pixels", json=body) as resp:
            return await check_digit(resp, [d.label for d in batch])
    if step == 6:
        form = aiohttp.FormData()
        form.add_field("image", digit.png, filename="digit.png", content_type="image/png")
        async with session.post(f"{url}/classify_image", data=form) as resp:
            return await check_digit(resp, [digit.label])
    prompt = PROMPTS[i % len(PROMPTS)]
    if step in (7, 8):
        async with session.post(f"{url}/next_char", json={"text": prompt, "k": 5}) as resp:
            return await check_text(resp, "candidates")
    body = {"prompt": prompt, "length": 40, "seed": i}
    async with session.post(f"{url}/generate", json=body) as resp:
        return await check_text(resp, "text")


async def client_loop(
    session: aiohttp.ClientSession,
    url: str,
    offset: int,
    stop_at: float,
    tally: Tally,
    pool: tuple[Digit, ...],
) -> None:
    i = offset
    while time.perf_counter() < stop_at:
        started = time.perf_counter()
        try:
            problem = await one_request(session, url, i, pool)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            problem = f"request {i}: {type(exc).__name__}: {exc}"
        tally.requests += 1
        if problem:
            tally.fail(problem)
        else:
            tally.latencies_ms.append((time.perf_counter() - started) * 1000)
        i += 7  # clients walk the mix out of step with each other


async def soak(
    url: str, server_pid: int | None, seconds: float, clients: int, sample_s: float
) -> tuple[Tally, list[Sample]]:
    pool = digits()
    tally = Tally()
    samples: list[Sample] = []
    started = time.perf_counter()
    stop_at = started + seconds
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=clients)

    async def sampler() -> None:
        last_report = started
        while True:
            sample = Sample(
                round(time.perf_counter() - started, 1),
                tally.requests,
                tally.failures,
                [round(x, 1) for x in worker_rss_mb(server_pid)] if server_pid else [],
            )
            samples.append(sample)
            if time.perf_counter() - last_report >= PROGRESS_EVERY_S:  # a long run says so
                last_report = time.perf_counter()
                print(
                    f"soak {sample.t_s:.0f}/{seconds:.0f} s: {sample.requests} requests, "
                    f"{sample.failures} failures, worker RSS {sample.worker_rss_mb} MB",
                    file=sys.stderr,
                    flush=True,
                )
            if time.perf_counter() >= stop_at:
                return
            await asyncio.sleep(min(sample_s, max(0.0, stop_at - time.perf_counter())))

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(
            sampler(),
            *(client_loop(session, url, c, stop_at, tally, pool) for c in range(clients)),
        )
    return tally, samples


def memory_growth(samples: list[Sample], warmup_s: float) -> dict[str, float]:
    """Growth of the total worker RSS from just after warm-up to the end (medians of three)."""
    totals = [(s.t_s, sum(s.worker_rss_mb)) for s in samples if s.worker_rss_mb]
    after = [mb for t, mb in totals if t >= warmup_s]
    if len(after) < 2:
        return {"baseline_mb": float("nan"), "final_mb": float("nan"), "growth": float("nan")}
    baseline = statistics.median(after[:3])
    final = statistics.median(after[-3:])
    return {
        "baseline_mb": round(baseline, 1),
        "final_mb": round(final, 1),
        "growth": round((final - baseline) / baseline, 4),
    }


def render(result: dict[str, Any]) -> str:
    growth = result["memory"]["growth"]
    lines = [
        "# Soak test",
        "",
        f"Command: `{result['command']}`",
        f"Machine: {result['machine']}",
        "",
        "| duration | clients | workers | requests | req/s | failures | p50 ms | p99 ms |"
        " worker RSS after warm-up -> end (MB) | growth |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
        f"| {result['seconds']:.0f} s | {result['clients']} | {result['workers']} "
        f"| {result['requests']} | {result['rps']:.1f} | {result['failures']} "
        f"| {result['p50_ms']:.1f} | {result['p99_ms']:.1f} "
        f"| {result['memory']['baseline_mb']} -> {result['memory']['final_mb']} "
        f"| {growth * 100:+.1f}% |",
        "",
        f"Targets: 0 failures ({'met' if result['failures'] == 0 else 'MISSED'}), "
        f"memory growth under {MAX_GROWTH:.0%} "
        f"({'met' if growth < MAX_GROWTH else 'not measured' if growth != growth else 'MISSED'}).",
    ]
    if result["failure_examples"]:
        lines += ["", "First failures:", *(f"- {x}" for x in result["failure_examples"])]
    return "\n".join(lines) + "\n"


def plot(samples: list[Sample], warmup_s: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.array([s.t_s for s in samples])
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True)
    rss = [sum(s.worker_rss_mb) for s in samples]
    ax1.plot(t, rss, marker=".")
    ax1.axvline(warmup_s, color="grey", linestyle="--", label="end of warm-up")
    ax1.set_ylabel("worker RSS, total (MB)")
    ax1.legend(loc="lower right")
    counts = np.array([s.requests for s in samples])
    rates = np.diff(counts) / np.maximum(np.diff(t), 1e-9)
    ax2.plot(t[1:], rates, marker=".")
    ax2.set_ylabel("requests/s")
    ax2.set_xlabel("seconds")
    fig.suptitle("rnnserve soak: memory and throughput")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> dict[str, Any]:
    seconds = args.minutes * 60 if args.seconds is None else args.seconds
    warmup_s = seconds * args.warmup_fraction
    server: Server | None = None
    if args.url:
        host = urlparse(args.url).hostname
        if host not in ("127.0.0.1", "localhost"):
            raise SystemExit("soak: only a server on 127.0.0.1 may be targeted")
        url, pid = args.url.rstrip("/"), args.server_pid
    else:
        scratch = Path(tempfile.mkdtemp(prefix="rnnserve-soak-"))
        server = start_server(scratch, model_dir=str(ROOT / "models"), workers=str(args.workers))
        url, pid = server.url, server.process.pid
    try:
        tally, samples = asyncio.run(soak(url, pid, seconds, args.clients, args.sample_s))
    finally:
        if server is not None:
            server.stop()
    lat = tally.latencies_ms
    return {
        "command": "python -m loadtest.soak " + " ".join(args.argv),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "seconds": seconds,
        "warmup_s": warmup_s,
        "clients": args.clients,
        "workers": args.workers if not args.url else "external",
        "requests": tally.requests,
        "rps": tally.requests / seconds,
        "failures": tally.failures,
        "failure_examples": tally.failure_examples,
        "p50_ms": float(np.percentile(lat, 50)) if lat else float("nan"),
        "p99_ms": float(np.percentile(lat, 99)) if lat else float("nan"),
        "memory": memory_growth(samples, warmup_s),
        "samples": [asdict(s) for s in samples],
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long (default 10)")
    parser.add_argument("--seconds", type=float, help="how long, in seconds (overrides minutes)")
    parser.add_argument("--clients", type=int, default=8, help="closed-loop clients (default 8)")
    parser.add_argument("--workers", type=int, default=1, help="server workers (own server)")
    parser.add_argument("--sample-s", type=float, default=10.0, help="memory sampling interval")
    parser.add_argument(
        "--warmup-fraction", type=float, default=0.1, help="share of the run before the baseline"
    )
    parser.add_argument("--url", help="soak a running server on 127.0.0.1 instead")
    parser.add_argument("--server-pid", type=int, help="its arbiter's pid, to sample memory")
    parser.add_argument("--out", type=Path, default=ROOT / "loadtest" / "results")
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else []
    return args


def main(argv: list[str] | None = None) -> int:
    import sys

    args = parse_args(sys.argv[1:] if argv is None else argv)
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(result, indent=1))
    (args.out / "soak.md").write_text(render(result))
    plot([Sample(**s) for s in result["samples"]], result["warmup_s"], args.out / "soak.png")
    print(render(result))
    growth = result["memory"]["growth"]
    memory_ok = growth < MAX_GROWTH or (args.url is not None and args.server_pid is None)
    return 0 if result["failures"] == 0 and memory_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
