"""Model control in one worker, on a copy of the committed repository and real onnxruntime:
verified loads, refused loads that leave the last good version serving, the index, version
policies, and requests in flight across a swap (service/engine/lifecycle.py)."""

from __future__ import annotations

import asyncio
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from loadtest.bench_swap import KEEP, corrupt_byte, new_version
from service.engine.lifecycle import ModelControl
from service.engine.pipeline import Pipelines
from service.errors import LoadRefused, UnknownModel
from service.model.examples import decode_array, encode_array
from service.model.inference import ModelRegistry
from service.model.repository import VersionPolicy, next_version
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DIGITS = "mnist-rnn"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    for name in KEEP:
        shutil.copytree(ROOT / "models" / name / "1", root / name / "1")
    return root


def pipelines_for(repo: Path, **env: str) -> Pipelines:
    values = {"RNNSERVE_MODEL_DIR": str(repo), "RNNSERVE_DEVICE": "cpu"}
    values.update({f"RNNSERVE_{k.upper()}": v for k, v in env.items()})
    settings = Settings.from_env(values)
    return Pipelines(ModelRegistry.load(settings), settings)


def digit() -> np.ndarray:
    pixels = np.zeros((1, 28, 28), np.uint8)
    pixels[0, 6:22, 13:15] = 255
    return pixels


def classify(p: Pipelines, version: int | None = None) -> int:
    answer = asyncio.run(p.classify(digit(), DIGITS, version))
    return answer.model.version


def test_a_new_version_is_verified_then_serves_and_the_policy_unloads_the_old(
    repo: Path,
) -> None:
    p = pipelines_for(repo)
    control = ModelControl(p)
    assert classify(p) == 1
    new_version(repo, DIGITS, 2)
    assert asyncio.run(control.load(DIGITS)) == [2]
    assert classify(p) == 2
    with pytest.raises(UnknownModel, match="has no version 1 loaded; it serves \\[2\\]"):
        classify(p, 1)
    states = {(r["name"], r["version"]): r for r in control.index()}
    assert states[(DIGITS, "2")]["state"] == "READY"
    assert states[(DIGITS, "1")] == {
        "name": DIGITS,
        "version": "1",
        "state": "UNAVAILABLE",
        "reason": "unloaded",
    }
    # roll back: the previous version, by the policy that names it
    rollback = pipelines_for(repo, version_policy="specific:1")
    assert classify(rollback) == 1


def test_latest_two_serves_both_and_a_request_may_name_either(repo: Path) -> None:
    new_version(repo, DIGITS, 2)
    p = pipelines_for(repo, version_policy="latest:2")
    assert classify(p) == 2 and classify(p, 1) == 1 and classify(p, 2) == 2
    assert p.registry.version_list(DIGITS) == [2, 1]
    assert set(p.batchers) >= {f"{DIGITS}/1", f"{DIGITS}/2"}  # a queue per version


def wrong_example(card: dict[str, Any], folder: Path) -> None:
    """The recorded outputs no longer those of the files (as if the card belonged to other
    weights): checksums pass, the examples do not."""
    case = card["examples"]["cases"][0]["outputs"]
    logits = decode_array(case["logits"], "test")
    case["logits"] = encode_array(logits + np.float32(0.01))


def wrong_shape(card: dict[str, Any], folder: Path) -> None:
    card["inputs"][0]["shape"] = [-1, 28, 27]


def missing_file(card: dict[str, Any], folder: Path) -> None:
    (folder / "model.onnx").unlink()


def no_examples(card: dict[str, Any], folder: Path) -> None:
    card["examples"] = {"tolerance": 1e-4, "cases": []}


def unreadable_card(card: dict[str, Any], folder: Path) -> None:
    card.clear()


def garbage_with_a_matching_card(card: dict[str, Any], folder: Path) -> None:
    """A file that is not ONNX, with a card made to match it: the checksums pass, the runtime
    cannot read it."""
    import hashlib

    garbage = b"not an onnx model" * 100
    (folder / "model.onnx").write_bytes(garbage)
    entry = card["files"]["onnx"]
    entry["bytes"], entry["sha256"] = len(garbage), hashlib.sha256(garbage).hexdigest()


