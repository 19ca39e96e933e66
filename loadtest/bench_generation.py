"""Generation benchmark: concurrent streams through the continuous-batching decode loop.

    python -m loadtest.bench_generation                      # starts its own server
    python -m loadtest.bench_generation --streams 1 8 32 64 --chars 500

For each level, `streams` clients (on connections already open, as keep-alive clients have
them) each send three POST /v1/generate/stream requests back to back (500 characters, their own
seeds), their first starts spread over 200 ms: `streams` generations run at once, and each new
one joins a busy decode loop. Measured: aggregate characters/s, time to
first character (client side, p50/p99), next_char latency while the streams run (a probe every
20 ms), and the worker's memory. The same requests sent one at a time give the unbatched
baseline; every streamed text is compared with the reference (the model alone, in-process,
same seed). Writes bench_generation.md/.json into --out; only 127.0.0.1 is targeted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from loadtest.servers import start_server, worker_rss_mb
from service.model.inference import ModelRegistry
from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "ROMEO:\nWhat light through yonder window breaks?\n"
TEMPERATURE = 0.8


async def stream(
    session: aiohttp.ClientSession, url: str, seed: int, chars: int
) -> tuple[str, float, float]:
    """(text, seconds to the first character, seconds to the end) of one streamed generation."""
    body = {"prompt": PROMPT, "length": chars, "temperature": TEMPERATURE, "seed": seed}
    started = time.perf_counter()
    first = None
    parts: list[str] = []
    buffer = b""
    async with session.post(f"{url}/v1/generate/stream", json=body) as resp:
        if resp.status != 200:
            raise RuntimeError(f"stream answered {resp.status}: {await resp.text()}")
        async for data in resp.content.iter_any():
            buffer += data
            while b"\n\n" in buffer:
                block, buffer = buffer.split(b"\n\n", 1)
                if block.startswith(b"data: "):
                    if first is None:
                        first = time.perf_counter() - started
                    parts.append(json.loads(block[6:])["text"])
    return "".join(parts), first or 0.0, time.perf_counter() - started


async def next_char_probe(
    session: aiohttp.ClientSession, url: str, stop: asyncio.Event
) -> list[float]:
    latencies = []
    while not stop.is_set():
        started = time.perf_counter()
        async with session.post(f"{url}/next_char", json={"text": PROMPT, "k": 5}) as resp:
            await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"next_char answered {resp.status}")
        latencies.append(time.perf_counter() - started)
        await asyncio.sleep(0.02)
    return latencies


async def level(
    url: str, streams: int, chars: int, seed0: int, per_client: int = 3
) -> dict[str, Any]:
    """`streams` clients, each sending `per_client` streams back to back (closed loop), their
    starts spread over the first 200 ms: a steady state of `streams` concurrent generations in
    which every new stream joins a loop that is already busy."""
    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        # open the connections first, as a client with keep-alive has them: time to first
        # character measures the server's scheduling, not TCP handshakes
        async def ping() -> None:
            async with session.get(f"{url}/livez") as resp:
                await resp.read()

        await asyncio.gather(*(ping() for _ in range(streams + 1)))
        stop = asyncio.Event()
        probe = asyncio.create_task(next_char_probe(session, url, stop))
        offsets = random.Random(seed0).sample(range(200), streams) if streams > 1 else [0]

        async def client(index: int) -> list[tuple[str, float, float]]:
            await asyncio.sleep(offsets[index] / 1000)
            return [
                await stream(session, url, seed0 + index * per_client + j, chars)
                for j in range(per_client)
            ]

        started = time.perf_counter()
        per = await asyncio.gather(*(client(i) for i in range(streams)))
        elapsed = time.perf_counter() - started
        stop.set()
        probe_latencies = await probe
        one_at_a_time_started = time.perf_counter()
        for i in range(8):  # the baseline: the same kind of request, one after another
            await stream(session, url, seed0 + i, chars)
        sequential = (time.perf_counter() - one_at_a_time_started) / 8
    results = [r for client_results in per for r in client_results]
    first = sorted(r[1] for r in results)
    return {
        "streams": streams,
        "texts": {
            seed0 + i * per_client + j: per[i][j][0]
            for i in range(streams)
            for j in range(per_client)
        },
        "chars_per_s": len(results) * chars / elapsed,
        "one_at_a_time_chars_per_s": chars / sequential,
        "first_char_p50_ms": statistics.median(first) * 1000,
        "first_char_p99_ms": first[min(len(first) - 1, int(0.99 * len(first)))] * 1000,
        "next_char_p99_ms": sorted(probe_latencies)[int(0.99 * (len(probe_latencies) - 1))] * 1000
        if probe_latencies
        else float("nan"),
        "next_char_probes": len(probe_latencies),
    }


async def idle_next_char(url: str, count: int = 60) -> list[float]:
    async with aiohttp.ClientSession() as session:
        stop = asyncio.Event()
        task = asyncio.create_task(next_char_probe(session, url, stop))
        await asyncio.sleep(count * 0.022)
        stop.set()
        return await task


def run(url: str, server_pid: int | None, levels: list[int], chars: int) -> dict[str, Any]:
    reference = ModelRegistry.load(Settings.from_env({"RNNSERVE_DEVICE": "cpu"})).char
    assert reference is not None
    idle = sorted(asyncio.run(idle_next_char(url)))
    rows = []
    for streams in levels:
        row = asyncio.run(level(url, streams, chars, seed0=10_000 * streams))
        seeds = sorted(row["texts"])
        checked = seeds[:: max(1, len(seeds) // 8)]  # about 8 texts per level
        row["identical_to_reference"] = all(
            row["texts"][seed] == reference.generate(PROMPT, chars, TEMPERATURE, None, seed)
            for seed in checked
        )
        row["checked"] = len(checked)
        row["worker_rss_mb"] = (
            max(worker_rss_mb(server_pid), default=float("nan")) if server_pid else float("nan")
        )
        del row["texts"]
        rows.append(row)
        print(
            f"{streams:3d} streams: {row['chars_per_s']:8.0f} chars/s "
            f"(one at a time {row['one_at_a_time_chars_per_s']:.0f}), first char p50 "
            f"{row['first_char_p50_ms']:.1f} p99 {row['first_char_p99_ms']:.1f} ms, next_char "
            f"p99 {row['next_char_p99_ms']:.1f} ms, identical {row['identical_to_reference']}",
            flush=True,
        )
    return {
        "idle_next_char_p50_ms": statistics.median(idle) * 1000,
        "idle_next_char_p99_ms": idle[int(0.99 * (len(idle) - 1))] * 1000,
        "chars": chars,
        "levels": rows,
    }


def render(result: dict[str, Any], command: str, machine: str, date: str) -> str:
    one = next((r for r in result["levels"] if r["streams"] == 1), result["levels"][0])
    lines = [
        "# Generation benchmark",
        "",
        f"Command: `{command}`  ",
        f"Date: {date}  ",
        f"Machine: {machine}",
        "",
        f"Each of N clients sends 3 streams of {result['chars']} characters (POST "
        "/v1/generate/stream) back to back, the first ones starting within 200 ms: N generations "
        "run at once; 'one at a time' sends the same requests alone, one after another; "
        f"idle next_char: p50 {result['idle_next_char_p50_ms']:.1f} ms, p99 "
        f"{result['idle_next_char_p99_ms']:.1f} ms.",
        "",
        "| streams | chars/s | vs one stream | one at a time chars/s | first char p50 / p99 ms "
        "| first char p50 / idle next_char p50 | next_char p99 ms while streaming | identical "
        "to the lone sequence | worker RSS MB |",
        "| ---: | ---: | ---: | ---: | --- | ---: | ---: | --- | ---: |",
    ]
    for r in result["levels"]:
        lines.append(
            f"| {r['streams']} | {r['chars_per_s']:.0f} | "
            f"{r['chars_per_s'] / one['chars_per_s']:.1f}x | "
            f"{r['one_at_a_time_chars_per_s']:.0f} | "
            f"{r['first_char_p50_ms']:.1f} / {r['first_char_p99_ms']:.1f} | "
            f"{r['first_char_p50_ms'] / result['idle_next_char_p50_ms']:.1f}x | "
            f"{r['next_char_p99_ms']:.1f} | "
            f"{'yes' if r['identical_to_reference'] else 'NO'} ({r['checked']} checked) | "
            f"{r['worker_rss_mb']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--chars", type=int, default=500)
    parser.add_argument("--url", help="a running server on 127.0.0.1 (default: start one)")
    parser.add_argument("--server-pid", type=int, help="its arbiter's pid, to read memory")
    parser.add_argument("--out", type=Path, default=ROOT / "loadtest" / "results")
    args = parser.parse_args(argv)
    server = None if args.url else start_server(Path(tempfile.mkdtemp(prefix="rnnserve-gen-")))
    try:
        url = args.url or server.url  # type: ignore[union-attr]
        pid = args.server_pid or (server.process.pid if server else None)
        result = run(url, pid, args.streams, args.chars)
    finally:
        if server is not None:
            server.stop()
    command = " ".join(
        ["python -m loadtest.bench_generation", *(argv if argv is not None else sys.argv[1:])]
    )
    machine = (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        "client and server on the same machine"
    )
    date = time.strftime("%Y-%m-%d")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_generation.json").write_text(
        json.dumps({"command": command, "date": date, "machine": machine, **result}, indent=2)
        + "\n"
    )
    report = render(result, command, machine, date)
    (args.out / "bench_generation.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
