"""The GPU check: run the service's CUDA paths on a real GPU, compare with the CPU, measure.

    python -m loadtest.gpu_check --out $OUT              # on the GPU machine (see gpu_check.sh)
    python -m loadtest.gpu_check --cpu-only --out /tmp/x # the rehearsal here: CUDA checks off

Steps, each timed and written to OUT/gpu_check.json as it finishes (so a run cut short still
says how far it came), then OUT/gpu_check.md:
1. environment: GPU, driver, onnxruntime and its providers, torch;
2. onnxruntime: every committed model on CUDAExecutionProvider (asserted) and on CPU, the
   outputs compared on real test digits and text within the card's tolerance, samples/s at
   batch 1, 64 and 256 on each;
3. TorchScript on CUDA (torch), compared with onnxruntime on CPU;
4. the service itself: `bentoml serve` with RNNSERVE_DEVICE=cuda (fail fast), every model
   reporting CUDAExecutionProvider, then /v1/digits requests/s and p99 at 1 and 32 clients and
   with 256-image requests, and generation characters/s with 32 and 64 streams.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
BATCHES = (1, 64, 256)


class Report:
    """Results by step, written out after every step."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.steps: dict[str, Any] = {}
        out.mkdir(parents=True, exist_ok=True)

    def step(self, name: str, run: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        print(f"== {name}", flush=True)
        try:
            result = {"ok": True, "result": run()}
        except Exception as exc:  # record and go on: the other steps still tell something
            result = {
                "ok": False,
                "error": f"{type(exc).__name__}: {exc}",
                "trace": traceback.format_exc()[-3000:],
            }
            print(result["trace"], flush=True)
        result["seconds"] = round(time.perf_counter() - started, 1)
        self.steps[name] = result
        (self.out / "gpu_check.json").write_text(json.dumps(self.steps, indent=2, default=str))
        return result.get("result")


def environment() -> dict[str, Any]:
    import onnxruntime as ort

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "onnxruntime": ort.__version__,
        "available_providers": ort.get_available_providers(),
    }
    if shutil.which("nvidia-smi"):
        info["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_cuda"] = torch.cuda.is_available()
    except ImportError:
        info["torch"] = None
    return info


def real_inputs(card: Any, batch: int) -> dict[str, np.ndarray]:
    """Real test digits (normalized as the card says) or real text ids, `batch` rows."""
    from service.model.numerics import normalize
    from training.data import load_mnist_split

    if card.task == "digit-classification":
        images = load_mnist_split(FIXTURES, train=False).images
        rows = images[np.arange(batch) % len(images)]
        return {
            "pixels": normalize(rows, card.input_spec("pixels")["normalization"]).astype(np.float32)
        }
    vocab = {c: i for i, c in enumerate(card.data["vocabulary"])}
    text = (FIXTURES / "text" / "tinyshakespeare.txt").read_text()[: 64 * batch]
    ids = np.array([vocab[c] for c in text], dtype=np.int64).reshape(batch, 64)
    shape = card.input_spec("state")["shape"]
    return {"ids": ids, "state": np.zeros((shape[0], batch, shape[2]), np.float32)}


def session(card: Any, provider: str, tf32: bool = False) -> Any:
    """An onnxruntime session as the service makes one (`tf32`: the provider's own default,
    to show what full float32 buys in parity and costs in speed)."""
    import onnxruntime as ort

    from service.model.runtime import CUDA_PROVIDER_OPTIONS, preload_cuda_libraries

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    providers: list[Any] = ["CPUExecutionProvider"]
    if provider == "cuda":
        preload_cuda_libraries(ort)
        cuda_options = {**CUDA_PROVIDER_OPTIONS, **({"use_tf32": 1} if tf32 else {})}
        providers.insert(0, ("CUDAExecutionProvider", cuda_options))
    created = ort.InferenceSession(card.read_verified("onnx"), options, providers=providers)
    if provider == "cuda" and created.get_providers()[0] != "CUDAExecutionProvider":
        raise RuntimeError(
            f"{card.name}: CUDAExecutionProvider did not start: {created.get_providers()}"
        )
    return created


def per_second(run: Callable[[], Any], rows: int, seconds: float = 2.0) -> float:
    for _ in range(3):
        run()
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        run()
        count += 1
    return rows * count / (time.perf_counter() - started)


