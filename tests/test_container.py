"""The OCI image, built and run for real with podman (as root, runc): lean, non-root, every kind
of request from outside, a tampered model refused, SIGTERM drained, and the Kubernetes
manifests played with `podman kube play`.

Where podman cannot run (not installed, not root) the module skips with the reason, except in
CI (CI set), where that is a failure: `make test` installs podman when it can.
"""

from __future__ import annotations

import asyncio
import io
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc
import yaml
from PIL import Image

from loadtest import containers
from loadtest.payloads import digits
from loadtest.servers import free_port
from tests.conftest import ROOT, metric_value

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # its first test builds the image
REASON = containers.unavailable()
if REASON and os.environ.get("CI"):
    raise RuntimeError(f"CI must run the container tests: {REASON}")
if REASON:
    pytest.skip(REASON, allow_module_level=True)

MAX_IMAGE_MB = 700


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    name, size, output = containers.build_image("cpu", tmp_path_factory.mktemp("bentoml-home"))
    print(output)
    print(f"CPU image: {size:.0f} MB")
    assert size <= MAX_IMAGE_MB, f"the CPU image is {size:.0f} MB, over {MAX_IMAGE_MB} MB"
    return name


@pytest.fixture(scope="module")
def served(image: str) -> Iterator[containers.Container]:
    container = containers.run(image, "rnnserve-test")
    seconds = containers.wait_ready(container)  # fails if it never gets ready
    # how fast it gets ready is a measurement (loadtest/results/container.md), not a test
    print(f"ready {seconds:.2f} s after podman run")
    yield container
    container.remove()


def in_image(image: str, script: str) -> str:
    proc = containers.podman("run", "--rm", "--entrypoint", "sh", image, "-c", script)
    return proc.stdout.strip()


def test_the_cpu_image_is_lean(image: str) -> None:
    """Plain onnxruntime (no CUDA wheels), no torch, no compiler."""
    found = in_image(
        image,
        "command -v gcc cc g++ make || true; "
        'python -c \'import importlib.util as u; print([m for m in ("torch", "onnxruntime") '
        "if u.find_spec(m)])'; pip list 2>/dev/null | grep -i -E '^(onnxruntime|nvidia)' || true",
    )
    assert "gcc" not in found and "/cc" not in found and "make" not in found, found
    assert "['onnxruntime']" in found  # torch absent
    assert "onnxruntime-gpu" not in found and "nvidia" not in found, found


def test_it_runs_as_a_non_root_user_on_loopback_only(served: containers.Container) -> None:
    assert containers.podman("exec", served.name, "id", "-u").stdout.strip() == "1034"
    bindings = containers.podman(
        "inspect", "--format", "{{json .HostConfig.PortBindings}}", served.name
    ).stdout
    assert '"HostIp":"127.0.0.1"' in bindings.replace(" ", ""), bindings


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_every_kind_of_request_from_outside(served: containers.Container) -> None:
    digit = digits()[0]
    pixels = np.array(digit.pixels, dtype=np.uint8)
    with httpx.Client(base_url=served.url, timeout=30) as client:
        r = client.post("/classify_image", files={"image": ("d.png", png(pixels), "image/png")})
        assert r.status_code == 200 and r.json()["digit"] == digit.label, r.text
        r = client.post("/classify_pixels", json={"images": [{"pixels": digit.pixels}]})
        assert r.status_code == 200 and r.json()[0]["digit"] == digit.label
        r = client.post(
            "/v1/digits",
            content=pixels.tobytes(),
            headers={"content-type": "application/octet-stream", "x-tensor-shape": "1,28,28"},
        )
        assert r.status_code == 200 and r.json()["digits"] == [digit.label]
        r = client.post("/next_char", json={"text": "ROMEO", "k": 3})
        assert r.status_code == 200 and len(r.json()["candidates"]) == 3
        body = {"prompt": "ROMEO:", "length": 50, "seed": 3}
        text = client.post("/generate", json=body).json()["text"]
        streamed = client.post("/v1/generate/stream", json=body)
        assert streamed.headers["content-type"].startswith("text/event-stream")
        assert (
            "".join(
                __import__("json").loads(line[6:]).get("text", "")
                for line in streamed.text.splitlines()
                if line.startswith("data: ")
            )
            == text
            and len(text) == 50
        )
        v2 = {
            "inputs": [
                {
                    "name": "pixels",
                    "datatype": "UINT8",
                    "shape": [1, 28, 28],
                    "data": pixels.ravel().tolist(),
                }
            ]
        }
        r = client.post("/v2/models/mnist-bigru/infer", json=v2)
        assert r.status_code == 200
        assert next(o for o in r.json()["outputs"] if o["name"] == "digit")["data"] == [digit.label]
        assert client.get("/v2/health/ready").json() == {"ready": True}
        page = client.get("/ui/")
        assert page.status_code == 200 and "<canvas" in page.text
        metrics = client.get("/metrics").text
        assert "rnnserve_model_info" in metrics and "rnnserve_generation_steps_total" in metrics
        meta = client.get("/v1/metadata").json()
        assert meta["torch_imported"] is False and meta["device"] == "cpu"
    # the Open Inference Protocol over gRPC, on the image's port 8001 (listening on 0.0.0.0
    # inside, published on 127.0.0.1)
    grpc_client = tritonclient.grpc.InferenceServerClient(served.grpc_target)
    tensor = tritonclient.grpc.InferInput("pixels", [1, 28, 28], "UINT8")
    tensor.set_data_from_numpy(pixels.reshape(1, 28, 28))
    answer = grpc_client.infer("mnist-bigru", [tensor])
    assert answer.as_numpy("digit").tolist() == [digit.label]
    grpc_client.close()


