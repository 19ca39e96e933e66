"""Start and stop a real `bentoml serve` process on a free 127.0.0.1 port (tests, benchmarks)."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    return free_ports(1)[0]


def ephemeral_range() -> tuple[int, int]:
    """The ports the kernel gives client sockets (Linux: ip_local_port_range)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_ports(count: int) -> list[int]:
    """`count` different free 127.0.0.1 ports, outside the kernel's ephemeral range: a port
    from that range can be taken by any client connection (the load generators open
    thousands) between the choice and the server's bind. Held together while chosen."""
    low, high = ephemeral_range()
    candidates = [p for p in range(20000, 65000) if not low <= p <= high]
    sockets: list[socket.socket] = []
    try:
        for port in random.sample(candidates, min(len(candidates), 400)):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                sock.close()
                continue
            sockets.append(sock)
            if len(sockets) == count:
                return [int(s.getsockname()[1]) for s in sockets]
        raise RuntimeError(f"no {count} free ports outside the ephemeral range {low}-{high}")
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path
    grpc_port: int = 0  # 0: this server serves no gRPC
    metrics_port: int = 0  # a peer's Prometheus port of its own (0: none, or on `url`)

    @property
    def grpc_target(self) -> str:
        """host:port of its gRPC front-end (what tritonclient.grpc takes as `url`)."""
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return int(self.process.returncode)


def server_env(scratch: Path, home: str | None = None, **settings: str) -> dict[str, str]:
    """Environment for a server whose side effects stay in `scratch` (BentoML's store too,
    unless `home` names another one)."""
    home_dir = Path(home) if home else scratch / "bentoml-home"
    tmp_dir = scratch / "tmp"
    home_dir.mkdir(parents=True, exist_ok=True)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "BENTOML_HOME": str(home_dir),
        "TMPDIR": str(tmp_dir),
        "BENTOML_DO_NOT_TRACK": "true",
        "OMP_NUM_THREADS": "1",
    }
    # BentoML makes and cleans its own Prometheus folder per server; an inherited one (the test
    # suite's in-process service has one) would be shared, and wiped under its owner
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update({f"RNNSERVE_{k.upper()}": v for k, v in settings.items()})
    return env


def start_server(
    scratch: Path,
    target: str = "service.service:RnnServe",
    cwd: Path = ROOT,
    wait: bool = True,
    timeout: float = 90.0,
    home: str | None = None,
    **settings: str,
) -> Server:
    """Start `bentoml serve target`; `settings` become RNNSERVE_* variables. gRPC listens on
    another free 127.0.0.1 port unless `grpc_port` is given (servers started side by side
    must not meet on the default 8001)."""
    scratch.mkdir(parents=True, exist_ok=True)
    port, grpc_port = free_ports(2)
    settings = {"grpc_host": "127.0.0.1", "grpc_port": str(grpc_port), **settings}
    log_path = scratch / f"server-{port}.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bentoml",
            "serve",
            target,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=cwd,
        env=server_env(scratch, home, **settings),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = Server(process, f"http://127.0.0.1:{port}", log_path, int(settings["grpc_port"]))
    if wait:
        wait_ready(server, timeout)
        wait_workers(server, int(settings.get("workers", "1")), timeout)
    return server


# The last start-up hook of a worker (service/http/service.py): logged once it serves.
WORKER_UP = "Completed async startup hook: _start_grpc"


def wait_workers(server: Server, workers: int, timeout: float) -> None:
    """Until every worker has started (/readyz answers once the first one has: a test that
    measures the workers' memory or file descriptors, or counts on all of them, waits here)."""
    deadline = time.monotonic() + timeout
    while workers > 1 and server.log().count(WORKER_UP) < workers:
        if server.process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"not every one of {workers} workers started:\n{server.log()}")
        time.sleep(0.2)


def wait_ready(server: Server, timeout: float, path: str = "/readyz") -> float:
    """Seconds until `path` answers 200; fails with the server log if it exits or times out."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{server.url}{path}", timeout=2).status_code == 200:
                return time.perf_counter() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"server not ready after {timeout}s:\n{server.log()}")


def wait_exit(server: Server, timeout: float = 90.0) -> int:
    try:
        return int(server.process.wait(timeout=timeout))
    finally:
        server.stop()


def worker_processes(server_pid: int) -> list[psutil.Process]:
    """Live BentoML worker processes under a server's arbiter (a killed one may linger as a
    zombie until reaped: left out)."""
    try:
        children = psutil.Process(server_pid).children(recursive=True)
    except psutil.Error:
        return []
    workers = []
    for child in children:
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "_bentoml_impl.worker" in " ".join(
                child.cmdline()
            ):
                workers.append(child)
        except psutil.Error:
            continue
    return workers


def worker_rss_mb(server_pid: int) -> list[float]:
    """Resident memory of each live worker under a server's arbiter, in MiB, smallest first."""
    sizes = []
    for worker in worker_processes(server_pid):
        try:
            sizes.append(worker.memory_info().rss / 2**20)
        except psutil.Error:
            continue
    return sorted(sizes)


def worker_peak_mb(server_pid: int | None) -> float:
    """Peak resident memory (VmHWM) of the largest live worker under a server's arbiter, MiB."""
    if server_pid is None:
        return 0.0
    peaks = []
    for worker in worker_processes(server_pid):
        status = Path(f"/proc/{worker.pid}/status").read_text()
        line = next(x for x in status.splitlines() if x.startswith("VmHWM:"))
        peaks.append(int(line.split()[1]) / 1024)
    return max(peaks, default=0.0)