def onnxruntime_check(cpu_only: bool, seconds: float = 2.0) -> dict[str, Any]:
    from service.model.repository import discover_cards

    results: dict[str, Any] = {}
    for card in discover_cards(ROOT / "models"):
        cpu = session(card, "cpu")
        gpu = None if cpu_only else session(card, "cuda")
        gpu_tf32 = None if cpu_only else session(card, "cuda", tf32=True)
        tolerance = float(card.data["export"].get("tolerance", 1e-4))
        row: dict[str, Any] = {"tolerance": tolerance}
        feeds = real_inputs(card, 256 if card.task == "digit-classification" else 64)
        reference = cpu.run(None, feeds)
        if gpu is not None:
            got = gpu.run(None, feeds)
            row["max_abs_diff_gpu_vs_cpu"] = max(
                float(np.abs(a - b).max()) for a, b in zip(got, reference, strict=True)
            )
            row["parity"] = (
                row["max_abs_diff_gpu_vs_cpu"] <= tolerance * 10
            )  # 10x: float kernels differ
            if gpu_tf32 is not None:
                got = gpu_tf32.run(None, feeds)
                row["max_abs_diff_gpu_tf32_vs_cpu"] = max(
                    float(np.abs(a - b).max()) for a, b in zip(got, reference, strict=True)
                )
        for batch in BATCHES:
            feeds = real_inputs(card, batch)
            rows = batch * (feeds["ids"].shape[1] if "ids" in feeds else 1)
            for name, runner in (("cpu", cpu), ("gpu", gpu), ("gpu_tf32", gpu_tf32)):
                if runner is not None:
                    rate = per_second(partial(runner.run, None, feeds), rows, seconds)
                    row[f"{name}_samples_per_s_b{batch}"] = round(rate, 1)
        results[card.name] = row
        print(card.name, row, flush=True)
    return results


def torchscript_check(cpu_only: bool) -> dict[str, Any]:
    import torch

    from service.model.repository import discover_cards

    device = "cpu" if cpu_only else "cuda"
    torch.backends.cudnn.allow_tf32 = False  # as the service's TorchScript backend does
    torch.backends.cuda.matmul.allow_tf32 = False
    results: dict[str, Any] = {}
    for card in discover_cards(ROOT / "models"):
        try:
            results[card.name] = torchscript_parity(card, device)
        except Exception as exc:  # one model's failure must not hide the others'
            results[card.name] = {"device": device, "error": f"{type(exc).__name__}: {exc}"[:2000]}
    failed = [name for name, row in results.items() if "error" in row]
    if failed:
        raise RuntimeError(f"TorchScript failed on {device} for {failed}: {results}")
    return results


def torchscript_parity(card: Any, device: str) -> dict[str, Any]:
    """One committed model.ts on `device` against onnxruntime on CPU, same real inputs."""
    import io
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(
            io.BytesIO(card.read_verified("torchscript")), map_location=device
        ).eval()
    feeds = real_inputs(card, 64)
    reference = session(card, "cpu").run(None, feeds)
    with torch.inference_mode():
        out = module(*(torch.from_numpy(v).to(device) for v in feeds.values()))
    outs = out if isinstance(out, tuple) else (out,)
    diff = max(
        float(np.abs(o.cpu().numpy() - r).max()) for o, r in zip(outs, reference, strict=True)
    )
    tolerance = float(card.data["export"].get("tolerance", 1e-4))
    return {"device": device, "max_abs_diff_vs_onnx_cpu": diff, "parity": diff <= tolerance * 10}


def service_check(cpu_only: bool) -> dict[str, Any]:
    from loadtest.bench_generation import level
    from loadtest.bench_service import percentile, run_level, scenario_requests
    from loadtest.flood import DigitRequests, capacity
    from loadtest.servers import start_server

    scratch = Path(tempfile.mkdtemp(prefix="rnnserve-gpu-"))
    server = start_server(scratch, device="cpu" if cpu_only else "cuda", timeout=240)
    try:
        import httpx

        meta = httpx.get(f"{server.url}/v1/metadata", timeout=30).json()
        providers = {m["name"]: m["provider"] for m in meta["models"]}
        expected = "CPUExecutionProvider" if cpu_only else "CUDAExecutionProvider"
        if set(providers.values()) != {expected}:
            raise RuntimeError(f"providers {providers}, expected {expected} everywhere")
        results: dict[str, Any] = {"device": meta["device"], "providers": providers}
        requests = scenario_requests("lean pixels, batching on")
        for clients in (1, 32):
            lat, errors, elapsed = asyncio.run(run_level(server.url, requests, clients, 8.0, 2.0))
            results[f"v1_digits_{clients}_clients"] = {
                "rps": round(len(lat) / elapsed, 1),
                "p99_ms": round(percentile(lat, 99), 2),
                "errors": errors,
            }
        results["v1_digits_256_images_rps"] = round(
            asyncio.run(capacity(server.url, DigitRequests(256), 8.0, 4)), 1
        )
        for streams in (32, 64):
            row = asyncio.run(level(server.url, streams, 500, seed0=streams, per_client=2))
            row.pop("texts")
            results[f"generation_{streams}_streams"] = row
        return results
    finally:
        server.stop()


