"""Deployment artefacts: the bento builds and the BUILT bento serves; its Dockerfile lints.
The Kubernetes manifests: tests/test_manifests.py."""

from __future__ import annotations

import glob
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from loadtest.payloads import digits
from loadtest.servers import server_env, start_server
from tests.conftest import ROOT

pytestmark = pytest.mark.slow
BENTOML = [sys.executable, "-m", "bentoml"]


@pytest.fixture(scope="module")
def built_bento(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(scratch with the BentoML home, the bento's folder in that store)."""
    scratch = tmp_path_factory.mktemp("bento")
    env = server_env(scratch)
    proc = subprocess.run(
        [*BENTOML, "build", "-f", str(ROOT / "bentofile.yaml"), str(ROOT)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    bento_yamls = glob.glob(
        str(scratch / "bentoml-home" / "bentos" / "rnnserve" / "*" / "bento.yaml")
    )
    assert len(bento_yamls) == 1, bento_yamls
    yield scratch, Path(bento_yamls[0]).parent


def test_bento_carries_code_and_verified_models_only(built_bento: tuple[Path, Path]) -> None:
    _, bento = built_bento
    src = bento / "src"
    assert (src / "service" / "service.py").is_file()
    for name in ("mnist-rnn", "mnist-birnn", "char-rnn"):
        for f in ("card.json", "model.onnx", "model.ts"):
            assert (src / "models" / name / "1" / f).is_file(), f"{name}/1/{f}"
    assert not (src / "training").exists() and not (src / "tests").exists()
    assert (src / "service" / "http" / "web" / "index.html").is_file()
    assert (src / "service" / "http" / "service.py").is_file()
    assert (src / "service" / "imaging" / "photo.py").is_file()
    requirements = (bento / "env" / "python" / "requirements.txt").read_text()
    assert "onnxruntime" in requirements and "torch" not in requirements
    # the photo reading does without scipy (service/imaging/morphology.py): not in the image
    assert "scipy" not in requirements
    assert "scipy" not in (ROOT / "bentofile-gpu.yaml").read_text()
    for fast in ("orjson", "httptools", "uvloop"):
        assert fast in requirements, fast


def test_the_built_bento_serves_from_elsewhere(
    built_bento: tuple[Path, Path], tmp_path: Path
) -> None:
    scratch, _ = built_bento
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env_home = str(scratch / "bentoml-home")
    server = start_server(tmp_path, target="rnnserve:latest", cwd=elsewhere, home=env_home)
    try:
        digit = digits()[0]
        r = httpx.post(
            f"{server.url}/classify_pixels", json={"images": [{"pixels": digit.pixels}]}, timeout=30
        )
        assert r.status_code == 200 and r.json()[0]["digit"] == digit.label
        r = httpx.post(f"{server.url}/next_char", json={"text": "ROMEO", "k": 3}, timeout=30)
        assert r.status_code == 200 and len(r.json()["candidates"]) == 3
        meta = httpx.get(f"{server.url}/v1/metadata", timeout=30).json()
        assert meta["torch_imported"] is False
        r = httpx.post(f"{server.url}/v1/digits", json={"pixels": digit.pixels}, timeout=30)
        assert r.status_code == 200 and r.json()["digits"] == [digit.label]
        page = httpx.get(f"{server.url}/ui/app.js", timeout=30)  # the demo page travels too
        assert page.status_code == 200 and "toMnist" in page.text
        assert httpx.get(f"{server.url}/v2/models/mnist-rnn/ready", timeout=30).status_code == 200
    finally:
        server.stop()


def test_generated_dockerfile_passes_hadolint(built_bento: tuple[Path, Path]) -> None:
    _, bento = built_bento
    dockerfile = bento / "env" / "docker" / "Dockerfile"
    hadolint = Path(sys.executable).with_name("hadolint")
    proc = subprocess.run(
        [
            str(hadolint),
            "--no-color",
            "--config",
            str(ROOT / "deploy" / "hadolint.yaml"),
            str(dockerfile),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
