"""In-process latency of each committed model: ONNX Runtime vs TorchScript vs eager PyTorch.

    python -m loadtest.bench_inference [--models models] [--threads 1] [--rounds 3]

No HTTP here: this isolates the model runtime. Each backend is timed in alternating rounds
(so background load hits all of them alike) and the median per call is reported, for batch 1
and batch 256 (the char model: one generation step for 1 and 256 sequences). Eager PyTorch
rebuilds the network from the card's architecture and the TorchScript file's weights, so the
benchmark needs nothing but models/.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from service.model.cards import ModelCard
from service.model.repository import discover_cards
from training.nets import build_model

BATCHES = (1, 256)


def feeds_for(card: ModelCard, batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(batch)
    if card.task == "digit-classification":
        return {"pixels": rng.standard_normal((batch, 28, 28), dtype=np.float32)}
    state = card.input_spec("state")["shape"]
    vocab = len(card.data["vocabulary"])
    return {
        "ids": rng.integers(0, vocab, (batch, 1), dtype=np.int64),
        "state": np.zeros((state[0], batch, state[2]), dtype=np.float32),
    }


def backends(card: ModelCard, threads: int) -> dict[str, Callable[[dict[str, np.ndarray]], Any]]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        str(card.file_path("onnx")), options, providers=["CPUExecutionProvider"]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.load(str(card.file_path("torchscript"))).eval()
    kind = "mnist" if card.task == "digit-classification" else "charlm"
    arch = {k: v for k, v in card.data["architecture"].items() if k not in ("class", "parameters")}
    eager = build_model(kind, arch).eval()
    eager.load_state_dict(scripted.state_dict())

    def torch_call(module: torch.nn.Module) -> Callable[[dict[str, np.ndarray]], Any]:
        def run(feeds: dict[str, np.ndarray]) -> Any:
            with torch.inference_mode():
                return module(*(torch.from_numpy(v) for v in feeds.values()))

        return run

    return {
        "onnxruntime": lambda feeds: session.run(None, feeds),
        "torchscript": torch_call(scripted),
        "eager": torch_call(eager),
    }


def time_call(fn: Callable[[], Any], budget_s: float) -> list[float]:
    fn()  # warm-up
    samples: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(samples) < 5 or (time.perf_counter() < deadline and len(samples) < 2000):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return samples


def bench(models: Path, threads: int, rounds: int, budget_s: float) -> list[dict[str, Any]]:
    torch.set_num_threads(threads)
    results = []
    for card in discover_cards(models):
        runners = backends(card, threads)
        for batch in BATCHES:
            feeds = feeds_for(card, batch)
            samples: dict[str, list[float]] = {name: [] for name in runners}
            for _ in range(rounds):  # alternate backends round by round
                for name, run in runners.items():
                    samples[name] += time_call(partial(run, feeds), budget_s)
            row: dict[str, Any] = {"model": card.name, "batch": batch}
            for name, values in samples.items():
                row[f"{name}_ms"] = statistics.median(values)
            results.append(row)
    return results


def render(results: list[dict[str, Any]]) -> str:
    lines = [
        "| model | batch | onnxruntime ms | torchscript ms | eager ms | ORT speed-up vs eager |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['onnxruntime_ms']:.3f} | "
            f"{r['torchscript_ms']:.3f} | {r['eager_ms']:.3f} | "
            f"{r['eager_ms'] / r['onnxruntime_ms']:.1f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.bench_inference",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads, every backend")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=0.5, help="per backend, per round")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args(argv)
    results = bench(args.models, args.threads, args.rounds, args.seconds)
    print(
        f"machine: {platform.processor() or platform.machine()}, {args.threads} thread(s), "
        f"torch {torch.__version__}, onnxruntime {ort.__version__}; median ms per call\n"
    )
    print(render(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
