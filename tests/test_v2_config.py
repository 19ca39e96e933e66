"""Triton's model configuration route (`GET /v2/models/{name}[/versions/{v}]/config`, what
perf_analyzer and Triton's clients read before anything else) and the V2 routes' 405 answers.

The configuration must agree with the metadata route (the same tensors, Triton's type names,
shapes without the batch axis) and follow the settings, never per-model values: checked on the
service in this process, for the served settings and for others built here, plus one check
with Triton's own client against a real server.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import pytest

from service.engine.pipeline import ServingState
from service.http.v2_app import model_config, model_metadata, v2_app
from service.model.inference import DigitClassifier
from service.model.repository import discover_cards
from service.settings import Settings
from tests.conftest import ROOT

if TYPE_CHECKING:
    from starlette.testclient import TestClient

    from loadtest.servers import Server
    from service.engine.pipeline import Pipelines

DEFAULTS = Settings.from_env({})
# V2 datatypes as Triton's configuration spells them
TRITON_TYPES = {
    "FP32": "TYPE_FP32",
    "INT64": "TYPE_INT64",
    "BOOL": "TYPE_BOOL",
    "BYTES": "TYPE_STRING",
}
OPTIONAL_INPUTS = {"char-rnn": {"state", "carried_state"}}  # the rest are required


@pytest.fixture(scope="module")
def pipelines(app_client: TestClient) -> Pipelines:
    """The in-process service's pipelines (loaded once `app_client` has started)."""
    from service.http.service import STATE

    assert STATE.pipelines is not None
    return STATE.pipelines


@pytest.fixture(scope="module")
def served() -> dict[str, str]:
    """Every served model (the committed ones: both servers serve models/) -> its version."""
    return {card.name: str(card.data["version"]) for card in discover_cards(ROOT / "models")}


def _config(app_client: TestClient, path: str) -> dict[str, Any]:
    r = app_client.get(path)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    config: dict[str, Any] = r.json()
    return config


def test_every_config_agrees_with_the_metadata(
    app_client: TestClient, served: dict[str, str]
) -> None:
    """Same names and order, datatypes mapped (BYTES -> TYPE_STRING), shapes less the batch
    axis when max_batch_size > 0 (whole shapes at 0), `optional` exactly where a request may
    leave an input out; with and without the version in the path."""
    assert set(served) == {"mnist-rnn", "mnist-birnn", "mnist-bigru", "char-rnn"}
    for name, version in served.items():
        config = _config(app_client, f"/v2/models/{name}/config")
        assert _config(app_client, f"/v2/models/{name}/versions/{version}/config") == config
        meta = app_client.get(f"/v2/models/{name}").json()
        assert config["name"] == name
        assert config["platform"] == meta["platform"] == "onnxruntime_onnx"
        assert config["backend"] == "onnxruntime"
        assert config["default_model_filename"] == "model.onnx"
        batched = config["max_batch_size"] > 0
        for kind, tensors in (("input", meta["inputs"]), ("output", meta["outputs"])):
            assert [t["name"] for t in config[kind]] == [t["name"] for t in tensors], kind
            for entry, tensor in zip(config[kind], tensors, strict=True):
                assert entry["data_type"] == TRITON_TYPES[tensor["datatype"]], entry
                shape = tensor["shape"]
                if "reshape" in entry:  # one value per item: dims [1] as a scalar, Triton's way
                    assert batched and entry["dims"] == [1] and shape == [-1], entry
                    assert entry["reshape"] == {"shape": []}
                else:
                    assert entry["dims"] == (shape[1:] if batched else shape), entry
                assert entry["dims"] and all(isinstance(d, int) for d in entry["dims"])
                if kind == "input":
                    assert entry["optional"] is (entry["name"] in OPTIONAL_INPUTS.get(name, ()))
                else:
                    assert "optional" not in entry  # Triton has no optional outputs


def test_max_batch_size_and_batching_follow_the_served_settings(
    app_client: TestClient, served: dict[str, str]
) -> None:
    """Defaults: batching on, so a digit model takes RNNSERVE_MAX_BATCH_SIZE and has a dynamic
    batcher with no added delay whose queue policy is the wait bound; the character model has
    no batch axis (its state carries the rows on axis 1) and says its row bound instead."""
    assert DEFAULTS.batching
    for name in served:
        config = _config(app_client, f"/v2/models/{name}/config")
        batching = config["dynamic_batching"]
        assert batching["max_queue_delay_microseconds"] == 0
        policy = batching["default_queue_policy"]
        assert policy["timeout_action"] == "REJECT" and not policy["allow_timeout_override"]
        assert policy["default_timeout_microseconds"] == DEFAULTS.max_queue_wait_ms * 1000
        assert config["version_policy"] == {"latest": {"num_versions": 1}}
        assert config["instance_group"][0]["kind"] == "KIND_CPU"  # the tests run on CPU
        assert config["instance_group"][0]["count"] == DEFAULTS.workers
        rows = config["parameters"]["max_request_rows"]["string_value"]
        if name == "char-rnn":
            assert config["max_batch_size"] == 0
            assert rows == str(DEFAULTS.max_char_rows)
            assert policy["max_queue_size"] == DEFAULTS.max_queued_text
        else:
            assert config["max_batch_size"] == DEFAULTS.max_batch_size
            dims = {o["name"]: (o["dims"], o.get("reshape")) for o in config["output"]}
            assert dims == {
                "probabilities": ([10], None),
                "digit": ([1], {"shape": []}),
                "confident": ([1], {"shape": []}),
            }
            assert rows == str(DEFAULTS.max_images_per_request)
            assert policy["max_queue_size"] == DEFAULTS.max_queued_images