def text_check(cpu_only: bool) -> dict[str, Any]:
    """The text loop on the device, in-process: the model's generation step by batch size (the
    ceiling of batching generations there), 1 against 32 concurrent generations, and a carried
    state made on the CPU continued on the device (states name the model, not the device)."""
    from loadtest.bench_text_batching import step_costs
    from service.engine.pipeline import Pipelines
    from service.model.inference import ModelRegistry
    from service.settings import Settings

    def pipelines_on(device: Literal["cpu", "cuda"]) -> Pipelines:
        settings = Settings(device=device)
        return Pipelines(ModelRegistry.load(settings), settings)

    device: Literal["cpu", "cuda"] = "cpu" if cpu_only else "cuda"
    on_cpu, here = pipelines_on("cpu"), pipelines_on(device)
    assert here.registry.char is not None
    steps = step_costs(here.registry.char, [1, 8, 32, 64, 256], 200)
    text = "ROMEO:\nWhat light through yonder window breaks? It is the east, and Juliet"

    async def generations(count: int) -> float:
        started = time.perf_counter()
        await asyncio.gather(
            *(here.generate("ROMEO:\n", 500, 0.8, None, seed) for seed in range(count))
        )
        return count * 500 / (time.perf_counter() - started)

    async def continued() -> float:
        head = await on_cpu.next_chars(text[:40], 10, 1.0)
        tail = await here.next_chars(text[40:], 10, 1.0, head.state)
        whole = await on_cpu.next_chars(text, 10, 1.0)
        return max(abs(a[1] - b[1]) for a, b in zip(tail.candidates, whole.candidates, strict=True))

    asyncio.run(generations(4))  # warm-up
    alone, together = asyncio.run(generations(1)), asyncio.run(generations(32))
    return {
        "device": device,
        "step_ms_by_batch": steps,
        "generation_chars_per_s": {"1": round(alone), "32": round(together)},
        "generation_32_vs_1": round(together / alone, 1),
        "cpu_state_continued_max_probability_gap": asyncio.run(continued()),
    }


def torchscript_service_check(cpu_only: bool) -> dict[str, Any]:
    """The service with RNNSERVE_BACKEND=torchscript on the device: every model on torch there,
    /v1/digits under 32 clients without an error."""
    from loadtest.bench_service import percentile, run_level, scenario_requests
    from loadtest.servers import start_server

    device = "cpu" if cpu_only else "cuda"
    scratch = Path(tempfile.mkdtemp(prefix="rnnserve-gpu-ts-"))
    server = start_server(scratch, device=device, backend="torchscript", timeout=240)
    try:
        import httpx

        meta = httpx.get(f"{server.url}/v1/metadata", timeout=30).json()
        providers = {m["name"]: m["provider"] for m in meta["models"]}
        if set(providers.values()) != {f"torch-{device}"}:
            raise RuntimeError(f"providers {providers}, expected torch-{device} everywhere")
        requests = scenario_requests("lean pixels, batching on")
        lat, errors, elapsed = asyncio.run(run_level(server.url, requests, 32, 4.0, 1.0))
        if errors:
            raise RuntimeError(f"{errors} errors from the torchscript service")
        return {
            "providers": providers,
            "v1_digits_32_clients": {
                "rps": round(len(lat) / elapsed, 1),
                "p99_ms": round(percentile(lat, 99), 2),
            },
        }
    finally:
        server.stop()


def machine(steps: dict[str, Any]) -> str:
    """The GPU as nvidia-smi named it, and the host's cores (the CPU columns ran on one)."""
    env = steps.get("environment", {}).get("result") or {}
    gpu = env.get("nvidia_smi") or "no GPU"
    cores = env.get("cpu_count", "unrecorded")
    return f"{gpu}; host {platform.machine()}, {cores} CPU cores, Python {env.get('python')}"


