"""Big requests and uploads: end-to-end samples/s against the model alone, and upload cost.

    python -m loadtest.bench_batch                  # about 2 minutes
    python -m loadtest.bench_batch --seconds 5 --model mnist-bigru

1. The model alone: the server's own model object (normalisation, onnxruntime with the same
   settings, softmax) called in this process on 256 real digits at a time -> samples/s.
2. The same 256 digits per request through HTTP, closed loop, 1 and 2 clients, as: a binary
   uint8 body and JSON on the lean route (/v1/digits), the V2 route with a binary tensor, and
   the native /classify_pixels -> samples/s, and the share of (1) it keeps (goal: >= 50%).
3. The image upload endpoint: one PNG per request, 8 clients -> requests/s, latency and the
   server's CPU time per request, next to one-digit requests on the lean route.

One server process (1 worker), everything on 127.0.0.1; client and server share the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from loadtest.compare import tree_cpu_seconds
from loadtest.payloads import digits
from loadtest.servers import start_server
from service.model.inference import ModelRegistry
from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
BATCH = 256


@dataclass
class Call:
    path: str
    body: bytes | None
    headers: dict[str, str]
    samples: int
    form: bytes | None = None  # a PNG upload


def in_process(model_name: str, images: np.ndarray, seconds: float) -> float:
    registry = ModelRegistry.load(Settings.from_env({"RNNSERVE_MODEL_DIR": str(ROOT / "models")}))
    model = registry.digits[model_name]
    model.predict(images)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        model.predict(images)
        done += len(images)
    return done / (time.perf_counter() - started)


async def closed_loop(
    url: str, call: Call, clients: int, seconds: float
) -> tuple[int, int, list[float]]:
    """(requests, failures, latencies ms) of `clients` sending `call` back to back."""
    latencies: list[float] = []
    failures = 0
    stop = time.perf_counter() + seconds
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def client() -> None:
            nonlocal failures
            while time.perf_counter() < stop:
                started = time.perf_counter()
                if call.form is not None:
                    data: Any = aiohttp.FormData()
                    data.add_field("image", call.form, filename="d.png", content_type="image/png")
                else:
                    data = call.body
                async with session.post(url + call.path, data=data, headers=call.headers) as r:
                    await r.read()
                    if r.status != 200:
                        failures += 1
                        continue
                latencies.append((time.perf_counter() - started) * 1000)

        await asyncio.gather(*(client() for _ in range(clients)))
    return len(latencies) + failures, failures, latencies


def big_calls(images: np.ndarray, model: str) -> dict[str, Call]:
    short = model.removeprefix("mnist-")
    u8 = images.astype(np.uint8)
    v2_header = json.dumps(
        {
            "inputs": [
                {
                    "name": "pixels",
                    "shape": list(images.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": images.astype("<f4").nbytes},
                }
            ],
            "outputs": [{"name": "digit", "parameters": {"binary_data": True}}],
        }
    ).encode()
    octet = {"content-type": "application/octet-stream"}
    return {
        "lean, binary uint8": Call(
            f"/v1/digits?model={short}",
            u8.tobytes(),
            {**octet, "x-tensor-shape": f"{len(images)},28,28"},
            len(images),
        ),
        "lean, JSON uint8": Call(
            "/v1/digits",
            json.dumps({"pixels": u8.tolist(), "model": short}).encode(),
            {"content-type": "application/json"},
            len(images),
        ),
        "V2, binary FP32": Call(
            f"/v2/models/{model}/infer",
            v2_header + images.astype("<f4").tobytes(),
            {**octet, "inference-header-content-length": str(len(v2_header))},
            len(images),
        ),
        "native /classify_pixels, JSON": Call(
            "/classify_pixels",
            json.dumps(
                {"images": [{"pixels": img.tolist(), "model": short} for img in images]}
            ).encode(),
            {"content-type": "application/json"},
            len(images),
        ),
    }


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mnist-rnn")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    pool = digits()
    images = np.array([pool[i % len(pool)].pixels for i in range(BATCH)], dtype=np.float32)
    alone = in_process(args.model, images, args.seconds)
    lines = [
        "# Big requests and uploads",
        "",
        f"Command: `python -m loadtest.bench_batch {' '.join(argv or sys.argv[1:])}`",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, no GPU; model {args.model}, "
        "onnxruntime CPU, 1 thread; client and server on the same host.",
        "",
        f"Model alone, in-process, {BATCH} digits per call: **{alone:,.0f} samples/s**.",
        "",
        "| request of 256 digits | clients | requests/s | samples/s | of in-process | p50 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    scratch = Path(tempfile.mkdtemp(prefix="rnnserve-bench-batch-"))
    server = start_server(scratch, model_dir=str(ROOT / "models"), default_digit_model=args.model)
    try:
        for name, call in big_calls(images, args.model).items():
            for clients in (1, 2):
                asyncio.run(closed_loop(server.url, call, clients, 1.0))  # warm-up
                n, failed, lat = asyncio.run(closed_loop(server.url, call, clients, args.seconds))
                rps = (n - failed) / args.seconds
                lines.append(
                    f"| {name} | {clients} | {rps:.1f} | {rps * call.samples:,.0f} "
                    f"| {rps * call.samples / alone:.0%} | {np.percentile(lat, 50):.1f} |"
                )
                print(lines[-1], flush=True)
        lines += [
            "",
            "| one digit per request, 8 clients | requests/s | p50 ms | p99 ms "
            "| server CPU ms/request |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        png = pool[0].png
        small: dict[str, Callable[[], Call]] = {
            "upload a PNG, /classify_image": lambda: Call("/classify_image", None, {}, 1, png),
            "lean route, binary uint8": lambda: Call(
                f"/v1/digits?model={args.model.removeprefix('mnist-')}",
                np.asarray(pool[0].pixels, np.uint8).tobytes(),
                {"content-type": "application/octet-stream", "x-tensor-shape": "1,28,28"},
                1,
            ),
        }
        for name, make in small.items():
            asyncio.run(closed_loop(server.url, make(), 8, 1.0))
            cpu = tree_cpu_seconds(server.process.pid)
            n, failed, lat = asyncio.run(closed_loop(server.url, make(), 8, args.seconds))
            cpu = tree_cpu_seconds(server.process.pid) - cpu
            lines.append(
                f"| {name} | {(n - failed) / args.seconds:.0f} | {np.percentile(lat, 50):.1f} "
                f"| {np.percentile(lat, 99):.1f} | {1000 * cpu / max(n, 1):.2f} |"
            )
            print(lines[-1], flush=True)
    finally:
        server.stop()
    report = "\n".join(lines) + "\n"
    out = ROOT / "loadtest" / "results" / "bench_batch.md"
    out.write_text(report)
    print(report)
    return report


if __name__ == "__main__":
    main()
