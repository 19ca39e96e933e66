"""Export of freshly trained tiny models: parity, dynamic axes, self-contained files, cards."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from service.model.cards import CardError, load_card
from training import export, train
from training.nets import SequenceClassifier
from training.retrace import baked_devices, retrace

pytestmark = pytest.mark.slow  # each case trains and exports a tiny model first (~13 s in all)

CASES = {
    # name: (train args, exporter)
    "mnist-rnn": (["mnist", "--cell", "rnn"], "auto"),
    "mnist-bilstm": (["mnist", "--cell", "lstm", "--bidirectional"], "auto"),
    "mnist-gru": (["mnist", "--cell", "gru", "--layers", "1"], "legacy"),
    "char-lstm": (["charlm", "--cell", "lstm"], "auto"),
    "char-gru": (["charlm", "--cell", "gru"], "legacy"),
    "char-rnn": (["charlm", "--cell", "rnn", "--layers", "3"], "legacy"),
}


@pytest.fixture(scope="module")
def exported(
    tmp_path_factory: pytest.TempPathFactory, mnist_root: Path, corpus_path: Path
) -> dict[str, tuple[Path, dict]]:
    """Train each case for a few batches and export it once for the whole module."""
    base = tmp_path_factory.mktemp("export")
    results: dict[str, tuple[Path, dict]] = {}
    for name, (args, exporter) in CASES.items():
        run_dir = base / "runs" / name
        data = (
            ["--data-dir", str(mnist_root)]
            if args[0] == "mnist"
            else ["--corpus", str(corpus_path), "--seq-len", "32", "--sample-len", "5"]
        )
        train.main(
            [*args, *data, "--hidden", "24", "--dry-run", "--no-progress", "--out", str(run_dir)]
        )
        folder = base / "models" / name
        card = export.export_run(run_dir, folder, exporter=exporter, data_dir=str(mnist_root))
        results[name] = (folder / str(card["version"]), card)
    return results


@pytest.mark.parametrize("name", list(CASES))
def test_export_writes_verified_files_with_parity(
    name: str, exported: dict[str, tuple[Path, dict]]
) -> None:
    out, card = exported[name]
    assert sorted(p.name for p in out.iterdir()) == ["card.json", "model.onnx", "model.ts"]
    loaded = load_card(out)
    assert loaded.name == name
    tol = card["export"]["tolerance"]
    for fmt in ("onnx", "torchscript"):
        parity = card["export"][fmt]["parity_vs_pytorch"]
        assert parity["max_abs_diff"] <= tol and parity["argmax_identical"]
    cases = card["export"]["onnx"]["parity_vs_pytorch"]["cases"]
    if card["task"] == "digit-classification":
        assert cases == ["batch 1", "batch 7", "batch 256"]
    else:
        for required in (
            "batch 256 x seq 17 logits",
            "batch 7 x seq 300 logits",
            "batch 7 x seq 1 logits",
            "step-by-step x 17 logits",
        ):
            assert required in cases


@pytest.mark.parametrize("name", list(CASES))
def test_exported_files_match_the_checkpoint_recomputed_here(
    name: str, exported: dict[str, tuple[Path, dict]]
) -> None:
    """Parity computed by this test from the run's checkpoint, not read from the card the
    exporter wrote: fresh inputs (other batch sizes and lengths than the exporter's), the
    PyTorch model against onnxruntime and TorchScript."""
    out, card = exported[name]
    model = train.model_from_checkpoint(
        train.load_checkpoint(out.parent.parent.parent / "runs" / name / "best.pt")
    )
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    scripted = torch.jit.load(str(out / "model.ts"))
    # a device baked into the trace made model.ts fail on CUDA (found on the first GPU run)
    assert baked_devices(scripted) == []
    rng = np.random.default_rng(123)
    tol = card["export"]["tolerance"]
    with torch.no_grad():
        if card["task"] == "digit-classification":
            for batch in (3, 64):
                x = rng.standard_normal((batch, 28, 28)).astype(np.float32)
                expected = model(torch.from_numpy(x)).numpy()
                (got,) = session.run(None, {"pixels": x})
                np.testing.assert_allclose(got, expected, atol=tol)
                np.testing.assert_allclose(
                    scripted(torch.from_numpy(x)).numpy(), expected, atol=tol
                )
            return
        state_spec = next(i for i in card["inputs"] if i["name"] == "state")
        rows, hidden = state_spec["shape"][0], state_spec["shape"][2]
        vocab = len(card["vocabulary"])
        for batch, length in ((2, 5), (5, 41)):
            ids = rng.integers(0, vocab, (batch, length), dtype=np.int64)
            state = rng.standard_normal((rows, batch, hidden)).astype(np.float32) * 0.1
            expected_logits, expected_state = model(torch.from_numpy(ids), torch.from_numpy(state))
            logits, new_state = session.run(None, {"ids": ids, "state": state})
            np.testing.assert_allclose(logits, expected_logits.numpy(), atol=tol)
            np.testing.assert_allclose(new_state, expected_state.numpy(), atol=tol)
            ts_logits, ts_state = scripted(torch.from_numpy(ids), torch.from_numpy(state))
            np.testing.assert_allclose(ts_logits.numpy(), expected_logits.numpy(), atol=tol)
            np.testing.assert_allclose(ts_state.numpy(), expected_state.numpy(), atol=tol)


@pytest.mark.parametrize("name", list(CASES))
def test_onnx_axes_are_dynamic_and_file_is_self_contained(
    name: str, exported: dict[str, tuple[Path, dict]]
) -> None:
    out, card = exported[name]
    proto = onnx.load(str(out / "model.onnx"))
    shapes = export.graph_io_shapes(proto)
    if card["task"] == "digit-classification":
        assert isinstance(shapes["pixels"][0], str) and shapes["pixels"][1:] == [28, 28]
        assert isinstance(shapes["logits"][0], str)
    else:
        assert all(isinstance(d, str) for d in shapes["ids"])
        assert isinstance(shapes["state"][1], str) and isinstance(shapes["logits"][1], str)
    assert list(out.glob("*.data")) == []
    assert all(i.data_location != onnx.TensorProto.EXTERNAL for i in proto.graph.initializer)


def test_auto_exporter_keeps_the_fastest_valid_candidate_and_writes_that_file(
    exported: dict[str, tuple[Path, dict]],
) -> None:
    for name in ("mnist-rnn", "mnist-bilstm", "char-lstm"):
        card = exported[name][1]
        onnx_info = card["export"]["onnx"]
        assert {c["exporter"] for c in onnx_info["candidates"]} == {"dynamo", "legacy"}
        chosen = next(c for c in onnx_info["candidates"] if c["exporter"] == onnx_info["exporter"])
        assert chosen["valid"] and chosen["latency_ms"]
        timing = "batch 256" if card["task"] == "digit-classification" else None
        key = timing or next(iter(chosen["latency_ms"]))
        valid = [c for c in onnx_info["candidates"] if c["valid"]]
        assert chosen["latency_ms"][key] == min(c["latency_ms"][key] for c in valid)
        # the file on disk is the chosen candidate's, byte for byte
        assert card["files"]["onnx"]["sha256"] == chosen["sha256"]
        assert all(c["sha256"] != chosen["sha256"] for c in valid if c is not chosen)
    # the dynamo exporter fixes the char model's sequence axis: it must be caught and rejected
    char = exported["char-lstm"][1]["export"]["onnx"]
    dynamo = next(c for c in char["candidates"] if c["exporter"] == "dynamo")
    if not dynamo["valid"]:
        assert "must be dynamic" in dynamo["error"]
    assert char["exporter"] == "legacy" or dynamo["valid"]


def test_char_onnx_generates_step_by_step_like_torchscript(
    exported: dict[str, tuple[Path, dict]],
) -> None:
    out, card = exported["char-lstm"]
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    scripted = torch.jit.load(str(out / "model.ts"))
    state_spec = next(i for i in card["inputs"] if i["name"] == "state")
    rows, hidden = state_spec["shape"][0], state_spec["shape"][2]
    ids = np.array([[3, 1, 4, 1, 5, 9, 2, 6]], dtype=np.int64)
    state = np.zeros((rows, 1, hidden), dtype=np.float32)
    ts_state = torch.zeros(rows, 1, hidden)
    for t in range(ids.shape[1]):
        logits, state = session.run(None, {"ids": ids[:, t : t + 1], "state": state})
        ts_logits, ts_state = scripted(torch.from_numpy(ids[:, t : t + 1]), ts_state)
        np.testing.assert_allclose(logits, ts_logits.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(state, ts_state.detach().numpy(), atol=1e-5)


def test_card_contract_fields(exported: dict[str, tuple[Path, dict]]) -> None:
    card = exported["mnist-bilstm"][1]
    assert card["architecture"]["bidirectional"] is True and card["architecture"]["cell"] == "lstm"
    assert card["inputs"][0]["shape"] == [-1, 28, 28]
    assert card["inputs"][0]["normalization"]["mean"] == pytest.approx(0.1307)
    assert card["outputs"][0]["labels"] == [str(i) for i in range(10)]
    assert card["training"]["dataset"] == "MNIST" and len(card["training"]["dataset_sha256"]) == 64
    for fmt in ("onnx", "torchscript"):
        entry = card["files"][fmt]
        assert entry["bytes"] == (exported["mnist-bilstm"][0] / entry["path"]).stat().st_size
    # what the digits it was trained on look like (training/input_check.py), from the data
    low, high = card["input_check"]["bounds"]["ink"]
    assert 0 < low < high < 1
    char = exported["char-gru"][1]
    assert "input_check" not in char
    assert len(char["vocabulary"]) == char["outputs"][0]["shape"][-1]
    assert char["metrics"]["val_bits_per_char"] > 0


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_one_changed_byte_fails_validation_naming_the_file(
    exported: dict[str, tuple[Path, dict]], tmp_path: Path
) -> None:
    model_dir = _copy(exported["mnist-rnn"][0], tmp_path / "m")
    target = model_dir / "model.onnx"
    blob = bytearray(target.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    target.write_bytes(bytes(blob))
    with pytest.raises(CardError, match=r"model\.onnx: sha256 .* does not match"):
        load_card(model_dir)


def test_missing_file_and_path_traversal_are_refused(
    exported: dict[str, tuple[Path, dict]], tmp_path: Path
) -> None:
    model_dir = _copy(exported["char-gru"][0], tmp_path / "c")
    (model_dir / "model.ts").unlink()
    with pytest.raises(CardError, match=r"torchscript file .*model\.ts is missing"):
        load_card(model_dir)
    card = json.loads((model_dir / "card.json").read_text())
    for evil in ("../c/model.onnx", "/etc/passwd", "sub/../../x"):
        card["files"] = {"onnx": {"path": evil, "bytes": 1, "sha256": "0" * 64}}
        (model_dir / "card.json").write_text(json.dumps(card))
        with pytest.raises(CardError, match="outside the model directory"):
            load_card(model_dir)
    (model_dir / "card.json").write_text("{not json")
    with pytest.raises(CardError, match="not valid JSON"):
        load_card(model_dir)


def test_export_fails_when_parity_is_impossible(
    exported: dict[str, tuple[Path, dict]], tmp_path: Path, mnist_root: Path
) -> None:
    run_dir = tmp_path / "run"
    train.main(
        [
            "mnist",
            "--data-dir",
            str(mnist_root),
            "--hidden",
            "8",
            "--dry-run",
            "--no-progress",
            "--out",
            str(run_dir),
        ]
    )
    with pytest.raises(export.ExportError, match="exceeds tolerance"):
        export.export_run(
            run_dir,
            tmp_path / "mnist-x",
            exporter="legacy",
            tolerance=0.0,
            data_dir=str(mnist_root),
        )


def test_retrace_rewrites_a_device_baked_torchscript_with_the_same_weights(
    exported: dict[str, tuple[Path, dict]], tmp_path: Path
) -> None:
    """The committed classifiers were traced by code that let the RNN make its zero state,
    which bakes the CPU into the file; `training.retrace` rewrites such a file from its own
    weights and fixes the card's checksum."""
    out, _ = exported["mnist-rnn"]
    model_dir = tmp_path / "mnist-rnn"
    shutil.copytree(out, model_dir)
    model = train.model_from_checkpoint(
        train.load_checkpoint(out.parent.parent.parent / "runs" / "mnist-rnn" / "best.pt")
    )
    assert isinstance(model, SequenceClassifier)
    rnn, fc = model.rnn, model.fc

    class OldStyle(torch.nn.Module):  # the classifier as it was traced before the fix
        def __init__(self) -> None:
            super().__init__()
            self.rnn, self.fc = rnn, fc

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            _, state = self.rnn(x)
            return self.fc(state[-1])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's own warnings about the RNN's checks
        old = torch.jit.trace(OldStyle().eval(), torch.zeros(2, 28, 28), check_trace=False)
    assert baked_devices(old)  # the defect, reproduced
    torch.jit.save(old, str(model_dir / "model.ts"))

    changed = retrace(model_dir)

    new = torch.jit.load(str(model_dir / "model.ts"))
    assert baked_devices(new) == [] and changed.max_abs_diff <= 1e-5
    card = load_card(model_dir)
    card.read_verified("torchscript")  # the card's checksum is the new file's
    x = torch.rand(5, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(new(x), model(x), rtol=0, atol=1e-5)