@pytest.mark.parametrize(
    ("env", "digit_batch", "batching"),
    [
        ({"RNNSERVE_MAX_BATCH_SIZE": "8"}, 8, True),
        # a request of the advertised size must be accepted: capped by one request's limit
        ({"RNNSERVE_MAX_BATCH_SIZE": "512", "RNNSERVE_MAX_IMAGES_PER_REQUEST": "100"}, 100, True),
        # off: every request is one model call (Triton's default scheduler, no dynamic batcher)
        ({"RNNSERVE_BATCHING": "off", "RNNSERVE_MAX_IMAGES_PER_REQUEST": "32"}, 32, False),
    ],
    ids=["smaller", "capped", "off"],
)
def test_the_config_follows_other_settings(
    pipelines: Pipelines, env: dict[str, str], digit_batch: int, batching: bool
) -> None:
    settings = Settings.from_env(
        {**env, "RNNSERVE_MAX_CHAR_ROWS": "3", "RNNSERVE_MAX_QUEUE_WAIT_MS": "250"}
    )
    registry = pipelines.registry
    assert registry.char is not None
    for model in [*registry.digits.values(), registry.char]:
        config = model_config(model, settings, "cpu")
        is_digit = isinstance(model, DigitClassifier)
        assert config["max_batch_size"] == (digit_batch if is_digit else 0), model.name
        assert ("dynamic_batching" in config) is batching
        if batching:
            policy = config["dynamic_batching"]["default_queue_policy"]
            assert policy["default_timeout_microseconds"] == 250_000
        if not is_digit:
            assert config["parameters"]["max_request_rows"] == {"string_value": "3"}


def test_the_torchscript_backend_and_a_gpu_read_as_triton_names_them(pipelines: Pipelines) -> None:
    """TorchScript is Triton's `pytorch_libtorch` platform on the `pytorch` backend, in the
    metadata and the config alike, with the card's TorchScript file; a GPU is KIND_GPU."""
    model = dataclasses.replace(pipelines.registry.digits["mnist-rnn"], backend_name="torchscript")
    settings = Settings.from_env({"RNNSERVE_WORKERS": "2"})
    config = model_config(model, settings, "cuda")
    assert model_metadata(model)["platform"] == config["platform"] == "pytorch_libtorch"
    assert config["backend"] == "pytorch"
    assert config["default_model_filename"] == model.card.data["files"]["torchscript"]["path"]
    group = config["instance_group"][0]
    assert (group["kind"], group["count"], group["gpus"]) == ("KIND_GPU", 2, [0])


def test_unknown_model_or_version_is_a_v2_404(
    app_client: TestClient, served: dict[str, str]
) -> None:
    for path, message in (
        ("/v2/models/nope/config", "unknown model 'nope'"),
        ("/v2/models/nope/versions/1/config", "unknown model 'nope'"),
        ("/v2/models/mnist-rnn/versions/999/config", "has no version '999'"),
    ):
        r = app_client.get(path)
        assert r.status_code == 404, path
        assert set(r.json()) == {"error"} and message in r.json()["error"], r.text


def test_before_the_models_are_loaded_the_config_is_a_503() -> None:
    """The route needs the loaded models (device, backend): until then it says retry, as the
    other model routes do, and still names its methods on a 405."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # starlette suggests httpx2 for its TestClient
        from starlette.testclient import TestClient

    client = TestClient(v2_app(ServingState()))
    r = client.get("/models/mnist-rnn/config")
    assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
    assert set(r.json()) == {"error"} and "not ready" in r.json()["error"]
    assert client.post("/models/mnist-rnn/config").headers["allow"] == "GET, HEAD"


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("POST", "/v2/models/mnist-rnn/config", "GET, HEAD"),
        ("DELETE", "/v2/models/char-rnn/versions/1/config", "GET, HEAD"),
        ("GET", "/v2/models/mnist-rnn/infer", "POST"),
        ("PUT", "/v2/models/mnist-rnn/versions/1/infer", "POST"),
        ("POST", "/v2/models/mnist-rnn", "GET, HEAD"),
        ("POST", "/v2/models/mnist-rnn/ready", "GET, HEAD"),
        ("POST", "/v2/health/ready", "GET, HEAD"),
        ("POST", "/v2", "GET, HEAD"),
    ],
)
def test_a_405_names_the_allowed_methods(
    app_client: TestClient, method: str, path: str, allow: str
) -> None:
    """RFC 9110 (15.5.6): a 405 carries `Allow`; the body stays the protocol's shape."""
    r = app_client.request(method, path)
    assert r.status_code == 405, r.text
    assert r.headers["allow"] == allow
    assert r.json() == {"error": "Method Not Allowed"}


@pytest.mark.slow
def test_tritonclient_reads_every_config(default_server: Server, served: dict[str, str]) -> None:
    """Triton's own HTTP client, against a real server: get_model_config answers the same
    configuration as the in-process service, with and without the version."""
    import tritonclient.http as triton

    client = triton.InferenceServerClient(
        default_server.url.removeprefix("http://"), network_timeout=60
    )
    try:
        for name, version in served.items():
            config = client.get_model_config(name)
            assert config == client.get_model_config(name, model_version=version)
            meta = client.get_model_metadata(name)
            assert [i["name"] for i in config["input"]] == [i["name"] for i in meta["inputs"]]
            expected = 0 if name == "char-rnn" else DEFAULTS.max_batch_size
            assert config["max_batch_size"] == expected
    finally:
        client.close()
