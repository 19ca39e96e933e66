"""Triton's perf_analyzer against the service's V2 routes, HTTP and gRPC
(loadtest/results/perf_analyzer.md).

    python -m loadtest.perf_analyzer                # starts its own server (committed models)
    python -m loadtest.perf_analyzer --url http://127.0.0.1:3000 --grpc 127.0.0.1:8001

perf_analyzer comes from its own venv, `.venv-perf` (`make perf-analyzer`): the binary bundled in
the `tritonclient==2.51.0` wheel (the last one built for glibc 2.36, Debian 12), which links
`libcudart.so.12` (PyPI's nvidia-cuda-runtime-cu12, no GPU needed: `binary()` puts its folder on
LD_LIBRARY_PATH) and `libb64.so.0d` (Debian's libb64-0d). Inputs are `--input-data zero` or a
JSON data file: its default, `random`, sends NaN/Inf floats, which the service refuses (400).
Client and server share the machine; only 127.0.0.1 is measured.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from loadtest.compare import PEERS_PYTHON, tree_cpu_seconds, triton
from loadtest.servers import ROOT, Server, start_server

PERF_VENV = ROOT / ".venv-perf"
RESULTS = ROOT / "loadtest" / "results" / "perf_analyzer.md"
MODEL = "mnist-rnn"


class UnavailableError(RuntimeError):
    """perf_analyzer is not installed here, or its binary cannot run on this machine."""


def binary(venv: Path = PERF_VENV) -> tuple[Path, dict[str, str]]:
    """The perf_analyzer binary and the environment it runs in (libcudart's folder on
    LD_LIBRARY_PATH); raises UnavailableError, saying why, when it is missing or cannot start."""
    exe = venv / "bin" / "perf_analyzer"
    if not exe.is_file():
        raise UnavailableError(f"{exe} is missing: `make perf-analyzer` installs it")
    libs = sorted(venv.glob("lib/python3*/site-packages/nvidia/cuda_runtime/lib"))
    if not libs:
        raise UnavailableError(
            f"nvidia-cuda-runtime-cu12 is missing from {venv}: `make perf-analyzer`"
        )
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        [str(libs[0]), *filter(None, [os.environ.get("LD_LIBRARY_PATH")])]
    )
    try:
        probe = subprocess.run(
            [str(exe), "--version"], env=env, capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise UnavailableError(f"{exe} cannot run here: {error}") from error
    if probe.returncode != 0 or "Perf Analyzer Version" not in probe.stdout + probe.stderr:
        detail = (probe.stderr or probe.stdout).strip().splitlines()
        reason = detail[0] if detail else f"exit status {probe.returncode}"
        raise UnavailableError(
            f"{exe} cannot run here ({reason}); it needs glibc >= 2.34, libcudart.so.12 "
            "(nvidia-cuda-runtime-cu12) and libb64.so.0d (Debian's libb64-0d): "
            "`make perf-analyzer` installs them"
        )
    return exe, env


@dataclass
class Run:
    """One perf_analyzer invocation: its command, exit status, output and CSV rows."""

    command: list[str]
    returncode: int
    output: str
    rows: list[dict[str, float]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and bool(self.rows) and "error" not in self.output.lower()


def run(
    url: str,
    model: str = MODEL,
    *,
    protocol: str = "http",
    concurrency: int | None = None,
    request_rate: float | None = None,
    batch: int = 1,
    tensor_format: str = "binary",
    input_data: str = "zero",
    shapes: tuple[str, ...] = (),
    interval_ms: int = 3000,
    request_count: int = 0,
    extra: tuple[str, ...] = (),
    timeout: float = 120.0,
) -> Run:
    """perf_analyzer on `model` at `url` (127.0.0.1 only; the gRPC port's for `protocol`
    "grpc"), one concurrency level (closed loop) or one request rate (open loop);
    `request_count` > 0 measures that many requests instead of time windows until stable.
    (Over gRPC tensors are always raw bytes: `tensor_format` is for HTTP only.)"""
    host = urlsplit(url if "//" in url else f"http://{url}")
    if host.hostname != "127.0.0.1":
        raise ValueError(f"only 127.0.0.1 is measured, not {url}")
    exe, env = binary()
    with tempfile.TemporaryDirectory(prefix="perf-analyzer-") as scratch:
        report = Path(scratch) / "report.csv"
        command = [
            str(exe),
            "-m",
            model,
            "-u",
            f"127.0.0.1:{host.port or 80}",
            "-i",
            protocol,
            "--shared-memory",
            "none",
            "--input-data",
            input_data,
            *(("--input-tensor-format", tensor_format) if protocol == "http" else ()),
            "-b",
            str(batch),
            *[arg for shape in shapes for arg in ("--shape", shape)],
        ]
        if request_rate is not None:
            command += ["--request-rate-range", f"{request_rate:g}"]
        else:
            command += ["--concurrency-range", str(concurrency or 1)]
        if request_count:
            command += ["--request-count", str(request_count)]
        else:
            command += ["--measurement-interval", str(interval_ms)]
        command += [*extra, "-f", str(report)]
        try:
            done = subprocess.run(
                command, env=env, capture_output=True, text=True, timeout=timeout, cwd=scratch
            )
            returncode, output = done.returncode, done.stdout + done.stderr
        except subprocess.TimeoutExpired as error:
            out = error.stdout or b""
            returncode = -1
            output = (out.decode() if isinstance(out, bytes) else out) + f"\ntimed out ({timeout}s)"
        rows = []
        if report.exists():
            with report.open() as f:
                rows = [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(f)]
    return Run(command, returncode, output, rows)


def json_data(path: Path, inputs: dict[str, tuple[list[int], list[int]]]) -> Path:
    """A perf_analyzer `--input-data` file with one request: {name: (shape, flat values)}.
    Inputs it leaves out (optional ones, char-rnn's state) are not sent."""
    data = {name: {"content": values, "shape": shape} for name, (shape, values) in inputs.items()}
    path.write_text(json.dumps({"data": [data]}))
    return path


def infer_answers(url: str) -> tuple[float, float]:
    """(answered 200 / OK, answered anything) on the V2 infer route and the gRPC ModelInfer
    call together, from the server's /metrics."""
    ok = total = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("bentoml_service_request_duration_seconds_count{") and (
            'endpoint="/v2/models/{name}/infer"' in line
        ):
            count = float(line.rsplit(" ", 1)[1])
            total += count
            ok += count if 'http_response_code="200"' in line else 0.0
        elif line.startswith("rnnserve_grpc_calls_total{") and 'method="ModelInfer"' in line:
            count = float(line.rsplit(" ", 1)[1])
            total += count
            ok += count if 'code="OK"' in line else 0.0
    return ok, total


# (label, protocol, tensor format, batch, concurrency); the open-loop rows follow these.
CASES: list[tuple[str, str, str, int, int]] = [
    ("HTTP JSON", "http", "json", 1, 1),
    ("HTTP JSON", "http", "json", 1, 16),
    ("HTTP JSON", "http", "json", 1, 32),
    ("HTTP binary", "http", "binary", 1, 1),
    ("gRPC", "grpc", "binary", 1, 1),
    ("HTTP binary", "http", "binary", 1, 16),
    ("gRPC", "grpc", "binary", 1, 16),
    ("HTTP binary", "http", "binary", 1, 32),
    ("gRPC", "grpc", "binary", 1, 32),
    ("HTTP binary", "http", "binary", 8, 16),
    ("gRPC", "grpc", "binary", 8, 16),
]


@dataclass
class Target:
    """A server perf_analyzer measures: its name, HTTP address, gRPC address, the base URL
    whose /metrics counts its answers (rnnserve's; None for a peer without our metrics), the
    process whose tree's CPU time it uses, and where to read how many images its model has
    inferred (`inferred`)."""

    name: str
    http: str
    grpc: str
    metrics: str | None
    pid: int | None = None
    inferred_from: str | None = None  # a Prometheus URL
    inferred_metric: str = ""

    def inferred(self) -> float | None:
        """Images the model has run on so far (every protocol, batch-weighted)."""
        if not self.inferred_from:
            return None
        text = httpx.get(self.inferred_from, timeout=10).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(self.inferred_metric) and f'model="{MODEL}"' in line
        )

    def cpu_seconds(self) -> float | None:
        return None if self.pid is None else tree_cpu_seconds(self.pid)


