"""Shared fixtures: the small real-data fixtures, the service in this process, and the one
default server (a real `bentoml serve`)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import httpx
import pytest

from loadtest.servers import Server, start_server

if TYPE_CHECKING:
    from starlette.testclient import TestClient

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"

# The in-process service's side effects stay in a temp folder: BentoML's store, and the
# Prometheus multiprocess folder its /metrics reads (prometheus_client picks its mode when first
# imported, so this is set before anything imports it; servers this suite starts drop it and
# make their own, see loadtest.servers.server_env).
_SCRATCH = tempfile.mkdtemp(prefix="rnnserve-tests-")
atexit.register(shutil.rmtree, _SCRATCH, ignore_errors=True)
os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.path.join(_SCRATCH, "prometheus")
os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"])
os.environ.setdefault("BENTOML_HOME", os.path.join(_SCRATCH, "bentoml-home"))
os.environ["BENTOML_DO_NOT_TRACK"] = "true"


def metric_value(source: str | httpx.Client, name: str, labels: str = "") -> float:
    """The value of one Prometheus sample on a server's /metrics (summed over the label sets
    whose text contains `labels`; 0.0 when absent). `source`: a server's URL or a client."""
    if isinstance(source, str):
        text = httpx.get(f"{source}/metrics", timeout=10).text
    else:
        text = source.get("/metrics").text
    total = 0.0
    for line in text.splitlines():
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


@pytest.fixture(scope="session")
def app_client() -> Iterator[TestClient]:
    """The whole service in this process with default settings: BentoML's ASGI app with every
    middleware, route and mounted app (lean /v1/digits, V2, streams, the page), started and
    stopped through its lifespan like a worker, over an in-memory transport. Most HTTP
    behaviour is tested here in milliseconds; what needs a real process (start-up failures,
    workers, signals, sockets, fuzzing, the browser) uses `default_server` or its own."""
    from service.settings import PREFIX, Settings

    names = [PREFIX + name.upper() for name in Settings.model_fields]
    stray = [name for name in names if os.environ.get(name)]
    if stray:  # settings are read when the service module is imported: defaults only here
        pytest.fail(f"unset {stray} to run the in-process tests (they test the defaults)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # starlette suggests httpx2 for its TestClient
        from starlette.testclient import TestClient

        from service.service import RnnServe
    from bentoml._internal.configuration.containers import BentoMLContainer
    from opentelemetry.util.http import ExcludeList

    service = cast(Any, RnnServe)
    service.inject_config()
    # BentoML memoizes the tracing exclusions of the first app a process builds: another
    # in-process app (tests/test_bentoml_compat.py builds some) would leave its own here
    excluded = BentoMLContainer.tracing.excluded_urls.get()
    with BentoMLContainer.tracing_excluded_urls.patch(ExcludeList(excluded)):
        app = service.to_asgi()
    with TestClient(app, base_url="http://testserver") as client:
        yield client
