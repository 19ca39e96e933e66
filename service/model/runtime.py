"""Model backends (onnxruntime, TorchScript) and the choice of device.

onnxruntime-gpu lists CUDAExecutionProvider even on machines with no GPU and then falls back
to CPU with error lines in the log. So the GPU is detected here first, through the CUDA driver
itself (libcuda, no torch), providers are passed explicitly, and the provider a session really
runs on is read back from it and reported. The ONNX path never imports torch; TorchScript
imports it only when that backend is chosen.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from service.model.cards import ModelCard
from service.settings import Settings

logger = logging.getLogger("rnnserve")


class DeviceError(RuntimeError):
    """The device policy cannot be honoured (e.g. a GPU is required and none is usable)."""


def cuda_device_count() -> int:
    """GPUs the NVIDIA driver reports; 0 when there is no driver or no device."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        try:
            if lib.cuInit(0) != 0:
                return 0
            count = ctypes.c_int(0)
            if lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
                return 0
            return int(count.value)
        except AttributeError:
            return 0
    return 0


@dataclass(frozen=True)
class DeviceChoice:
    device: str  # "cuda" or "cpu"
    reason: str


def choose_device(policy: str, gpu_count: int | None = None) -> DeviceChoice:
    """Apply the device policy (auto | cpu | cuda) to what this machine has."""
    gpus = cuda_device_count() if gpu_count is None else gpu_count
    if policy == "cpu":
        return DeviceChoice("cpu", "CPU forced by RNNSERVE_DEVICE=cpu")
    if policy == "cuda":
        if gpus == 0:
            raise DeviceError(
                "RNNSERVE_DEVICE=cuda requires a GPU, but the CUDA driver reports none "
                "(set RNNSERVE_DEVICE=auto to fall back to CPU)"
            )
        return DeviceChoice("cuda", f"GPU required and found ({gpus} device(s))")
    if gpus:
        return DeviceChoice("cuda", f"{gpus} GPU(s) found")
    return DeviceChoice("cpu", "no usable GPU (CUDA driver reports none): CPU")


class Backend(Protocol):
    """One loaded model: numpy feeds in, numpy outputs out."""

    provider: str

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...


_PRELOADED: list[bool] = []

# Full float32 on the GPU: onnxruntime's CUDA provider uses TF32 (10-bit mantissas) for its
# matrix products by default on Ampere and newer, which moved these models' logits by up to
# 0.019 from the CPU's on an H200 (the cards promise 1e-4; loadtest/results/gpu_check.md).
# These models are far too small for TF32 to buy speed, so parity wins.
CUDA_PROVIDER_OPTIONS: dict[str, Any] = {"device_id": 0, "use_tf32": 0}


def preload_cuda_libraries(ort: Any) -> None:
    """Load CUDA and cuDNN from the `nvidia-*` pip packages (onnxruntime-gpu[cuda,cudnn]) before
    the first CUDA session, so the GPU path needs neither torch nor a CUDA base image. Once per
    process; a no-op where the packages are absent (the libraries may come from the system)."""
    if _PRELOADED or not hasattr(ort, "preload_dlls"):
        return
    _PRELOADED.append(True)
    try:
        ort.preload_dlls()
    except Exception as exc:  # the system's libraries may still serve; the provider check says
        logger.warning("onnxruntime.preload_dlls() failed (%s); using the system's CUDA", exc)


class OnnxBackend:
    def __init__(self, card: ModelCard, device: str, threads: int, required: bool) -> None:
        import onnxruntime as ort

        ort.set_default_logger_severity(3)  # errors only: no provider-probing noise
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # The CPU arena keeps peak-batch buffers for good (worker memory that never comes
        # back) and made no difference to the inference times of loadtest/bench_inference.py.
        options.enable_cpu_mem_arena = False
        providers: list[Any] = ["CPUExecutionProvider"]
        if device == "cuda":
            preload_cuda_libraries(ort)
            providers.insert(0, ("CUDAExecutionProvider", dict(CUDA_PROVIDER_OPTIONS)))
        self.session = ort.InferenceSession(
            card.read_verified("onnx"), options, providers=providers
        )
        self.provider = self.session.get_providers()[0]
        if device == "cuda" and self.provider != "CUDAExecutionProvider":
            message = f"{card.name}: CUDAExecutionProvider could not start, running on CPU"
            if required:
                raise DeviceError(message)
            logger.warning(message)
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return list(self.session.run(self.output_names, feeds))

    def signature(self) -> dict[str, list[tuple[str, str, list[Any]]]]:
        """The graph's inputs and outputs as (name, element type, shape): what verify.py
        compares with the card."""
        return {
            part: [(t.name, t.type, list(t.shape)) for t in tensors]
            for part, tensors in (
                ("inputs", self.session.get_inputs()),
                ("outputs", self.session.get_outputs()),
            )
        }


class TorchScriptBackend:
    def __init__(self, card: ModelCard, device: str, threads: int) -> None:
        import io
        import warnings

        try:
            import torch  # lazily: only this backend pays for it
        except ImportError:
            raise DeviceError(
                "RNNSERVE_BACKEND=torchscript needs PyTorch, which this environment lacks "
                "(the serving install has none): install the train extra, pip install -e "
                "'.[train]', or use the onnx backend"
            ) from None

        if threads:
            torch.set_num_threads(threads)
        if device == "cuda":  # full float32, as on the onnx backend (CUDA_PROVIDER_OPTIONS)
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        self.torch = torch
        self.device = torch.device(device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            self.module = torch.jit.load(
                io.BytesIO(card.read_verified("torchscript")), map_location=device
            )
        self.module.eval()
        self.provider = f"torch-{device}"

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        torch = self.torch
        with torch.inference_mode():
            args = [torch.from_numpy(v).to(self.device) for v in feeds.values()]
            out = self.module(*args)
        outs = out if isinstance(out, tuple) else (out,)
        return [o.detach().cpu().numpy() for o in outs]


def load_backend(card: ModelCard, settings: Settings, device: DeviceChoice) -> Backend:
    required = settings.device == "cuda"
    if settings.backend == "torchscript":
        return TorchScriptBackend(card, device.device, settings.threads)
    return OnnxBackend(card, device.device, settings.threads, required)
