"""What a phone photo costs the server: 12-megapixel JPEGs of digits on paper (rendered by
training/photos.py) sent one at a time to POST /classify_image of a real `bentoml serve`;
the worker's CPU time (user + system, from /proc via psutil) per request, the time in
the service's own steps (decode + reading the digit + one model call, in-process), and
the client's latency.

The same photos also go to a server of an earlier revision (`--against`, by default the one
whose 27.0 ms the photo issue took as its baseline), extracted with `git archive` and run
from the same virtual environment, in alternating rounds: this machine's speed drifts by a
tenth from one hour to the next, so only a ratio measured in one run says what the
current code costs against it. The two servers take turns going first (ABBA), so that
neither always runs on a machine the other has just warmed or loaded.

    python -m loadtest.bench_photo            # writes loadtest/results/bench_photo.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from loadtest.servers import start_server, worker_processes
from service.imaging.uploads import ImageLimits, read_upload
from training import data as D
from training import photos as P

ROOT = Path(__file__).resolve().parent.parent
LIMITS = ImageLimits(max_pixels=50_000_000, max_side=20_000, max_aspect=20.0)


def phone_photos(count: int, seed: int) -> list[tuple[bytes, int]]:
    """12 MP (4032x3024) JPEGs at quality 92 with sensor noise, as phones save them."""
    root = D.resolve_data_dir(None)
    _, val = D.train_val_split(D.load_mnist_split(root, train=True), 5000)
    out = []
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        style = P.random_style(rng, "photo", 4032, 3024)
        style = P.Style(**{**style.__dict__, "jpeg_quality": 92, "noise": max(style.noise, 3.0)})
        out.append((P.render(val.images[i], style, rng)[0], int(val.labels[i])))
    return out


def in_process_ms(photos: list[tuple[bytes, int]]) -> list[float]:
    costs = []
    for data, _ in photos:
        started = time.process_time()
        read_upload(data, LIMITS)
        costs.append((time.process_time() - started) * 1000)
    return costs


def worker_cpu_seconds(server_pid: int) -> float:
    return sum(sum(p.cpu_times()[:2]) for p in worker_processes(server_pid))


BASELINE = "7d72d47"  # the revision of the 27.0 ms the photo issue's 1.2x bound refers to


def checkout(revision: str, into: Path) -> Path | None:
    """The tree of `revision` (models included: they are committed) extracted into `into`,
    or None where git cannot produce it (a shallow clone, an unknown revision)."""
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", revision],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        print(f"no baseline: git archive {revision}: {archive.stderr.decode().strip()}")
        return None
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def serve_photos(tree: Path, scratch: Path, photos: list[tuple[bytes, int]]) -> dict[str, float]:
    """One round: a server of `tree` started, warmed up, sent every photo once, stopped."""
    server = start_server(scratch, cwd=tree, model_dir=str(tree / "models"), grpc_port="0")
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for data, _ in photos[:3]:  # warm-up: first-call costs are not per request
                client.post("/classify_image", files={"image": ("p.jpg", data)})
            assert server.process.pid is not None
            cpu_before = worker_cpu_seconds(server.process.pid)
            latencies, right = [], 0
            for data, label in photos:
                started = time.perf_counter()
                r = client.post("/classify_image", files={"image": ("p.jpg", data)})
                latencies.append((time.perf_counter() - started) * 1000)
                r.raise_for_status()
                right += r.json()["digit"] == label
            cpu_ms = (worker_cpu_seconds(server.process.pid) - cpu_before) * 1000 / len(photos)
    finally:
        server.stop()
    return {
        "cpu_ms": cpu_ms,
        "latency_p50": float(np.median(latencies)),
        "latency_max": float(max(latencies)),
        "right": right,
    }


def run(count: int, seed: int, against: str | None, rounds: int) -> dict[str, object]:
    photos = phone_photos(count, seed)
    reading = in_process_ms(photos)
    current: list[dict[str, float]] = []
    baseline: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="rnnserve-bench-photo-") as scratch:
        base_tree = checkout(against, Path(scratch) / "baseline") if against else None
        for n in range(rounds):
            turns = [("c", ROOT, current)]
            if base_tree is not None:
                turns.insert(n % 2, ("b", base_tree, baseline))  # ABBA: each goes first in turn
            for name, tree, results in turns:
                results.append(serve_photos(tree, Path(scratch) / f"{name}{n}", photos))
    ours = float(np.median([r["cpu_ms"] for r in current]))
    theirs = float(np.median([r["cpu_ms"] for r in baseline])) if baseline else None
    return {
        "count": count,
        "rounds": rounds,
        "megabytes": [round(len(d) / 1e6, 2) for d, _ in photos],
        "worker_cpu_ms_per_request": ours,
        "worker_cpu_ms_rounds": [r["cpu_ms"] for r in current],
        "against": against if baseline else None,
        "baseline_cpu_ms_per_request": theirs,
        "baseline_cpu_ms_rounds": [r["cpu_ms"] for r in baseline],
        "ratio": ours / theirs if theirs else None,
        "reading_ms_p50": float(np.median(reading)),
        "reading_ms_max": float(max(reading)),
        "latency_ms_p50": float(np.median([r["latency_p50"] for r in current])),
        "latency_ms_max": float(max(r["latency_max"] for r in current)),
        "right": int(current[-1]["right"]),
        "baseline_right": int(baseline[-1]["right"]) if baseline else None,
    }


def baseline_rows(result: dict[str, object]) -> list[str]:
    if result["against"] is None:
        return ["", "No baseline revision was measured (`--against`)."]
    rounds = ", ".join(f"{v:.1f}" for v in result["baseline_cpu_ms_rounds"])  # type: ignore[attr-defined]
    ours = ", ".join(f"{v:.1f}" for v in result["worker_cpu_ms_rounds"])  # type: ignore[attr-defined]
    return [
        f"| worker CPU per request, revision {result['against']} (same photos, alternating "
        f"rounds) | {result['baseline_cpu_ms_per_request']:.1f} ms |",
        f"| this revision / {result['against']} | {result['ratio']:.2f}x |",
        f"| digits read right by {result['against']} | {result['baseline_right']}/"
        f"{result['count']} |",
        "",
        f"Worker CPU per round (ms): this revision {ours}; {result['against']} {rounds}.",
    ]


def render(result: dict[str, object], command: str) -> str:
    sizes = result["megabytes"]
    assert isinstance(sizes, list)
    return "\n".join(
        [
            "# What a 12-megapixel phone photo costs the server",
            "",
            f"Command: `{command}`  ",
            f"Date: {dt.date.today().isoformat()}  ",
            f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}, no GPU; client and server on the same machine",
            "",
            f"{result['count']} JPEGs of 4032x3024 pixels (quality 92, "
            f"{min(sizes):.1f}-{max(sizes):.1f} MB) rendered by training/photos.py, sent one "
            "at a time to POST /classify_image (multipart) of a real `bentoml serve` with the "
            "committed models, after 3 warm-up requests; a fresh server each round, the two "
            "revisions taking turns to go first.",
            "",
            "| measure | value |",
            "| --- | ---: |",
            f"| worker CPU per request (user + system; HTTP, multipart, decode, reading, "
            f"model), median of {result['rounds']} rounds | "
            f"{result['worker_cpu_ms_per_request']:.1f} ms |",
            f"| decode + reading the digit, in-process CPU, p50 / max | "
            f"{result['reading_ms_p50']:.1f} / {result['reading_ms_max']:.1f} ms |",
            f"| client latency p50 / max | {result['latency_ms_p50']:.1f} / "
            f"{result['latency_ms_max']:.1f} ms |",
            f"| digits read right | {result['right']}/{result['count']} |",
            *baseline_rows(result),
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_photo", description=__doc__)
    parser.add_argument("--count", type=int, default=30)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--rounds", type=int, default=6, help="an even number: ABBA")
    parser.add_argument(
        "--against",
        default=BASELINE,
        help="the earlier revision measured in the same run ('' for none)",
    )
    parser.add_argument("--out", default="loadtest/results/bench_photo.md")
    args = parser.parse_args(argv)
    result = run(args.count, args.seed, args.against or None, args.rounds)
    command = "python -m loadtest.bench_photo " + " ".join(sys.argv[1:] if argv is None else argv)
    text = render(result, command.strip())
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