def test_a_tampered_model_in_a_derived_image_stops_start_up(image: str, tmp_path: Path) -> None:
    (tmp_path / "Containerfile").write_text(
        f"FROM {image}\n"
        "USER root\n"
        "RUN python -c \"p='/home/bentoml/bento/src/models/mnist-rnn/1/model.onnx'; "
        "b=bytearray(open(p,'rb').read()); b[200]^=255; open(p,'wb').write(b)\"\n"
        "USER bentoml\n"
    )
    tampered = "localhost/rnnserve:tampered"
    containers.podman("build", "--network=host", "-t", tampered, str(tmp_path), timeout=300)
    container = containers.run(tampered, "rnnserve-tampered")
    try:
        assert container.exit_code(timeout=60) != 0
        log = container.logs()
        assert "mnist-rnn/1/model.onnx: sha256" in log and "does not match the card" in log, log[
            -2000:
        ]
    finally:
        container.remove()
        containers.podman("rmi", tampered, check=False)


def test_sigterm_drains_in_flight_requests_and_exits_0(image: str) -> None:
    container = containers.run(image, "rnnserve-drain")
    try:
        containers.wait_ready(container)

        async def scenario() -> tuple[list[httpx.Response], float]:
            async with httpx.AsyncClient(base_url=container.url, timeout=60) as client:
                tasks = [
                    asyncio.create_task(
                        client.post(
                            "/generate", json={"prompt": "ROMEO:", "length": 1000, "seed": i}
                        )
                    )
                    for i in range(48)
                ]
                deadline = time.perf_counter() + 10
                active = 0.0
                while active == 0 and time.perf_counter() < deadline:  # in flight, provably
                    active = metric_value(container.url, "rnnserve_generation_active")
                    await asyncio.sleep(0.01)
                containers.podman("kill", "--signal", "SIGTERM", container.name)
                return list(await asyncio.gather(*tasks)), active

        responses, active = asyncio.run(scenario())
        assert active > 0, "no generation was in flight when SIGTERM was sent"
        assert [r.status_code for r in responses] == [200] * 48
        assert all(len(r.json()["text"]) == 1000 for r in responses)
        assert container.exit_code() == 0
    finally:
        container.remove()


def played_manifest(image: str, port: int) -> list[dict[str, Any]]:
    """deploy/k8s's Deployment and Service as podman can play them here: our image, one
    replica, the container port published on 127.0.0.1 (a hostPort; a Service needs a cluster)."""
    documents = []
    for name in ("deployment.yaml", "service.yaml"):
        documents += [
            d for d in yaml.safe_load_all((ROOT / "deploy" / "k8s" / name).read_text()) if d
        ]
    deployment = next(d for d in documents if d["kind"] == "Deployment")
    deployment["spec"]["replicas"] = 1
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["image"] = image
    container["ports"][0].update({"hostPort": port, "hostIP": "127.0.0.1"})
    return documents


def test_the_kubernetes_manifests_play_with_healthy_probes(image: str, tmp_path: Path) -> None:
    port = free_port()
    documents = played_manifest(image, port)
    manifest = tmp_path / "rnnserve.yaml"
    manifest.write_text(yaml.safe_dump_all(documents))
    spec = next(d for d in documents if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    probes = spec["containers"][0]
    containers.podman("kube", "play", "--replace", str(manifest), timeout=180)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.perf_counter() + 60
        while time.perf_counter() < deadline:
            try:
                if (
                    httpx.get(
                        url + probes["startupProbe"]["httpGet"]["path"], timeout=2
                    ).status_code
                    == 200
                ):
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        # what the kubelet would ask: the startup, readiness and liveness probes' requests
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            get = probes[probe]["httpGet"]
            assert get["port"] == 3000  # numeric: podman maps a named port to 0
            assert httpx.get(url + get["path"], timeout=2).status_code == 200, probe
        # the liveness probe, as podman turned it into a health check, run inside the container
        names = containers.podman("ps", "--format", "{{.Names}}").stdout.split()
        (name,) = [n for n in names if n.startswith("rnnserve-pod") and not n.endswith("-infra")]
        assert containers.podman("healthcheck", "run", name, check=False).returncode == 0
        # the manifest's settings reach the service: RNNSERVE_DEVICE=cpu, run as user 1034
        meta = httpx.get(url + "/v1/metadata", timeout=5).json()
        assert meta["device"] == "cpu" and "RNNSERVE_DEVICE=cpu" in meta["device_reason"]
        assert containers.podman("exec", name, "id", "-u").stdout.strip() == str(
            spec["securityContext"]["runAsUser"]
        )
    finally:
        containers.podman("kube", "down", str(manifest), check=False, timeout=120)