def rnnserve_target(server: Server) -> Target:
    return Target(
        "rnnserve",
        server.url.removeprefix("http://"),
        server.grpc_target,
        server.url,
        server.process.pid,
        f"{server.url}/metrics",
        "rnnserve_inference_batch_size_sum{",
    )


def triton_target(peer: Server) -> Target:
    return Target(
        "Triton",
        peer.url.removeprefix("http://"),
        peer.grpc_target,
        None,
        peer.process.pid,
        f"http://127.0.0.1:{peer.metrics_port}/metrics",
        "nv_inference_count{",
    )


def _row(
    server: str,
    label: str,
    load: str,
    batch: int,
    result: Run,
    errors: float | None,
    cpu_us: float | None,
) -> str:
    shown = "-" if errors is None else f"{errors:.0f}"
    cpu = "-" if cpu_us is None else f"{cpu_us:.0f}"
    if not result.ok:
        last = result.output.strip().splitlines()[-1:] or [f"exit status {result.returncode}"]
        return (
            f"| {server} | {label} | {load} | {batch} | failed: {last[0]} | | | {cpu} | {shown} |"
        )
    row = result.rows[0]
    return (
        f"| {server} | {label} | {load} | {batch} | {row['Inferences/Second']:.0f} | "
        f"{row['p50 latency'] / 1000:.1f} | {row['p99 latency'] / 1000:.1f} | {cpu} | {shown} |"
    )


