"""Settings, device policy, error shapes and the model registry, without HTTP."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.http.middleware import normalize_error
from service.model.cards import CardError
from service.model.inference import ModelRegistry, preflight
from service.model.runtime import DeviceError, choose_device, cuda_device_count, load_backend
from service.settings import Settings, SettingsError
from tests.conftest import ROOT


def test_settings_from_env_and_errors() -> None:
    s = Settings.from_env({"RNNSERVE_BACKEND": "TorchScript", "RNNSERVE_MAX_BATCH_SIZE": "64"})
    assert s.backend == "torchscript" and s.max_batch_size == 64
    spaced = Settings.from_env({"RNNSERVE_BATCHING": " OFF ", "RNNSERVE_TRACING": "1"})
    assert spaced.batching is False and spaced.tracing is True
    home = Settings.from_env({"RNNSERVE_MODEL_DIR": "~/models"}).model_dir
    assert home == Path.home() / "models"
    with pytest.raises(SettingsError, match=r"RNNSERVE_BATCHING='yes': expected on/off"):
        Settings.from_env({"RNNSERVE_BATCHING": "yes"})  # the docs' six spellings only
    assert Settings.from_env({}).model_dir == ROOT / "models"
    with pytest.raises(SettingsError, match="RNNSERVE_WORKERS='two'"):
        Settings.from_env({"RNNSERVE_WORKERS": "two"})
    with pytest.raises(SettingsError, match="RNNSERVE_DEVICE='tpu'"):
        Settings.from_env({"RNNSERVE_DEVICE": "tpu"})
    with pytest.raises(
        SettingsError, match=r"RNNSERVE_MAX_TEXT_CHARS='0': .*greater than or equal to 1"
    ):
        Settings.from_env({"RNNSERVE_MAX_TEXT_CHARS": "0"})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RNNSERVE_API_TOKENS": " , "}, "holds no token"),
        ({"RNNSERVE_API_TOKENS": "t", "RNNSERVE_AUTH_EXEMPT": "*"}, "would exempt every route"),
        ({"RNNSERVE_API_TOKENS": "t", "RNNSERVE_AUTH_EXEMPT": "/*"}, "would exempt every route"),
        ({"RNNSERVE_API_TOKENS": "t", "RNNSERVE_AUTH_EXEMPT": "livez"}, "start with '/'"),
        ({"RNNSERVE_API_TOKENS": "t", "RNNSERVE_AUTH_EXEMPT": "/class*"}, "/classify_pixels"),
        ({"RNNSERVE_API_TOKENS": "t", "RNNSERVE_AUTH_EXEMPT": "/v2/*"}, "/v2/models/"),
        ({"RNNSERVE_API_TOKENS": "t", "RNNSERVE_AUTH_EXEMPT": "/generate"}, "/generate"),
    ],
)
def test_authentication_fails_closed(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


def test_exempting_probes_and_metadata_is_allowed() -> None:
    s = Settings.from_env(
        {"RNNSERVE_API_TOKENS": "a, b", "RNNSERVE_AUTH_EXEMPT": "/livez,/v1/metadata"}
    )
    assert s.tokens == ("a", "b") and s.exempt_paths == ("/livez", "/v1/metadata")


def test_device_policy() -> None:
    assert choose_device("auto", gpu_count=0).device == "cpu"
    assert choose_device("auto", gpu_count=2).device == "cuda"
    assert choose_device("cpu", gpu_count=2).device == "cpu"
    assert choose_device("cuda", gpu_count=1).device == "cuda"
    with pytest.raises(DeviceError, match="requires a GPU"):
        choose_device("cuda", gpu_count=0)


def gpus_the_driver_lists() -> int:
    """An independent witness of the GPUs here: nvidia-smi's list, else the kernel driver's
    /proc entries (neither exists on a machine without an NVIDIA driver: 0)."""
    if shutil.which("nvidia-smi"):
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
        return sum(line.startswith("GPU ") for line in listed.stdout.splitlines())
    proc = Path("/proc/driver/nvidia/gpus")
    return len(list(proc.iterdir())) if proc.is_dir() else 0


def test_gpu_detection_agrees_with_the_driver_and_auto_follows_it() -> None:
    """The real detection path (libcuda's cuDeviceGetCount), not a mock, checked against
    what the driver lists; on this 2-core machine both say none and auto serves from the CPU,
    saying why."""
    listed = gpus_the_driver_lists()
    assert cuda_device_count() == listed
    choice = choose_device("auto")
    if listed:
        assert choice.device == "cuda" and f"{listed} GPU" in choice.reason
    else:
        assert choice.device == "cpu" and "no usable GPU" in choice.reason


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
    registry = ModelRegistry.load(Settings.from_env({"RNNSERVE_DEVICE": "cpu"}))
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


def test_photos_and_pixel_arrays_each_have_their_own_confidence_threshold() -> None:
    """A card's calibration holds a threshold for photos (rendered photos) and one for pixel
    arrays (MNIST validation digits); pixel answers fall back to the photo threshold on a
    card calibrated before the pixel one existed. The pipeline's answers use their source's."""
    from service.engine.pipeline import Classified

    registry = ModelRegistry.load(Settings.from_env({"RNNSERVE_DEVICE": "cpu"}))
    model = registry.digit_model("bigru")
    calibration = model.card.data["calibration"]
    assert 0 < calibration["pixel_confidence_threshold"] <= 1
    probs = np.full((2, 10), 0.0, np.float32)
    probs[:, 3] = [0.5, 0.95]
    probs[:, 4] = 1 - probs[:, 3]
    saved = dict(calibration)
    try:
        calibration.update(confidence_threshold=0.9, pixel_confidence_threshold=0.4)
        assert model.confident(probs, photo=True).tolist() == [False, True]
        assert model.confident(probs, photo=False).tolist() == [True, True]
        typical = np.ones(2, dtype=bool)
        assert Classified(model, probs, typical).confident.tolist() == [True, True]
        photo_answer = Classified(model, probs, typical, photo=True)
        assert photo_answer.confident.tolist() == [False, True]
        del calibration["pixel_confidence_threshold"]  # an older card
        assert model.confident(probs, photo=False).tolist() == [False, True]
    finally:
        calibration.clear()
        calibration.update(saved)


# ---------------------------------------------------------------------------- OpenAPI document


def test_openapi30_spells_nullable_and_exclusive_bounds_the_30_way() -> None:
    from service.http.openapi import openapi30

    node = {
        "properties": {
            "seed": {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "null"}], "title": "S"},
            "t": {"type": "number", "exclusiveMinimum": 0.0, "maximum": 5},
            "flag": {"type": "boolean", "exclusiveMinimum": True},
        }
    }
    out = openapi30(node)["properties"]
    assert out["seed"] == {"type": "integer", "minimum": 0, "title": "S", "nullable": True}
    assert out["t"] == {"type": "number", "minimum": 0.0, "exclusiveMinimum": True, "maximum": 5}
    assert out["flag"]["exclusiveMinimum"] is True  # already 3.0 style: untouched


def test_document_errors_replaces_bentoml_error_schemas_on_every_api() -> None:
    from service.http.openapi import document_errors

    spec: dict[str, Any] = {
        "components": {"schemas": {"InvalidArgument": {}, "x__Input": {"required": ["a"]}}},
        "paths": {
            "/x": {
                "post": {
                    "x-bentoml-name": "x",
                    "responses": {200: {"description": "ok"}, 400: {}, 404: {}, 500: {}},
                    "requestBody": {
                        "content": {
                            "application/json": {
                                "schema": {"required": ["a"], "properties": {"a": {}}}
                            }
                        }
                    },
                }
            },
            "/livez": {"get": {"responses": {"200": {}}}},
        },
    }
    out = document_errors(spec, {"/v1/m": {"get": {}}})
    assert "InvalidArgument" not in out["components"]["schemas"]
    responses = out["paths"]["/x"]["post"]["responses"]
    assert set(responses) == {"200", "400", "401", "413", "422", "500", "503"}
    body = out["paths"]["/x"]["post"]["requestBody"]
    assert body["required"] is True
    assert body["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/XRequest"  # BentoML's x__Input, renamed
    }
    livez = out["paths"]["/livez"]["get"]["responses"]  # the JSON body HealthBodyMiddleware makes
    assert livez["200"]["content"]["application/json"]["schema"]["required"] == ["live"]
    assert set(livez) == {"200", "503"}
    assert "/v1/m" in out["paths"]
    assert 400 in spec["paths"]["/x"]["post"]["responses"]  # the input is not modified


def test_vocabulary_pattern_accepts_exactly_the_vocabulary() -> None:
    import re

    from service.http.schemas import vocabulary_pattern

    pattern = re.compile(vocabulary_pattern(["a", "-", "]", "\\", "^", "\n", " "]))
    assert pattern.fullmatch("a-]\\^\n a")
    assert pattern.fullmatch("")  # the length limit is minLength's job
    for outsider in ("b", "[", "\t", "é", "A"):
        assert not pattern.fullmatch(f"a{outsider}"), outsider


def test_softmax_survives_a_tiny_temperature() -> None:
    from service.model.numerics import softmax

    probs = softmax(np.array([1.0, 3.0, 2.0], dtype=np.float32), 1e-300)
    assert np.isfinite(probs).all() and probs.tolist() == [0.0, 1.0, 0.0]


def test_docs_document_every_setting() -> None:
    """docs/configuration.md's settings table has one row per setting, with its meaning from
    SETTINGS_DOC."""

    from service.settings import PREFIX, SETTINGS_DOC

    page = (ROOT / "docs" / "configuration.md").read_text()
    rows = {
        line.split("|")[1].strip(" `"): line.split("|")[3].strip()
        for line in page.splitlines()
        if line.startswith(f"| `{PREFIX}")
    }
    names = {f"{PREFIX}{name.upper()}": name for name in Settings.model_fields}
    assert set(rows) == set(names)
    assert set(SETTINGS_DOC) == set(names.values())
    for variable, name in names.items():
        assert rows[variable] == SETTINGS_DOC[name], variable


def test_a_model_file_changed_after_the_check_is_refused_at_load(tmp_path: Path) -> None:
    """No check-then-reopen: the backend loads the bytes it hashed, so a file swapped between
    the start-up check and the load (a time-of-check/time-of-use race) is refused."""
    models = tmp_path / "models"
    shutil.copytree(ROOT / "models" / "mnist-rnn", models / "mnist-rnn")
    settings_env = {"RNNSERVE_MODEL_DIR": str(models), "RNNSERVE_DEVICE": "cpu"}
    settings = Settings.from_env({**settings_env, "RNNSERVE_DEFAULT_DIGIT_MODEL": "mnist-rnn"})
    checked = preflight(settings)  # every file verified
    onnx_file = models / "mnist-rnn" / "1" / "model.onnx"
    blob = bytearray(onnx_file.read_bytes())
    blob[-1] ^= 0xFF
    onnx_file.write_bytes(bytes(blob))
    with pytest.raises(CardError, match="sha256"):
        load_backend(checked[0][0], settings, checked[1])


def test_settings_from_given_values_ignore_the_process_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """from_env(mapping) is what tests and scripts use to say exactly what they want: a
    variable in the process must not leak in (pydantic-settings reads os.environ by default)."""
    monkeypatch.setenv("RNNSERVE_MAX_TOP_K", "4")
    assert Settings.from_env({}).max_top_k == Settings.model_fields["max_top_k"].default
    assert Settings.from_env({"RNNSERVE_MAX_TOP_K": "7"}).max_top_k == 7
    assert Settings.from_env().max_top_k == 4  # the process's own settings: its environment
