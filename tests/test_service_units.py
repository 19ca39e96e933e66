"""Settings, device policy, error shapes and the model registry, without HTTP."""

from __future__ import annotations

import json

import numpy as np
import pytest

from service.inference import ModelRegistry
from service.middleware import normalize_error
from service.runtime import DeviceError, choose_device, cuda_device_count
from service.settings import Settings, SettingsError
from tests.conftest import ROOT


def test_settings_from_env_and_errors() -> None:
    s = Settings.from_env({"RNNSERVE_BACKEND": "TorchScript", "RNNSERVE_MAX_BATCH_SIZE": "64"})
    assert s.backend == "torchscript" and s.max_batch_size == 64
    assert Settings.from_env({}).model_dir == ROOT / "models"
    with pytest.raises(SettingsError, match="RNNSERVE_WORKERS='two'"):
        Settings.from_env({"RNNSERVE_WORKERS": "two"})
    with pytest.raises(SettingsError, match="RNNSERVE_DEVICE='tpu'"):
        Settings.from_env({"RNNSERVE_DEVICE": "tpu"})
    with pytest.raises(SettingsError, match="must be positive"):
        Settings.from_env({"RNNSERVE_MAX_TEXT_CHARS": "0"})


def test_device_policy() -> None:
    assert choose_device("auto", gpu_count=0).device == "cpu"
    assert choose_device("auto", gpu_count=2).device == "cuda"
    assert choose_device("cpu", gpu_count=2).device == "cpu"
    assert choose_device("cuda", gpu_count=1).device == "cuda"
    with pytest.raises(DeviceError, match="requires a GPU"):
        choose_device("cuda", gpu_count=0)


def test_this_machine_has_no_gpu_and_auto_falls_back_to_cpu() -> None:
    """The real detection path (libcuda), not a mock: on a GPU machine it reports the GPU."""
    count = cuda_device_count()
    assert choose_device("auto").device == ("cuda" if count else "cpu")


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (400, b'[{"error": "bad thing"}]', "bad thing"),
        (404, b"Not Found", "Not Found"),
        (405, b"", "Method Not Allowed"),
        (422, b'{"detail": "nope"}', "nope"),
        (
            400,
            json.dumps(
                {
                    "error": "1 validation error",
                    "detail": [{"loc": ["images", 0, "pixels"], "msg": "Value error, too short"}],
                }
            ).encode(),
            "invalid input: images.0.pixels: too short",
        ),
        (503, b'{"something": 1}', "Service Unavailable"),
    ],
)
def test_error_bodies_are_normalized(status: int, body: bytes, message: str) -> None:
    out = json.loads(normalize_error(status, body))
    assert set(out) == {"error", "detail"} and out["error"] == message


def test_registry_on_committed_models() -> None:
    registry = ModelRegistry.load(Settings(device="cpu"))
    assert registry.digit_model("rnn").name == "mnist-rnn"
    assert registry.digit_model(None).name == registry.settings.default_digit_model
    char = registry.char_model()
    a = char.generate("ROMEO:", 30, 0.8, 5, seed=3)
    assert a == char.generate("ROMEO:", 30, 0.8, 5, seed=3) and len(a) == 30
    # step-by-step generation == re-reading the whole prefix (greedy), so the carried state
    # is right
    text = "ROMEO:"
    greedy = char.generate(text, 10, 0.0, None, seed=0)
    slow = text
    for _ in range(10):
        slow += char.next_chars(slow, 1, 1.0)[0][0]
    assert slow[len(text) :] == greedy
    probs = registry.digit_model("birnn").predict(np.zeros((3, 28, 28), np.float32))
    assert probs.shape == (3, 10) and np.allclose(probs.sum(1), 1, atol=1e-5)
