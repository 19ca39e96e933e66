"""Start-up of a real server: model verification, device policy and settings fail fast."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from loadtest.servers import start_server, wait_exit, wait_ready
from service.model.runtime import cuda_device_count
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def copy_models(tmp_path: Path) -> Path:
    target = tmp_path / "models"
    shutil.copytree(ROOT / "models", target, ignore=shutil.ignore_patterns("README.md"))
    return target


def test_tampered_model_stops_start_up_naming_the_file(tmp_path: Path) -> None:
    models = copy_models(tmp_path)
    onnx_file = models / "mnist-rnn" / "1" / "model.onnx"
    blob = bytearray(onnx_file.read_bytes())
    blob[100] ^= 0xFF
    onnx_file.write_bytes(bytes(blob))
    server = start_server(tmp_path, model_dir=str(models), wait=False)
    assert wait_exit(server) != 0
    assert f"{onnx_file}: sha256" in server.log()


def test_missing_model_file_stops_start_up(tmp_path: Path) -> None:
    models = copy_models(tmp_path)
    (models / "char-rnn" / "1" / "model.onnx").unlink()
    server = start_server(tmp_path, model_dir=str(models), wait=False)
    assert wait_exit(server) != 0
    assert "model.onnx is missing" in server.log()


def test_requiring_a_gpu_fails_fast_without_one(tmp_path: Path) -> None:
    """RNNSERVE_DEVICE=cuda: where the CUDA driver reports no GPU, start-up stops and says
    so; where it reports one, the service starts on it and says that."""
    server = start_server(tmp_path, model_dir=str(ROOT / "models"), device="cuda", wait=False)
    if cuda_device_count() == 0:
        assert wait_exit(server) != 0
        assert "RNNSERVE_DEVICE=cuda requires a GPU" in server.log()
        return
    try:
        wait_ready(server, 60)
        meta = httpx.get(f"{server.url}/v1/metadata", timeout=10).json()
        assert meta["device"] == "cuda"
        assert {m["provider"] for m in meta["models"]} == {"CUDAExecutionProvider"}
    finally:
        server.stop()


def test_bad_setting_is_named(tmp_path: Path) -> None:
    server = start_server(tmp_path, backend="tensorflow", wait=False)
    assert wait_exit(server) != 0
    assert "RNNSERVE_BACKEND='tensorflow'" in server.log()


def test_a_token_setting_without_tokens_stops_start_up(tmp_path: Path) -> None:
    """`RNNSERVE_API_TOKENS=" , "` used to parse to no token and run without authentication."""
    server = start_server(tmp_path, model_dir=str(ROOT / "models"), api_tokens=" , ", wait=False)
    assert wait_exit(server) != 0
    assert "RNNSERVE_API_TOKENS=' , ' holds no token" in server.log()


def test_forced_cpu_is_reported(tmp_path: Path) -> None:
    server = start_server(tmp_path, model_dir=str(ROOT / "models"), device="cpu")
    try:
        meta = httpx.get(f"{server.url}/v1/metadata", timeout=10).json()
        assert meta["device"] == "cpu" and "forced" in meta["device_reason"]
        assert {m["provider"] for m in meta["models"]} == {"CPUExecutionProvider"}
    finally:
        assert server.stop() == 0


def test_tracing_setting_turns_spans_and_request_ids_on(tmp_path: Path) -> None:
    """Off by default (the session server's answers carry no request id, see test_service);
    on, BentoML's OpenTelemetry middleware runs: a request id header and trace ids in the log."""
    server = start_server(tmp_path, model_dir=str(ROOT / "models"), tracing="on")
    try:
        r = httpx.post(f"{server.url}/next_char", json={"text": "ROMEO"}, timeout=10)
        assert r.status_code == 200 and len(r.headers["x-bentoml-request-id"]) == 16
    finally:
        assert server.stop() == 0
    line = next(x for x in server.log().splitlines() if "path=/next_char" in x)
    assert f"span={r.headers['x-bentoml-request-id']}" in line and "trace=" in line
