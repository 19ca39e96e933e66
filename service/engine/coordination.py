"""How the workers of one server agree on which model versions they serve.

A control call (load, unload) reaches one worker. That worker verifies and swaps in the change
itself first: a refused load is refused before any other worker is disturbed. It then writes
the outcome, the versions of every model, as the next *generation* of `desired.json` in the
control folder (a new file renamed over the old: readers see one whole generation or the
previous one). Every worker watches that file (a stat every `WATCH_S`), applies a newer
generation with the same verification, and writes `worker-<i>.json` with the generation it
serves. The call answers once every worker has reported that generation (or a failure). A
lock file serialises control calls across workers; a worker that starts (or is restarted)
serves the desired generation, not the start-up default, so no worker falls behind.

The control folder is `RNNSERVE_CONTROL_DIR`, by default `<temp dir>/rnnserve-control-<pid of
the server process>`: the workers' parent, so that two servers on one machine never share it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

WATCH_S = 0.1  # how often a worker looks for a new generation
DESIRED = "desired.json"
LOCK = "control.lock"
REFUSED = "refused.json"


def default_directory(server_pid: int) -> Path:
    return Path(tempfile.gettempdir()) / f"rnnserve-control-{server_pid}"


class Coordinator:
    """The control folder as seen by worker `worker` (1-based) of `workers`."""

    def __init__(self, directory: Path, worker: int, workers: int) -> None:
        self.directory = directory
        self.worker = worker
        self.workers = workers
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.seen = 0  # the generation this worker serves

    def _write(self, name: str, data: dict[str, Any]) -> None:
        tmp = self.directory / f".{name}.{os.getpid()}"
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.directory / name)

    def _read(self, name: str) -> dict[str, Any] | None:
        try:
            data = json.loads((self.directory / name).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def read(self) -> tuple[int, dict[str, list[int]]] | None:
        """The newest generation and its versions per model, or None before any change."""
        data = self._read(DESIRED)
        if data is None or not isinstance(data.get("generation"), int):
            return None
        models = {str(k): [int(v) for v in vs] for k, vs in data.get("models", {}).items()}
        return int(data["generation"]), models

    def publish(self, models: dict[str, list[int]]) -> int:
        """The next generation (call with the lock held); this worker serves it already."""
        current = self.read()
        generation = (current[0] if current else 0) + 1
        self._write(DESIRED, {"generation": generation, "models": models, "at": time.time()})
        self.report(generation, "")
        return generation

    def report(self, generation: int, error: str) -> None:
        """This worker serves `generation` (or could not: `error`)."""
        self.seen = generation
        self._write(
            f"worker-{self.worker}.json",
            {"generation": generation, "error": error, "pid": os.getpid(), "at": time.time()},
        )

    def reports(self) -> dict[int, dict[str, Any]]:
        found = {}
        for i in range(1, self.workers + 1):
            data = self._read(f"worker-{i}.json")
            if data is not None:
                found[i] = data
        return found

    async def wait_for_all(self, generation: int, timeout_s: float) -> list[str]:
        """Wait until every worker reports `generation`; the problems (failures, workers that
        did not report in time), empty when all switched."""
        deadline = time.monotonic() + timeout_s
        while True:
            reports = self.reports()
            done = {i: r for i, r in reports.items() if r.get("generation", 0) >= generation}
            if len(done) == self.workers:
                return [f"worker {i}: {r['error']}" for i, r in done.items() if r.get("error")]
            if time.monotonic() >= deadline:
                late = sorted(set(range(1, self.workers + 1)) - set(done))
                return [f"worker {i} did not switch within {timeout_s:.0f} s" for i in late]
            await asyncio.sleep(WATCH_S / 2)

    def record_refusals(self, states: dict[str, str]) -> None:
        """The refused versions' reasons ('name/version' -> reason; call with the lock held),
        so that every worker's index shows why, whichever worker refused."""
        self._write(REFUSED, {"refused": states, "at": time.time()})

    def refusals(self) -> dict[str, str]:
        data = self._read(REFUSED) or {}
        found = data.get("refused", {})
        return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}

    @contextlib.asynccontextmanager
    async def locked(self) -> AsyncIterator[None]:
        """One control call at a time across the workers (an flock, taken off the loop)."""
        fd = os.open(self.directory / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock
