"""Side-by-side serving comparison: rnnserve, a hand-written FastAPI server and Triton.

    make compare                                   # all targets, 3 rounds (~20 minutes)
    python -m loadtest.compare --rounds 1 --seconds 10 --targets rnnserve-lean fastapi

All servers serve the same committed ONNX model (mnist-rnn by default) with the same
onnxruntime settings (CPU, 1 intra-op thread), one at a time, on 127.0.0.1. For each target a
fresh server is started, warmed up by a short Locust run, then measured by a headless Locust run
(FastHttpUser, no think time, one real MNIST digit per request, the answer checked), then
stopped; targets alternate within each round. Reported per target: requests/s, p50/p95/p99,
failures, and the server's CPU time per request (all its processes, user + system). Written
to --out: compare.md (table, ratios, command, machine), compare.json, compare.png.

Targets (see TARGETS): our native endpoint, our lean route with JSON floats, uint8 JSON and a
binary body, our V2 route; the FastAPI baseline (loadtest/baseline_fastapi.py, uvicorn); Triton
through PyTriton (loadtest/peers/pytriton_server.py, dynamic batching, max 256, 2 ms delay),
which runs from its own virtual environment `.venv-peers` (`make peers`). Each at one server
process, and as "best" configurations for a 2-core machine (2 workers, 2 instances).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from loadtest.run_load import run_locust
from loadtest.servers import Server, free_ports, server_env, start_server, wait_ready

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = ROOT / "loadtest" / "compare_locust.py"
PEERS_PYTHON = ROOT / ".venv-peers" / "bin" / "python"


@dataclass
class Target:
    name: str
    payload: str  # a COMPARE_PAYLOAD kind of compare_locust.py
    start: Callable[[Path, str], Server]  # (scratch, model) -> a ready server
    peer: bool = False  # needs .venv-peers


@dataclass
class Result:
    target: str
    round: int
    requests: int
    failures: int
    rps: float
    p50: float
    p95: float
    p99: float
    cpu_ms_per_request: float


def spawn(cmd: list[str], scratch: Path, env: dict[str, str], name: str) -> Server:
    """Start `cmd` with `{port}` (and `{grpc_port}`, `{metrics_port}`, when it names them)
    replaced by free ports, different from each other."""
    port, grpc_port, metrics_port = free_ports(3)
    scratch.mkdir(parents=True, exist_ok=True)
    log_path = scratch / f"{name}-{port}.log"
    template = " ".join(cmd)
    cmd = [
        part.replace("{port}", str(port))
        .replace("{grpc_port}", str(grpc_port))
        .replace("{metrics_port}", str(metrics_port))
        for part in cmd
    ]
    process = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=log_path.open("wb"), stderr=subprocess.STDOUT
    )
    return Server(
        process,
        f"http://127.0.0.1:{port}",
        log_path,
        grpc_port if "{grpc_port}" in template else 0,
        metrics_port if "{metrics_port}" in template else 0,
    )


def rnnserve(workers: int) -> Callable[[Path, str], Server]:
    def start(scratch: Path, model: str) -> Server:
        return start_server(
            scratch,
            model_dir=str(ROOT / "models"),
            workers=str(workers),
            default_digit_model=model,
        )

    return start


def fastapi(workers: int) -> Callable[[Path, str], Server]:
    def start(scratch: Path, model: str) -> Server:
        env = {**server_env(scratch), "BASELINE_MODEL": model}
        cmd = [sys.executable, "-m", "uvicorn", "loadtest.baseline_fastapi:app"]
        cmd += ["--host", "127.0.0.1", "--port", "{port}", "--workers", str(workers)]
        cmd += ["--log-level", "warning"]
        server = spawn(cmd, scratch, env, "fastapi")
        wait_ready(server, 120)
        return server

    return start


def triton(
    instances: int, grpc: bool = False, metrics: bool = False
) -> Callable[[Path, str], Server]:
    """Triton through PyTriton (`.venv-peers`); with `grpc`, its gRPC port too
    (Server.grpc_port), with `metrics` its Prometheus port (Server.metrics_port)."""

    def start(scratch: Path, model: str) -> Server:
        peer_libdir = subprocess.run(
            [
                str(PEERS_PYTHON),
                "-c",
                "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        env = {
            **server_env(scratch),
            # Triton's Python backend must load this interpreter's libpython (see the script)
            "LD_LIBRARY_PATH": f"{peer_libdir}:{os.environ.get('LD_LIBRARY_PATH', '')}",
            "PYTRITON_HOME": str(scratch / "pytriton"),  # its workspace, not ~/.cache
        }
        cmd = [str(PEERS_PYTHON), str(ROOT / "loadtest" / "peers" / "pytriton_server.py")]
        cmd += ["--model", model, "--port", "{port}", "--instances", str(instances)]
        cmd += ["--grpc-port", "{grpc_port}"] * grpc + [
            "--metrics-port",
            "{metrics_port}",
        ] * metrics
        server = spawn(cmd, scratch, env, "triton")
        wait_ready(server, 120, f"/v2/models/{model}/ready")
        return server

    return start


TARGETS = {
    t.name: t
    for t in [
        Target("rnnserve-native", "native", rnnserve(1)),
        Target("rnnserve-lean", "lean-json", rnnserve(1)),
        Target("rnnserve-lean-uint8", "lean-uint8", rnnserve(1)),
        Target("rnnserve-lean-binary", "lean-binary", rnnserve(1)),
        Target("rnnserve-v2", "v2-json", rnnserve(1)),
        Target("rnnserve-v2-binary", "v2-binary", rnnserve(1)),
        Target("rnnserve-lean-2w", "lean-json", rnnserve(2)),
        Target("fastapi", "fastapi", fastapi(1)),
        Target("fastapi-2w", "fastapi", fastapi(2)),
        Target("triton", "v2-json", triton(1), peer=True),
        Target("triton-binary", "v2-binary", triton(1), peer=True),
        Target("triton-2i", "v2-json", triton(2), peer=True),
    ]
}
DEFAULT_TARGETS = ["rnnserve-lean", "rnnserve-native", "fastapi", "triton"]


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants (alive now)."""
    total = 0.0
    try:
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            try:
                times = proc.cpu_times()
                total += times.user + times.system + times.children_user + times.children_system
            except psutil.Error:
                continue
    except psutil.Error:
        pass
    return total


def measure(
    target: Target, model: str, users: int, seconds: float, warmup: float, scratch: Path, out: Path
) -> Result:
    server = target.start(scratch, model)
    env = {"COMPARE_PAYLOAD": target.payload, "COMPARE_MODEL": model}
    try:
        if warmup > 0:
            run_locust(
                server.url, users, warmup, scratch / "warmup", locustfile=LOCUSTFILE, env=env
            )
        cpu_before = tree_cpu_seconds(server.process.pid)
        rows = run_locust(
            server.url,
            users,
            seconds,
            out / f"compare-{target.name}",
            locustfile=LOCUSTFILE,
            env=env,
        )
        cpu = tree_cpu_seconds(server.process.pid) - cpu_before
    finally:
        server.stop()
    agg = next(r for r in rows if r.name == "Aggregated")
    return Result(
        target.name,
        0,
        agg.requests,
        agg.failures,
        agg.rps,
        agg.p50,
        agg.p95,
        agg.p99,
        1000 * cpu / max(agg.requests, 1),
    )


def summarize(results: list[Result]) -> dict[str, dict[str, float]]:
    summary: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(r.target for r in results):
        rs = [r for r in results if r.target == name]
        summary[name] = {
            "rps": sum(r.rps for r in rs) / len(rs),
            "p50": sum(r.p50 for r in rs) / len(rs),
            "p95": sum(r.p95 for r in rs) / len(rs),
            "p99": max(r.p99 for r in rs),
            "failures": sum(r.failures for r in rs),
            "cpu_ms": sum(r.cpu_ms_per_request for r in rs) / len(rs),
        }
    return summary


def render(results: list[Result], args: argparse.Namespace, skipped: list[str]) -> str:
    summary = summarize(results)
    lines = [
        "# Serving comparison",
        "",
        f"Command: `python -m loadtest.compare {' '.join(args.argv)}`",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, no GPU; client (Locust) and "
        "server on the same host.",
        f"Load: {args.users} Locust users (FastHttpUser, no think time), one 1x28x28 digit per "
        f"request, {args.seconds:g} s measured after {args.warmup:g} s of warm-up, "
        f"{args.rounds} alternating round(s); model {args.model}, onnxruntime CPU, 1 thread.",
        "",
        "| target | req/s | p50 ms | p95 ms | p99 ms (worst round) | failures "
        "| server CPU ms/request |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, s in summary.items():
        lines.append(
            f"| {name} | {s['rps']:.0f} | {s['p50']:.0f} | {s['p95']:.0f} | {s['p99']:.0f} "
            f"| {s['failures']:.0f} | {s['cpu_ms']:.2f} |"
        )
    lines += ["", "Per round:", "", "| target | round | req/s | p50 | p99 | failures |"]
    lines += ["| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        lines.append(
            f"| {r.target} | {r.round} | {r.rps:.0f} | {r.p50:.0f} | {r.p99:.0f} | {r.failures} |"
        )
    ours = summary.get("rnnserve-lean")
    if ours:
        lines.append("")
        for peer in ("triton", "fastapi", "triton-2i", "fastapi-2w", "triton-binary"):
            if peer in summary:
                lines.append(
                    f"- rnnserve-lean / {peer}: {ours['rps'] / summary[peer]['rps']:.2f}x "
                    "requests/s"
                )
    if skipped:
        lines += ["", f"Skipped (no `.venv-peers`; run `make peers`): {', '.join(skipped)}"]
    return "\n".join(lines) + "\n"


def plot(results: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarize(results)
    names = list(summary)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.5 * len(names) + 2))
    left.barh(names, [summary[n]["rps"] for n in names], color="#3563e9")
    left.set_xlabel("requests/s (higher is better)")
    left.invert_yaxis()
    for i, q in enumerate(("p50", "p99")):
        right.barh(
            [y + 0.4 * i for y in range(len(names))],
            [summary[n][q] for n in names],
            height=0.4,
            label=q,
        )
    right.set_yticks([y + 0.2 for y in range(len(names))], names)
    right.invert_yaxis()
    right.set_xlabel("latency ms (lower is better)")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", nargs="+", default=DEFAULT_TARGETS, choices=list(TARGETS))
    parser.add_argument("--model", default="mnist-rnn")
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "loadtest" / "results")
    args = parser.parse_args(argv)
    args.argv = argv
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    args.out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="rnnserve-compare-"))
    targets = [TARGETS[name] for name in args.targets]
    skipped = [t.name for t in targets if t.peer and not PEERS_PYTHON.exists()]
    targets = [t for t in targets if t.name not in skipped]
    results = []
    for round_ in range(1, args.rounds + 1):
        for target in targets:
            result = measure(
                target,
                args.model,
                args.users,
                args.seconds,
                args.warmup,
                scratch / f"{target.name}-{round_}",
                args.out,
            )
            result.round = round_
            print(f"round {round_} {target.name}: {result.rps:.0f} req/s, p99 {result.p99:.0f} ms")
            results.append(result)
    report = render(results, args, skipped)
    (args.out / "compare.md").write_text(report)
    (args.out / "compare.json").write_text(json.dumps([asdict(r) for r in results], indent=1))
    plot(results, args.out / "compare.png")
    print(report)
    return {"results": results, "summary": summarize(results), "skipped": skipped}


if __name__ == "__main__":
    main()
