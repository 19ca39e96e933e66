"""Triton Inference Server through PyTriton, serving a committed digit model: a comparison peer.

    .venv-peers/bin/python loadtest/peers/pytriton_server.py --model mnist-rnn --port 8000 \
        [--grpc-port 8001] [--metrics-port 8002]

Runs in its own virtual environment (`make peers`: PyTriton needs numpy < 2), never the
service's. The model is the committed ONNX file run by onnxruntime on the CPU with the same
settings as rnnserve (1 intra-op thread, full graph optimisation), behind Triton's dynamic
batching (max batch 256, 2 ms queue delay). Input `pixels` FP32 [-1, 28, 28] raw 0..255,
output `probabilities` FP32 [-1, 10] and `digit` INT64 [-1], like rnnserve's V2 route.

Triton's Python backend must find this interpreter's own libpython: the comparison script
sets LD_LIBRARY_PATH to sysconfig's LIBDIR (without it model initialisation fails with
"'_thread.RLock' object has no attribute '_recursion_count'").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import DEFAULT_PROTECTED_ENDPOINTS, Triton, TritonConfig, TritonSecurityConfig

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="mnist-rnn")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--instances", type=int, default=1, help="model instances")
    parser.add_argument("--delay-us", type=int, default=2000, help="max queue delay")
    parser.add_argument("--grpc-port", type=int, default=0, help="serve gRPC there (0: none)")
    parser.add_argument(
        "--metrics-port", type=int, default=0, help="Triton's Prometheus metrics there (0: none)"
    )
    args = parser.parse_args()

    folder = ROOT / "models" / args.model / "1"
    card = json.loads((folder / "card.json").read_text())
    onnx_file = card["files"]["onnx"]["path"]
    norm = card["inputs"][0]["normalization"]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(folder / onnx_file), options, ["CPUExecutionProvider"])

    @batch
    def infer(pixels: np.ndarray) -> dict[str, np.ndarray]:
        x = ((pixels * norm["scale"] - norm["mean"]) / norm["std"]).astype(np.float32)
        (logits,) = session.run(None, {"pixels": x})
        z = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(z)
        probs = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
        return {"probabilities": probs, "digit": probs.argmax(axis=1).astype(np.int64)}

    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=args.port,
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port or args.port + 1,  # unused when off
        metrics_port=args.metrics_port or args.port + 2,
        allow_grpc=bool(args.grpc_port),
        allow_metrics=bool(args.metrics_port),
        exit_on_error=True,
    )
    # PyTriton guards Triton's statistics API with a token of its own; perf_analyzer reads the
    # server-side statistics of the model it measures, so that one is left open
    security = TritonSecurityConfig(
        restricted_endpoints=[e for e in DEFAULT_PROTECTED_ENDPOINTS if e != "statistics"]
    )
    with Triton(config=config, security_config=security) as triton:
        triton.bind(
            model_name=args.model,
            infer_func=[infer] * args.instances,
            inputs=[Tensor(name="pixels", dtype=np.float32, shape=(28, 28))],
            outputs=[
                Tensor(name="probabilities", dtype=np.float32, shape=(10,)),
                Tensor(name="digit", dtype=np.int64, shape=(1,)),
            ],
            config=ModelConfig(
                max_batch_size=256,
                batcher=DynamicBatcher(max_queue_delay_microseconds=args.delay_us),
            ),
            strict=False,
        )
        print(f"serving {args.model} on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
        triton.serve()


if __name__ == "__main__":
    main()