def nan_outputs(card: dict[str, Any], folder: Path) -> None:
    """Examples whose inputs make the model answer NaN (as a model with NaN weights would)."""
    case = card["examples"]["cases"][0]
    pixels = decode_array(case["inputs"]["pixels"], "test")
    case["inputs"]["pixels"] = encode_array(np.full_like(pixels, np.nan))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (corrupt_byte, "sha256 .* does not match the card"),
        (wrong_example, "differs from the recorded one by 0.01"),
        (wrong_shape, "has shape .* in the model, \\[-1, 28, 27\\] in the card"),
        (missing_file, "missing"),
        (no_examples, "examples hold no cases"),
        (unreadable_card, "missing keys"),
        (nan_outputs, "holds NaN or infinity"),
        (garbage_with_a_matching_card, "refused: .*(protobuf|INVALID|parse|Load model)"),
    ],
)
def test_a_refused_version_changes_nothing_that_serves(
    repo: Path, change: Any, reason: str
) -> None:
    p = pipelines_for(repo)
    control = ModelControl(p)
    served = p.registry.served
    new_version(repo, DIGITS, 2, change)
    with pytest.raises(LoadRefused, match=reason):
        asyncio.run(control.load(DIGITS))
    assert p.registry.served is served and classify(p) == 1  # the last good one answers
    row = next(r for r in control.index() if r["version"] == "2")
    assert row["state"] == "UNAVAILABLE" and row["reason"]


def test_requests_in_flight_finish_and_every_later_one_gets_the_new_version(
    repo: Path,
) -> None:
    p = pipelines_for(repo)
    control = ModelControl(p)
    new_version(repo, DIGITS, 2)

    async def scenario() -> tuple[list[int], list[int]]:
        before = [asyncio.create_task(p.classify(digit(), DIGITS)) for _ in range(64)]
        await asyncio.sleep(0)  # queued with version 1's batcher
        await control.load(DIGITS)
        after = await asyncio.gather(*(p.classify(digit(), DIGITS) for _ in range(64)))
        done = await asyncio.gather(*before)
        return [a.model.version for a in done], [a.model.version for a in after]

    before, after = asyncio.run(scenario())
    assert before == [1] * 64  # finished on the version they started on
    assert after == [2] * 64


def test_the_text_model_swaps_and_a_state_continues_on_its_own_version(repo: Path) -> None:
    new_version(repo, "char-rnn", 2)
    p = pipelines_for(repo, version_policy="latest:2")
    first = asyncio.run(p.next_chars("To be", 3, 1.0))
    assert first.model.version == 2
    old = asyncio.run(p.char_logits(np.array([[1, 2]]), None, version=1))
    state_v1 = old.carried[0]
    # a state of version 1 goes on on version 1 while it is served
    after = asyncio.run(p.next_chars("", 3, 1.0, state_v1))
    assert after.model.version == 1
    only_newest = pipelines_for(repo)
    with pytest.raises(Exception, match="belongs to char-rnn 1"):
        asyncio.run(only_newest.next_chars("", 3, 1.0, state_v1))


def test_unloading_the_default_classifier_is_refused(repo: Path) -> None:
    p = pipelines_for(repo)
    control = ModelControl(p)
    with pytest.raises(LoadRefused, match="RNNSERVE_DEFAULT_DIGIT_MODEL"):
        asyncio.run(control.unload("mnist-bigru"))
    asyncio.run(control.unload(DIGITS))
    with pytest.raises(UnknownModel):
        classify(p)
    assert asyncio.run(control.load(DIGITS)) == [1] and classify(p) == 1


def test_unknown_and_invalid_names_are_refused(repo: Path) -> None:
    control = ModelControl(pipelines_for(repo))
    for name in ("nope", "../etc", ""):
        with pytest.raises(UnknownModel):
            asyncio.run(control.load(name))


def test_poll_mode_follows_the_folder(repo: Path) -> None:
    p = pipelines_for(repo)
    control = ModelControl(p)
    asyncio.run(control.poll())
    assert classify(p) == 1  # nothing changed
    new_version(repo, DIGITS, 2)
    asyncio.run(control.poll())
    assert classify(p) == 2
    new_version(repo, DIGITS, 3, corrupt_byte)
    asyncio.run(control.poll())
    asyncio.run(control.poll())  # refused once, not tried again while unchanged
    assert classify(p) == 2
    shutil.rmtree(repo / DIGITS / "3")
    shutil.rmtree(repo / DIGITS / "2")
    asyncio.run(control.poll())
    assert classify(p) == 1


def test_version_policies_parse_and_select() -> None:
    assert VersionPolicy.parse("latest").select([1, 3, 2]) == [3]
    assert VersionPolicy.parse("latest:2").select([1, 3, 2]) == [3, 2]
    assert VersionPolicy.parse("all").select([1, 2]) == [2, 1]
    assert VersionPolicy.parse("specific:1,3").select([1, 2, 3]) == [3, 1]
    assert VersionPolicy.parse("latest:2").triton() == {"latest": {"num_versions": 2}}
    for bad in ("newest", "latest:0", "specific:", "all:2", "specific:a"):
        with pytest.raises(ValueError, match="not a version policy"):
            VersionPolicy.parse(bad)


