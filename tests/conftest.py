"""Shared fixtures: the small real-data fixtures and the one default server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from loadtest.servers import Server, start_server

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def metric_value(url: str, name: str, labels: str = "") -> float:
    """The value of one Prometheus sample on a server's /metrics (summed over the label sets
    whose text contains `labels`; 0.0 when absent)."""
    total = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith((name + "{", name + " ")) and labels in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def expected_provider(device: str) -> str:
    """The onnxruntime provider a service must report for the device it says it found."""
    return {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}[device]


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    """A data root laid out as torchvision expects: <root>/MNIST/raw/*.gz (600 + 200 images)."""
    return FIXTURES


@pytest.fixture(scope="session")
def corpus_path() -> Path:
    """The first 40 KB of Tiny Shakespeare."""
    return FIXTURES / "text" / "tinyshakespeare.txt"


@pytest.fixture(scope="session")
def default_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real `bentoml serve` of the committed models with default settings, shared by the
    modules that need nothing else (service, V2, fuzzing, browser): a start costs ~2 s and a
    150 MB worker, and sharing also proves the service keeps serving whatever came before."""
    server = start_server(tmp_path_factory.mktemp("default-server"), model_dir=str(ROOT / "models"))
    yield server
    server.stop()
