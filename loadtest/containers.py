"""Build and run the service's OCI image with podman (tests/test_container.py, the report).

    python -m loadtest.containers                 # build the CPU image and a bare BentoML
                                                  # service's, time their start-ups,
                                                  # write loadtest/results/container.md
    python -m loadtest.containers --gpu           # also build the GPU image (not run here)

podman runs as root with the settings in deploy/container/containers.conf (runc; the limits a
sandbox allows). Containers publish their port on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from loadtest.servers import free_ports

ROOT = Path(__file__).resolve().parent.parent
CONTAINER_DIR = ROOT / "deploy" / "container"
ENV = {**os.environ, "CONTAINERS_CONF": str(CONTAINER_DIR / "containers.conf")}


def unavailable() -> str | None:
    """Why containers cannot be built and run here, or None."""
    if shutil.which("podman") is None:
        return "podman is not installed (make container-tools installs it, as root, with apt)"
    if os.geteuid() != 0:
        return "podman runs as root here (rootless podman is not set up by this project)"
    return None


def podman(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["podman", *args], env=ENV, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args[:3])} failed: {proc.stderr[-2000:]}")
    return proc


def build_image(variant: str, bentoml_home: Path, timeout: float = 1800) -> tuple[str, float, str]:
    """(image, size in MB, the build script's output) of deploy/container/build.sh VARIANT
    (cpu, gpu, or bare: a bare BentoML service, the start-up baseline)."""
    image = "localhost/bare-bentoml:cpu" if variant == "bare" else f"localhost/rnnserve:{variant}"
    env = {**ENV, "BENTOML_HOME": str(bentoml_home), "IMAGE": image}
    env.setdefault("BENTOML", str(Path(sys.executable).with_name("bentoml")))
    proc = subprocess.run(
        [str(CONTAINER_DIR / "build.sh"), variant],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"image build failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return image, image_size_mb(image), proc.stdout


def image_size_mb(image: str) -> float:
    return int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout) / 1e6


@dataclass
class Container:
    name: str
    url: str
    started: float
    grpc_target: str = ""  # host:port its gRPC port (8001 inside) is published on

    def logs(self) -> str:
        proc = podman("logs", self.name, check=False)
        return proc.stdout + proc.stderr

    def state(self, field: str) -> str:
        return podman("inspect", "--format", "{{.State." + field + "}}", self.name).stdout.strip()

    def exit_code(self, timeout: float = 60) -> int:
        podman("wait", self.name, timeout=timeout)
        return int(self.state("ExitCode"))

    def remove(self) -> None:
        podman("rm", "-f", "-t", "5", self.name, check=False)


def run(image: str, name: str, env: dict[str, str] | None = None) -> Container:
    """Start `image` detached, as its own (non-root) user, ports 3000 (HTTP) and 8001 (gRPC)
    published on 127.0.0.1 only."""
    podman("rm", "-f", name, check=False)
    port, grpc_port = free_ports(2)
    flags = [f"--env={k}={v}" for k, v in (env or {}).items()]
    started = time.perf_counter()
    podman(
        "run",
        "-d",
        "--name",
        name,
        "-p",
        f"127.0.0.1:{port}:3000",
        "-p",
        f"127.0.0.1:{grpc_port}:8001",
        *flags,
        image,
    )
    return Container(name, f"http://127.0.0.1:{port}", started, f"127.0.0.1:{grpc_port}")


def wait_ready(container: Container, timeout: float = 60) -> float:
    """Seconds from `podman run` to /readyz answering 200."""
    while time.perf_counter() - container.started < timeout:
        if container.state("Status") == "exited":
            raise RuntimeError(f"the container exited:\n{container.logs()[-3000:]}")
        try:
            if httpx.get(f"{container.url}/readyz", timeout=2).status_code == 200:
                return time.perf_counter() - container.started
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"not ready after {timeout} s:\n{container.logs()[-3000:]}")


def earlier_gpu_row(path: Path) -> list[str]:
    """The GPU row of an earlier report at `path`, dated (a CPU-only run refreshes the CPU row
    without losing what the GPU image measured); none when there is none."""
    if not path.exists():
        return []
    text = path.read_text()
    date = next(
        (line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Date:")),
        "",
    )
    for line in text.splitlines():
        if line.startswith("| GPU |"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if "measured" not in cells[-1]:
                cells[-1] += f"; measured {date.rstrip()} (`--gpu`), not rebuilt since"
            return ["| " + " | ".join(cells) + " |"]
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", action="store_true", help="also build the GPU image")
    parser.add_argument("--starts", type=int, default=5, help="timed start-ups (default 5)")
    parser.add_argument("--out", type=Path, default=ROOT / "loadtest" / "results" / "container.md")
    args = parser.parse_args(argv)
    reason = unavailable()
    if reason:
        raise SystemExit(reason)
    home = ROOT / ".bentoml"
    rows = []
    image, size, _ = build_image("cpu", home)
    bare, bare_size, _ = build_image("bare", home)
    # alternately, so that both meet the machine in the same moods
    ready: dict[str, list[float]] = {image: [], bare: []}
    for i in range(args.starts):
        for name in (image, bare):
            container = run(name, f"rnnserve-report-{i}")
            try:
                ready[name].append(wait_ready(container))
            finally:
                container.remove()

    def spread(times: list[float]) -> str:
        return f"{min(times):.1f} / {statistics.median(times):.1f} / {max(times):.1f}"

    rows.append(f"| CPU | `{image}` | {size:.0f} | {spread(ready[image])} |")
    rows.append(f"| bare BentoML | `{bare}` | {bare_size:.0f} | {spread(ready[bare])} |")
    ratio = statistics.median(ready[image]) / statistics.median(ready[bare])
    if args.gpu:
        gpu_image, gpu_size, _ = build_image("gpu", home, timeout=3600)
        rows.append(f"| GPU | `{gpu_image}` | {gpu_size:.0f} | not run here (no GPU) |")
    else:  # the GPU image was not rebuilt: keep its last measured row, saying when that was
        rows += earlier_gpu_row(args.out)
    command = " ".join(
        ["python -m loadtest.containers", *(argv if argv is not None else sys.argv[1:])]
    )
    report = "\n".join(
        [
            "# Container images",
            "",
            f"Command: `{command}`  ",
            f"Date: {time.strftime('%Y-%m-%d')}  ",
            f"Machine: {platform.machine()}, {os.cpu_count()} cores; podman "
            f"{podman('--version').stdout.split()[-1]} with runc, as root",
            "",
            "| image | name | size MB | ready after `podman run`, min / median / max s |",
            "| --- | --- | ---: | --- |",
            *rows,
            "",
            f"Ready: from `podman run` to `/readyz` answering 200, {args.starts} starts of "
            "each, alternating. The bare BentoML service (loadtest/bare_bentoml: one route, no "
            "models) is built from the same base and Dockerfile template; rnnserve's median "
            f"start-up is **{ratio:.2f}x** its median (models verified and warmed up before "
            "`/readyz` answers).",
            "",
        ]
    )
    args.out.write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