def summary(steps: dict[str, Any]) -> list[str]:
    """The tables a reader wants first; the raw step results follow them."""
    lines: list[str] = []
    ort_rows = (steps.get("onnxruntime") or {}).get("result") or {}
    ts_rows = (steps.get("torchscript") or {}).get("result") or {}
    if ort_rows:
        lines += [
            "In-process onnxruntime, samples/s (a sample is an image, or a character for "
            "char-rnn); CPU = the GPU machine's CPU, 1 thread; GPU = CUDAExecutionProvider, full "
            "float32 (the service's setting); TF32 = the provider's default, shown for its cost "
            "in parity.",
            "",
            "| model | GPU vs CPU max abs diff | TF32 vs CPU | TorchScript CUDA vs CPU "
            "| CPU samples/s, b1 / b64 / b256 | GPU samples/s, b1 / b64 / b256 "
            "| TF32 samples/s, b256 |",
            "| --- | ---: | ---: | ---: | --- | --- | ---: |",
        ]
        for name, row in ort_rows.items():

            def rates(prefix: str, row: dict[str, Any] = row) -> str:
                return " / ".join(
                    f"{row.get(f'{prefix}_samples_per_s_b{b}', 0):,.0f}" for b in BATCHES
                )

            ts = ts_rows.get(name, {}).get("max_abs_diff_vs_onnx_cpu")
            lines.append(
                f"| {name} | {row.get('max_abs_diff_gpu_vs_cpu', 0):.1e} "
                f"| {row.get('max_abs_diff_gpu_tf32_vs_cpu', 0):.1e} "
                f"| {ts if ts is None else format(ts, '.1e')} | {rates('cpu')} | {rates('gpu')} "
                f"| {row.get('gpu_tf32_samples_per_s_b256', 0):,.0f} |"
            )
        lines.append("")
    service = (steps.get("service") or {}).get("result") or {}
    if service:
        one, many = service["v1_digits_1_clients"], service["v1_digits_32_clients"]
        lines += [
            "The service (`bentoml serve`, RNNSERVE_DEVICE=cuda, one worker; load generator on "
            "the same machine):",
            "",
            "| what | measured |",
            "| --- | --- |",
            f"| /v1/digits, 1 image, 1 client | {one['rps']:,.1f} req/s, p99 {one['p99_ms']} ms |",
            f"| /v1/digits, 1 image, 32 clients | {many['rps']:,.1f} req/s, "
            f"p99 {many['p99_ms']} ms |",
            f"| /v1/digits, 256 images per request | {service['v1_digits_256_images_rps']} req/s "
            f"({service['v1_digits_256_images_rps'] * 256:,.0f} digits/s) |",
        ]
        for key in ("generation_32_streams", "generation_64_streams"):
            if key in service:
                gen = service[key]
                lines.append(
                    f"| generation, {gen['streams']} streams | {gen['chars_per_s']:,.0f} chars/s, "
                    f"first char p99 {gen['first_char_p99_ms']:.1f} ms |"
                )
        ts_service = (steps.get("service_torchscript") or {}).get("result") or {}
        if ts_service:
            row = ts_service["v1_digits_32_clients"]
            lines.append(
                "| /v1/digits, RNNSERVE_BACKEND=torchscript, 32 clients "
                f"| {row['rps']:,.1f} req/s, p99 {row['p99_ms']} ms |"
            )
        lines.append("")
    return lines


def render(steps: dict[str, Any], command: str, date: str | None = None) -> str:
    lines = [
        "# GPU check",
        "",
        f"Command: `{command}`  ",
        f"Date: {date or time.strftime('%Y-%m-%d')}  ",
        f"Machine: {machine(steps)}",
        "",
        *summary(steps),
        "## Steps",
        "",
    ]
    for name, step in steps.items():
        lines += [f"## {name} ({'ok' if step['ok'] else 'FAILED'}, {step['seconds']} s)", "", "```"]
        lines += [
            json.dumps(step.get("result", step.get("error")), indent=2, default=str)[:6000],
            "```",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-only", action="store_true", help="the rehearsal: no CUDA checks")
    parser.add_argument(
        "--out", type=Path, default=Path(os.environ.get("OUT", ROOT / "loadtest" / "results"))
    )
    parser.add_argument("--skip-service", action="store_true")
    parser.add_argument("--seconds", type=float, default=2.0, help="per throughput figure")
    parser.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="only write OUT/gpu_check.md again from a run's gpu_check.json",
    )
    args = parser.parse_args(argv)
    if args.render:
        steps = json.loads(args.render.read_text())
        (args.out / "gpu_check.md").write_text(render(steps, "bash loadtest/gpu_check.sh"))
        return 0
    report = Report(args.out)
    report.step("environment", environment)
    report.step("onnxruntime", lambda: onnxruntime_check(args.cpu_only, args.seconds))
    report.step("torchscript", lambda: torchscript_check(args.cpu_only))
    if not args.skip_service:
        report.step("service", lambda: service_check(args.cpu_only))
        report.step("service_torchscript", lambda: torchscript_service_check(args.cpu_only))
        report.step("text", lambda: text_check(args.cpu_only))
    given = [a for a in (argv if argv is not None else sys.argv[1:]) if a != str(args.out)]
    command = " ".join(["bash loadtest/gpu_check.sh", *(a for a in given if a != "--out")])
    (args.out / "gpu_check.md").write_text(render(report.steps, command))
    failed = [name for name, step in report.steps.items() if not step["ok"]]
    print("failed steps:", failed or "none")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
