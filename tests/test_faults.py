"""Faults under load, bounded and on 127.0.0.1 only: a killed worker, a graceful SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx
import pytest

from loadtest.payloads import digits
from loadtest.servers import start_server, wait_ready, worker_processes
from tests.conftest import ROOT, metric_value

pytestmark = pytest.mark.slow


async def load(url: str, seconds: float, clients: int) -> tuple[int, int]:
    """Closed-loop pixel requests for `seconds`; returns (ok, failed)."""
    payloads = [{"images": [{"pixels": d.pixels}]} for d in digits()]
    ok = failed = 0
    stop = time.perf_counter() + seconds
    async with httpx.AsyncClient(timeout=30) as client:

        async def one_client(offset: int) -> None:
            nonlocal ok, failed
            i = offset
            while time.perf_counter() < stop:
                try:
                    r = await client.post(f"{url}/classify_pixels", json=payloads[i % 64])
                    ok += r.status_code == 200
                    failed += r.status_code != 200
                except httpx.HTTPError:
                    failed += 1
                i += 1

        await asyncio.gather(*(one_client(c) for c in range(clients)))
    return ok, failed


def test_killed_worker_is_replaced_and_few_requests_fail(tmp_path: Path) -> None:
    server = start_server(tmp_path, model_dir=str(ROOT / "models"), workers="2")
    try:
        assert len(worker_processes(server.process.pid)) == 2

        async def scenario() -> tuple[int, int]:
            async def kill_one() -> None:
                await asyncio.sleep(2)
                worker_processes(server.process.pid)[0].kill()

            results = await asyncio.gather(load(server.url, 6, 8), kill_one())  # 6 s, 8 clients
            return results[0]

        ok, failed = asyncio.run(scenario())
        fraction = failed / (ok + failed)
        print(f"killed one of 2 workers under load: {ok} ok, {failed} failed ({fraction:.2%})")
        assert ok > 200 and fraction < 0.01
        wait_ready(server, 30)
        deadline = time.time() + 30
        while len(worker_processes(server.process.pid)) < 2 and time.time() < deadline:
            time.sleep(0.5)
        assert len(worker_processes(server.process.pid)) == 2  # the arbiter started a new worker
        assert asyncio.run(load(server.url, 1, 2))[1] == 0
    finally:
        server.stop()


def test_sigterm_drains_in_flight_requests(tmp_path: Path) -> None:
    server = start_server(tmp_path, model_dir=str(ROOT / "models"))

    async def scenario() -> tuple[list[httpx.Response], float]:
        async with httpx.AsyncClient(timeout=60) as client:
            tasks = [
                asyncio.create_task(
                    client.post(
                        f"{server.url}/generate",
                        json={"prompt": "ROMEO:", "length": 1000, "seed": i},
                    )
                )
                for i in range(8)
            ]
            deadline = time.perf_counter() + 10
            active = 0.0
            while active < 8 and time.perf_counter() < deadline:  # all 8 in flight, provably
                active = await asyncio.to_thread(
                    metric_value, server.url, "rnnserve_generation_active"
                )
            server.process.send_signal(signal.SIGTERM)
            return list(await asyncio.gather(*tasks)), active

    try:
        responses, active = asyncio.run(scenario())
        assert active == 8, f"{active} generations in flight when SIGTERM was sent, not 8"
        assert [r.status_code for r in responses] == [200] * 8
        assert all(len(r.json()["text"]) == 1000 for r in responses)
        assert server.process.wait(timeout=30) == 0
    finally:
        server.stop()