UNSTABLE = "Failed to obtain stable measurement"


def _measure(
    target: Target,
    label: str,
    load: str,
    interval_ms: int,
    extra: tuple[str, ...],
    **kwargs: Any,
) -> tuple[str, Run, bool]:
    """One table row: perf_analyzer on `target` until stable; where the machine's drift keeps
    it from stabilising, once more over a fixed number of requests (about three windows'
    worth at the `expect` rate), which the row says. Errors are read from the target's
    /metrics where it has ours (perf_analyzer also stops on the first refused request).
    Returns the row, the run and whether it is clean."""
    expect = kwargs.pop("expect")
    batch = kwargs.get("batch", 1)
    address = target.grpc if kwargs.get("protocol") == "grpc" else target.http
    before = infer_answers(target.metrics) if target.metrics else (0.0, 0.0)
    cpu_before, inferred_before = target.cpu_seconds(), target.inferred()
    result = run(address, interval_ms=interval_ms, extra=extra, **kwargs)
    if result.returncode != 0 and UNSTABLE in result.output:
        count = max(
            int(expect * 3 * interval_ms / 1000 / batch), int(kwargs.get("request_rate") or 0)
        )
        load += f" (fixed {count} requests: not stable within {extra[-1]} windows)"
        result = run(address, request_count=count, **kwargs)
    cpu_after, inferred_after = target.cpu_seconds(), target.inferred()
    cpu_us = None  # the server's CPU time (its whole process tree) per image inferred
    if (
        cpu_before is not None
        and cpu_after is not None
        and inferred_before is not None
        and inferred_after is not None
        and inferred_after > inferred_before
    ):
        cpu_us = (cpu_after - cpu_before) / (inferred_after - inferred_before) * 1e6
    errors = None
    if target.metrics:
        ok, total = infer_answers(target.metrics)
        errors = (total - before[1]) - (ok - before[0])
    print(
        f"{target.name} {label} {load} b{batch}: rc {result.returncode} {result.rows}", flush=True
    )
    clean = result.ok and not errors
    return _row(target.name, label, load, batch, result, errors, cpu_us), result, clean


def report(targets: list[Target], interval_ms: int, stability: int, trials: int, out: Path) -> int:
    """Every row of CASES on every target in turn (so that each row meets the same machine on
    each), then the open loop over HTTP and gRPC, into `out`."""
    extra = ("--stability-percentage", str(stability), "--max-trials", str(trials))
    lines = []
    failed = 0
    best = 0.0
    # warm-up, not recorded: a fresh worker's first requests are slower (the first row was
    # half as fast as the same row against a warm server)
    for target in targets:
        for protocol, tensor_format in (("http", "json"), ("http", "binary"), ("grpc", "binary")):
            run(
                target.grpc if protocol == "grpc" else target.http,
                protocol=protocol,
                concurrency=4,
                tensor_format=tensor_format,
                request_count=1000,
            )
    started = time.perf_counter()
    for label, protocol, tensor_format, batch, concurrency in CASES:
        for target in targets:
            line, result, ok = _measure(
                target,
                label,
                f"concurrency {concurrency}",
                interval_ms,
                extra,
                expect=max(best, 500.0),
                protocol=protocol,
                concurrency=concurrency,
                batch=batch,
                tensor_format=tensor_format,
            )
            lines.append(line)
            failed += not ok
            if ok and batch == 1 and label == "HTTP binary" and target is targets[0]:
                best = max(best, result.rows[0]["Inferences/Second"])
    # open loop at half the best closed-loop HTTP binary throughput (perf_analyzer schedules
    # the sends by the clock, so a slow answer does not hold back the next request)
    rate = max(100, round(best / 2, -2))
    for label, protocol in (("HTTP binary", "http"), ("gRPC", "grpc")):
        for target in targets:
            line, result, ok = _measure(
                target,
                label,
                f"request rate {rate:g}/s (open loop)",
                interval_ms,
                extra,
                expect=rate,
                protocol=protocol,
                request_rate=rate,
            )
            lines.append(line)
            failed += not ok
    elapsed = time.perf_counter() - started
    exe, env = binary()
    probe = subprocess.run([str(exe), "--version"], env=env, capture_output=True, text=True)
    version = (probe.stdout + probe.stderr).strip()
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or platform.machine(),
    )
    peers = [t.name for t in targets[1:]]
    text = "\n".join(
        [
            "# perf_analyzer against the V2 routes, HTTP and gRPC",
            "",
            "Command: `python -m loadtest.perf_analyzer"
            + (f" --interval-ms {interval_ms}" if interval_ms != 3000 else "")
            + "` (its own `bentoml serve` of the committed models, default settings"
            + (
                "; and Triton through PyTriton, `loadtest/peers/pytriton_server.py --grpc`, the "
                "same ONNX file on onnxruntime CPU, 1 thread, dynamic batching up to 256 with a "
                "2 ms queue delay, from `.venv-peers`)  "
                if peers
                else "; no `.venv-peers`, so no Triton rows: `make peers`)  "
            ),
            f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  ",
            f"Machine: {platform.machine()} ({cpu}), {os.cpu_count()} cores, no GPU; "
            "perf_analyzer and the servers on the same host  ",
            f"Tool: {version} (the binary of tritonclient 2.51.0, `.venv-perf`)  ",
            f"Each row: `perf_analyzer -m {MODEL} -u 127.0.0.1:PORT -i http|grpc --shared-memory "
            "none --input-data zero [--input-tensor-format FORMAT] -b BATCH --concurrency-range N "
            f"(or --request-rate-range R) --measurement-interval {interval_ms} "
            f"--stability-percentage {stability} --max-trials {trials} -f report.csv`; "
            "one 1x28x28 digit of zeros per inference (8 per request with `-b 8`); "
            f"all rows in {elapsed:.0f} s.",
            "",
            "Inferences/s counts images (requests x batch); latency is per request, client side, "
            "in ms (perf_analyzer's p50 and p99). gRPC rows reach the same server's gRPC port "
            "(tensors as raw contents). Each case runs on every server in turn, so that the rows "
            "of a case meet the same machine. Errors: rnnserve's V2 infer answers other than 200 "
            "(gRPC: other than OK) during the row, from its /metrics (`-` for Triton, whose "
            "metrics are off; perf_analyzer itself stops with a non-zero status on the first "
            "refused request, which the row would show as failed). The open-loop rows send at "
            "half rnnserve's best closed-loop HTTP binary rate, on perf_analyzer's schedule "
            "whatever the answers' latency. Before the rows, 1000 requests of each protocol and "
            "tensor format warm every server up (not recorded). A row perf_analyzer could not "
            "stabilise (the shared machine drifts) was measured again over a fixed number of "
            "requests (`--request-count`, no stability check), and says so. Server CPU: the "
            "user + system time of the server's whole process tree (rnnserve's arbiter and "
            "worker; Triton's PyTriton process, tritonserver and its Python backend) during "
            "the row, over the images its model ran on meanwhile (rnnserve_inference_batch_size "
            "sum, Triton's nv_inference_count): what one inference costs the server, whatever "
            "the client costs on the same cores.",
            "",
            "| server | tensors | load | batch | inferences/s | p50 ms | p99 ms "
            "| server CPU µs per inference | errors |",
            "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
            *lines,
            "",
        ]
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server (127.0.0.1 only); default: start one")
    parser.add_argument(
        "--grpc", default="127.0.0.1:8001", help="with --url: its gRPC host:port (127.0.0.1)"
    )
    parser.add_argument(
        "--no-triton", action="store_true", help="leave out Triton (PyTriton, `.venv-peers`)"
    )
    parser.add_argument("--interval-ms", type=int, default=3000, help="measurement window")
    parser.add_argument("--stability", type=int, default=20, help="perf_analyzer's -s, percent")
    parser.add_argument("--max-trials", type=int, default=6, help="perf_analyzer's -r")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    binary()  # fail early, saying why, when perf_analyzer cannot run
    scratch = Path(tempfile.mkdtemp(prefix="perf-analyzer-server-"))
    servers: list[Server] = []
    try:
        if args.url:  # its process is not ours to time: no CPU column
            targets = [Target("rnnserve", args.url.removeprefix("http://"), args.grpc, args.url)]
        else:
            server = start_server(scratch / "rnnserve", model_dir=str(ROOT / "models"))
            servers.append(server)
            targets = [rnnserve_target(server)]
        if not args.no_triton and PEERS_PYTHON.exists():
            peer = triton(1, grpc=True, metrics=True)(scratch / "triton", MODEL)
            servers.append(peer)
            targets.append(triton_target(peer))
        return report(targets, args.interval_ms, args.stability, args.max_trials, args.out)
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