def test_export_numbers_versions_after_the_newest(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    assert next_version(folder) == 1
    (folder / "1").mkdir(parents=True)
    (folder / "7").mkdir()
    (folder / ".incoming-8").mkdir()
    (folder / "notes").mkdir()
    assert next_version(folder) == 8


def test_a_loading_version_is_not_ready_and_the_old_one_answers_meanwhile(repo: Path) -> None:
    p = pipelines_for(repo)
    control = ModelControl(p)
    new_version(repo, DIGITS, 2)
    seen: list[tuple[str | None, int]] = []

    def during() -> None:
        state = control.version_state(DIGITS, 2)
        seen.append((state.state if state else None, p.registry.find(DIGITS).version))  # type: ignore[union-attr]

    control.on_change = during
    asyncio.run(control.load(DIGITS))
    assert seen[0] == ("LOADING", 1)  # loading: version 2 not ready, version 1 serves
    assert seen[-1] == ("READY", 2)


def test_a_load_may_bring_tritons_version_policy_and_nothing_else() -> None:
    from service.engine.control_plane import load_policy
    from service.errors import BadInput

    assert load_policy(None) is None
    assert load_policy('{"name": "m"}') is None
    rollback = load_policy('{"version_policy": {"specific": {"versions": [1]}}}')
    assert rollback == VersionPolicy("specific", versions=(1,))
    assert load_policy('{"version_policy": {"latest": {"num_versions": 2}}}') == VersionPolicy(
        "latest", count=2
    )
    assert load_policy('{"version_policy": {"all": {}}}') == VersionPolicy("all")
    for bad, says in (
        ('{"max_batch_size": 8}', "not supported"),
        ('{"version_policy": {"specific": {"versions": []}}}', "version_policy is"),
        ('{"version_policy": {"latest": {"num_versions": true}}}', "version_policy is"),
        ("not json", "not JSON"),
        ("[1]", "JSON object"),
    ):
        with pytest.raises(BadInput, match=says):
            load_policy(bad)


def test_a_generation_in_flight_finishes_on_its_version_across_a_swap(repo: Path) -> None:
    p = pipelines_for(repo)
    control = ModelControl(p)
    new_version(repo, "char-rnn", 2)

    async def scenario() -> tuple[int, str, int]:
        generation = p.generation("ROMEO:", 400, 0.8, None, 7, streaming=False)
        chunks = generation.chunks()
        first = await chunks.__anext__()
        await control.load("char-rnn")  # version 1 unloaded while it generates
        rest = "".join([c async for c in chunks])
        after = await p.next_chars("To", 1, 1.0)
        return generation.model.version, first + rest, after.model.version

    version, text, newest = asyncio.run(scenario())
    assert version == 1 and len(text) == 400 and newest == 2
    # the same seed on version 1 alone gives the same text: the swap did not disturb it
    alone = pipelines_for(repo, version_policy="specific:1")
    assert asyncio.run(alone.generate("ROMEO:", 400, 0.8, None, 7))[1] == text


def test_readiness_of_a_loading_or_refused_version_is_false_with_its_state(repo: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # starlette suggests httpx2 for its TestClient
        from starlette.testclient import TestClient

    from service.engine.control_plane import ControlPlane
    from service.engine.lifecycle import LOADING, VersionState
    from service.engine.pipeline import ServingState
    from service.http.v2_app import v2_app

    p = pipelines_for(repo, model_control="explicit")
    state = ServingState()
    state.pipelines, state.control = p, ControlPlane(p, None)
    client = TestClient(v2_app(state))
    assert client.get(f"/models/{DIGITS}/versions/1/ready").json() == {
        "name": DIGITS,
        "ready": True,
    }
    state.control.control.states[(DIGITS, 2)] = VersionState(LOADING)
    r = client.get(f"/models/{DIGITS}/versions/2/ready")
    assert r.status_code == 503 and r.json() == {"name": DIGITS, "ready": False, "state": LOADING}
    assert client.get(f"/models/{DIGITS}/versions/9/ready").status_code == 404  # unknown
    new_version(repo, DIGITS, 3, corrupt_byte)
    refused = client.post(f"/repository/models/{DIGITS}/load")
    assert refused.status_code == 400 and "sha256" in refused.json()["error"]
    r = client.get(f"/models/{DIGITS}/versions/3/ready")
    assert (
        r.status_code == 503
        and r.json()["state"] == "UNAVAILABLE"
        and "sha256" in r.json()["reason"]
    )
    assert client.post(f"/repository/models/{DIGITS}/load", content=b"[1]").status_code == 400
    unknown = client.post(f"/repository/models/{DIGITS}/load", json={"parameters": {"files": 1}})
    assert unknown.status_code == 400 and "not supported" in unknown.json()["error"]
