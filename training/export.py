"""Export a training run to TorchScript and ONNX, prove parity, and write the model card.

    python -m training.export runs/mnist-birnn --out models/mnist-birnn

writes the next version of the model, `models/mnist-birnn/<N>/` (one above the newest there;
`--version N` chooses, and replaces that version). The folder is written under a hidden name
and renamed when complete, so a server watching the repository never sees half a version.

For each model the ONNX file is produced by the exporter that is both *correct* and *faster*:
with `--onnx-exporter auto` (the default) both torch exporters are tried; a candidate is
rejected when its graph fails `onnx.checker`, fixes an axis that must stay dynamic, or
disagrees with PyTorch; the fastest survivor in onnxruntime wins. The numbers behind the choice
go into the card. (On torch 2.14 the dynamo exporter unrolls nn.RNN into plain MatMul/Tanh,
which is about 3x faster for 28-step MNIST, but fixes the char model's sequence axis; the
legacy exporter emits native RNN/LSTM/GRU ops with every axis dynamic.)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from service.model.cards import CARD_FILE, SCHEMA_VERSION, describe_file, load_card, sha256_file
from service.model.examples import examples_section
from service.model.repository import load_version, next_version, valid_name
from training import data as D
from training.checkpoints import CheckpointError, load_checkpoint, model_from_checkpoint
from training.nets import CharLM, SequenceClassifier

ONNX_FILE = "model.onnx"
TORCHSCRIPT_FILE = "model.ts"
LEGACY_OPSET = 17
DYNAMO_OPSET = 18
CLASSIFIER_BATCHES = (1, 7, 256)
CHAR_BATCHES = (1, 7, 256)
CHAR_SEQ_LENS = (1, 17, 300)


class ExportError(RuntimeError):
    """An export that must not be used: wrong graph, fixed dynamic axis, or parity failure."""


# --------------------------------------------------------------------------- model-kind specs


@dataclass
class KindSpec:
    """What differs between the classifier and the char model during export."""

    example: tuple[torch.Tensor, ...]
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    dynamic_shapes: dict[str, dict[int, Any]]
    timing_feeds: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    # the timing case that picks among valid ONNX candidates: the load the service sees most
    choose_on: str = ""

    def __post_init__(self) -> None:
        if self.timing_feeds and self.choose_on not in self.timing_feeds:
            raise ValueError(f"choose_on {self.choose_on!r} is not a timing case")


def classifier_spec(model: SequenceClassifier) -> KindSpec:
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    rows = model.config.seq_len
    return KindSpec(
        example=(torch.zeros(2, rows, model.config.input_size),),
        input_names=["pixels"],
        output_names=["logits"],
        dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}},
        dynamic_shapes={"x": {0: batch}},
        timing_feeds={
            f"batch {b}": {
                "pixels": np.random.default_rng(b).standard_normal(
                    (b, rows, model.config.input_size), dtype=np.float32
                )
            }
            for b in (1, 256)
        },
        choose_on="batch 256",  # the batcher merges concurrent requests: throughput counts
    )


def charlm_spec(model: CharLM) -> KindSpec:
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    seq = torch.export.Dim("seq", min=1, max=1 << 16)
    cfg = model.config
    rng = np.random.default_rng(0)

    def feeds(b: int, t: int) -> dict[str, np.ndarray]:
        return {
            "ids": rng.integers(0, cfg.vocab_size, (b, t), dtype=np.int64),
            "state": np.zeros((cfg.state_rows, b, cfg.hidden_size), dtype=np.float32),
        }

    return KindSpec(
        example=(torch.zeros(2, 5, dtype=torch.long), model.initial_state(2)),
        input_names=["ids", "state"],
        output_names=["logits", "state_out"],
        dynamic_axes={
            "ids": {0: "batch", 1: "seq"},
            "state": {1: "batch"},
            "logits": {0: "batch", 1: "seq"},
            "state_out": {1: "batch"},
        },
        dynamic_shapes={"ids": {0: batch, 1: seq}, "state": {1: batch}},
        timing_feeds={"step batch 1": feeds(1, 1), "batch 8 x 128": feeds(8, 128)},
        choose_on="step batch 1",  # generation steps one character at a time
    )


# --------------------------------------------------------------------------- exporters


def export_torchscript(model: torch.nn.Module, spec: KindSpec, path: Path) -> None:
    """Trace (robust for these models: no data-dependent control flow) and save."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, spec.example, check_trace=False)
        torch.jit.save(traced, str(path))  # deprecated in favour of torch.export, still works


def export_onnx(model: torch.nn.Module, spec: KindSpec, path: Path, exporter: str) -> int:
    """Write one self-contained ONNX file with `exporter` ('legacy' or 'dynamo'); return opset."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "legacy":
            torch.onnx.export(
                model,
                spec.example,
                str(path),
                dynamo=False,
                input_names=spec.input_names,
                output_names=spec.output_names,
                dynamic_axes=spec.dynamic_axes,
                opset_version=LEGACY_OPSET,
            )
            opset = LEGACY_OPSET
        elif exporter == "dynamo":
            program = torch.onnx.export(
                model,
                spec.example,
                dynamo=True,
                input_names=spec.input_names,
                output_names=spec.output_names,
                dynamic_shapes=spec.dynamic_shapes,
                opset_version=DYNAMO_OPSET,
                verbose=False,
            )
            if program is None:
                raise ExportError("the dynamo exporter returned no program")
            program.save(str(path), external_data=False)
            opset = DYNAMO_OPSET
        else:
            raise ValueError(f"unknown exporter {exporter!r}")
    return opset


def tag_onnx(path: Path, name: str, version: str) -> None:
    """Stamp name/version into the file's metadata (the card's digest is taken after this)."""
    proto = onnx.load(str(path))
    proto.doc_string = f"rnnserve model {name} {version}"
    del proto.metadata_props[:]
    for key, value in (("rnnserve.name", name), ("rnnserve.version", version)):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def graph_io_shapes(proto: onnx.ModelProto) -> dict[str, list[int | str]]:
    """Input/output name -> dims, a string for a symbolic (dynamic) dim."""
    shapes: dict[str, list[int | str]] = {}
    for value in list(proto.graph.input) + list(proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_param if d.dim_param else d.dim_value for d in dims]
    return shapes


def check_onnx_graph(path: Path, spec: KindSpec) -> onnx.ModelProto:
    """Full onnx.checker pass, one self-contained file, and every requested axis dynamic."""
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(str(path), load_external_data=False)
    if any(init.data_location == onnx.TensorProto.EXTERNAL for init in proto.graph.initializer):
        raise ExportError(f"{path}: weights were written to external data files")
    shapes = graph_io_shapes(proto)
    names = [i.name for i in proto.graph.input]
    if names != spec.input_names:
        raise ExportError(f"{path}: inputs are {names}, expected {spec.input_names}")
    for tensor, axes in spec.dynamic_axes.items():
        dims = shapes.get(tensor)
        if dims is None:
            raise ExportError(f"{path}: graph has no tensor named {tensor!r}")
        for axis, label in axes.items():
            if not isinstance(dims[axis], str):
                raise ExportError(
                    f"{path}: axis {axis} ({label}) of {tensor!r} was fixed to {dims[axis]} "
                    "but must be dynamic"
                )
    return proto


def make_session(path: Path, threads: int = 1) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def time_session(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> float:
    """Median milliseconds per run after a warm-up, repeated for about half a second."""
    session.run(None, feeds)
    samples: list[float] = []
    deadline = time.perf_counter() + 0.5
    while len(samples) < 5 or (time.perf_counter() < deadline and len(samples) < 200):
        t0 = time.perf_counter()
        session.run(None, feeds)
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples)


# --------------------------------------------------------------------------- parity


@dataclass
class Parity:
    """Largest |difference| of logits over all checks, argmax agreement, and the cases run."""

    max_abs_diff: float = 0.0
    argmax_mismatches: int = 0
    near_ties: int = 0
    positions: int = 0
    cases: list[str] = field(default_factory=list)

    def add(self, name: str, reference: np.ndarray, candidate: np.ndarray, tol: float) -> None:
        if reference.shape != candidate.shape:
            raise ExportError(f"{name}: shape {candidate.shape}, expected {reference.shape}")
        diff = float(np.abs(reference - candidate).max())
        self.max_abs_diff = max(self.max_abs_diff, diff)
        ref = reference.reshape(-1, reference.shape[-1])
        cand = candidate.reshape(-1, candidate.shape[-1])
        top2 = np.sort(ref, axis=1)[:, -2:]
        decided = (top2[:, 1] - top2[:, 0]) > 2 * tol  # a gap the tolerance cannot flip
        mismatched = ref.argmax(1) != cand.argmax(1)
        self.argmax_mismatches += int((mismatched & decided).sum())
        self.near_ties += int((~decided).sum())
        self.positions += len(ref)
        self.cases.append(name)

    def check(self, what: str, tol: float) -> None:
        if not math.isfinite(self.max_abs_diff) or self.max_abs_diff > tol:
            raise ExportError(
                f"{what}: max |logit difference| {self.max_abs_diff:.3g} exceeds tolerance {tol}"
            )
        if self.argmax_mismatches:
            raise ExportError(
                f"{what}: argmax differs from PyTorch at {self.argmax_mismatches} positions"
            )

    def summary(self) -> dict[str, Any]:
        return {
            "max_abs_diff": self.max_abs_diff,
            "argmax_identical": self.argmax_mismatches == 0,
            "positions_compared": self.positions,
            "near_ties_skipped": self.near_ties,
            "cases": self.cases,
        }


Runner = Any  # callable(feeds: dict[str, np.ndarray]) -> list[np.ndarray]


def onnx_runner(session: ort.InferenceSession) -> Runner:
    return lambda feeds: session.run(None, feeds)


def torch_runner(module: torch.nn.Module) -> Runner:
    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            out = module(*(torch.from_numpy(v) for v in feeds.values()))
        outs = out if isinstance(out, tuple) else (out,)
        return [o.numpy() for o in outs]

    return run


def classifier_inputs(data_dir: str | None) -> np.ndarray:
    """256 real MNIST test digits (normalized) when the data is at hand, seeded noise if not."""
    try:
        images = D.load_mnist_split(D.resolve_data_dir(data_dir), train=False).images[:256]
        images = np.resize(images, (256, 28, 28))  # tiles when fewer are available
        return D.normalize_images(images).numpy()
    except D.DataError:
        pixels = np.random.default_rng(0).integers(0, 256, (256, 28, 28), dtype=np.uint8)
        return D.normalize_images(pixels).numpy()


def classifier_parity(
    reference: Runner, candidate: Runner, inputs: np.ndarray, tol: float
) -> Parity:
    parity = Parity()
    for batch in CLASSIFIER_BATCHES:
        feeds = {"pixels": np.ascontiguousarray(inputs[:batch])}
        parity.add(f"batch {batch}", reference(feeds)[0], candidate(feeds)[0], tol)
    return parity


def charlm_parity(reference: Runner, candidate: Runner, model: CharLM, tol: float) -> Parity:
    """Batches 1/7/256, lengths 1/17/300, a non-zero start state, and step-by-step decoding."""
    cfg = model.config
    rng = np.random.default_rng(0)
    parity = Parity()

    def feeds(batch: int, seq: int, warm: bool) -> dict[str, np.ndarray]:
        state = np.zeros((cfg.state_rows, batch, cfg.hidden_size), dtype=np.float32)
        if warm:
            state = (0.5 * rng.standard_normal(state.shape)).astype(np.float32)
        return {
            "ids": rng.integers(0, cfg.vocab_size, (batch, seq), dtype=np.int64),
            "state": state,
        }

    cases = [(b, 17, False) for b in CHAR_BATCHES]
    cases += [(7, t, False) for t in CHAR_SEQ_LENS] + [(7, 17, True)]
    for batch, seq, warm in cases:
        f = feeds(batch, seq, warm)
        ref, cand = reference(f), candidate(f)
        tag = f"batch {batch} x seq {seq}" + (" from a non-zero state" if warm else "")
        parity.add(tag + " logits", ref[0], cand[0], tol)
        parity.add(tag + " state", ref[1], cand[1], tol)
    # step by step with carried state through the candidate == the whole sequence in torch
    f = feeds(7, 17, False)
    whole = reference(f)
    state = f["state"]
    steps = []
    for t in range(17):
        logits, state = candidate({"ids": f["ids"][:, t : t + 1], "state": state})
        steps.append(logits)
    parity.add("step-by-step x 17 logits", whole[0], np.concatenate(steps, axis=1), tol)
    parity.add("step-by-step x 17 state", whole[1], state, tol)
    return parity


# --------------------------------------------------------------------------- card


def contracts(ckpt: dict[str, Any], model: torch.nn.Module) -> dict[str, Any]:
    """The inputs/outputs/preprocessing section of the card for this model kind."""
    if isinstance(model, SequenceClassifier):
        return classifier_contract(ckpt, model)
    assert isinstance(model, CharLM)
    return charlm_contract(ckpt, model)


def classifier_contract(ckpt: dict[str, Any], model: SequenceClassifier) -> dict[str, Any]:
    cfg = model.config
    norm = ckpt["normalization"]
    return {
        "task": "digit-classification",
        "inputs": [
            {
                "name": "pixels",
                "shape": [-1, cfg.seq_len, cfg.input_size],
                "dtype": "float32",
                "layout": "(batch, row, column): an image read top to bottom, one 28-pixel "
                "row per time step (batch_first)",
                "value_range": "raw pixels 0..255, white digit on black (MNIST convention), "
                "then normalized",
                "normalization": {
                    "scale": norm["scale"],
                    "mean": norm["mean"],
                    "std": norm["std"],
                    "formula": "x = (pixel * scale - mean) / std",
                },
            }
        ],
        "outputs": [
            {
                "name": "logits",
                "shape": [-1, cfg.num_classes],
                "dtype": "float32",
                "meaning": "unnormalized class scores; softmax over the last axis gives "
                "probabilities",
                "labels": [str(i) for i in range(cfg.num_classes)],
            }
        ],
    }


def charlm_contract(ckpt: dict[str, Any], model: CharLM) -> dict[str, Any]:
    cfg = model.config
    state_layout = (
        "h of every layer then c of every layer" if cfg.cell == "lstm" else "h of every layer"
    )
    return {
        "task": "next-character",
        "inputs": [
            {
                "name": "ids",
                "shape": [-1, -1],
                "dtype": "int64",
                "layout": "(batch, seq): character ids from the vocabulary",
            },
            {
                "name": "state",
                "shape": [cfg.state_rows, -1, cfg.hidden_size],
                "dtype": "float32",
                "layout": f"(state_rows, batch, hidden): {state_layout}",
                "initial": "zeros start a fresh sequence; feed state_out back to continue one",
            },
        ],
        "outputs": [
            {
                "name": "logits",
                "shape": [-1, -1, cfg.vocab_size],
                "dtype": "float32",
                "meaning": "next-character scores at every position; softmax(logits / "
                "temperature) over the last axis gives probabilities",
            },
            {
                "name": "state_out",
                "shape": [cfg.state_rows, -1, cfg.hidden_size],
                "dtype": "float32",
                "meaning": "the state after the last position",
            },
        ],
        "vocabulary": ckpt["vocab"],
        "unknown_characters": "not in the vocabulary: refused (the model never saw them)",
    }


def metrics_section(metrics: dict[str, Any]) -> dict[str, Any]:
    if metrics["kind"] == "mnist":
        return {
            "test_accuracy": metrics["test"]["accuracy"],
            "test_loss": metrics["test"]["loss"],
            "test_split": metrics["test"]["split"],
            "val_accuracy": metrics["val"]["accuracy"],
            "val_split": metrics["val"]["split"],
        }
    return {
        "val_loss_nats_per_char": metrics["val"]["loss_nats_per_char"],
        "val_bits_per_char": metrics["val"]["bits_per_char"],
        "val_split": metrics["val"]["split"],
        "sample": metrics.get("samples", [{}])[0],
    }


def training_section(metrics: dict[str, Any]) -> dict[str, Any]:
    hparams = metrics.get("hparams", {})
    return {
        "dataset": metrics["data"]["name"],
        "dataset_sha256": metrics["data"]["sha256"],
        "seed": metrics.get("seed"),
        "epochs_run": len(metrics["history"]),
        "best_epoch": metrics["best_epoch"],
        "max_epochs": hparams.get("epochs"),
        "git_commit": metrics.get("git_commit"),
        "wall_time_s": round(metrics["wall_time_s"], 1),
        "device": metrics.get("device"),
        "world_size": metrics.get("world_size", 1),
        "torch_version": metrics.get("torch_version"),
        "dry_run": metrics.get("dry_run", False),
        **({"started_from": metrics["started_from"]} if "started_from" in metrics else {}),
        "hyperparameters": {
            k: v
            for k, v in hparams.items()
            if k not in ("data_dir", "no_progress", "threads", "task", "corpus")
        },
    }


# --------------------------------------------------------------------------- main


@dataclass
class Candidate:
    exporter: str
    opset: int | None = None
    ok: bool = False
    error: str | None = None
    parity: dict[str, Any] | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)
    ops: list[str] = field(default_factory=list)
    sha256: str | None = None  # of the file this candidate wrote (None: none written)


def try_onnx_candidate(
    exporter: str,
    model: torch.nn.Module,
    spec: KindSpec,
    workdir: Path,
    reference: Runner,
    parity_fn: Any,
    tol: float,
    name: str,
    version: str,
) -> tuple[Candidate, Path]:
    path = workdir / f"{exporter}.onnx"
    cand = Candidate(exporter)
    try:
        cand.opset = export_onnx(model, spec, path, exporter)
        tag_onnx(path, name, version)
        proto = check_onnx_graph(path, spec)
        cand.ops = sorted({node.op_type for node in proto.graph.node})
        session = make_session(path)
        parity = parity_fn(reference, onnx_runner(session))
        parity.check(f"ONNX ({exporter})", tol)
        cand.parity = parity.summary()
        cand.latency_ms = {
            k: round(time_session(session, f), 3) for k, f in spec.timing_feeds.items()
        }
        cand.ok = True
    except Exception as exc:  # a rejected candidate is recorded, not fatal
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        # the temporary folder means nothing in a card: keep the file name only
        cand.error = f"{type(exc).__name__}: {first_line.replace(str(path), path.name)[:300]}"
    if path.exists():
        cand.sha256 = sha256_file(path)
    return cand, path


def example_feeds(model: torch.nn.Module, data_dir: str | None) -> dict[str, np.ndarray]:
    """The inputs recorded in the card's examples (service/model/examples.py): four real test
    digits for a classifier, two 16-character rows from a fresh state for the char model."""
    if isinstance(model, SequenceClassifier):
        return {"pixels": np.ascontiguousarray(classifier_inputs(data_dir)[:4])}
    assert isinstance(model, CharLM)
    cfg = model.config
    rng = np.random.default_rng(0)
    return {
        "ids": rng.integers(0, cfg.vocab_size, (2, 16), dtype=np.int64),
        "state": np.zeros((cfg.state_rows, 2, cfg.hidden_size), dtype=np.float32),
    }


def input_check_section(model: torch.nn.Module, data_dir: str | None) -> dict[str, Any]:
    """A classifier's `input_check` (what MNIST digits look like: training/input_check.py),
    when the MNIST data is at hand; nothing for the char model."""
    if not isinstance(model, SequenceClassifier):
        return {}
    from training.input_check import for_export

    section = for_export(data_dir)
    return {"input_check": section} if section is not None else {}


def record_examples(
    reference: Runner, feeds: dict[str, np.ndarray], output_names: list[str], tolerance: float
) -> dict[str, Any]:
    """The card's `examples`: `feeds` and what the PyTorch `reference` gives for them."""
    outputs = dict(zip(output_names, reference(feeds), strict=True))
    about = (
        "inputs recorded at export with PyTorch's outputs; the service runs them through every "
        "model it loads and refuses one that differs by more than the tolerance"
    )
    return examples_section([(feeds, outputs)], tolerance, about)


@contextlib.contextmanager
def no_partial_version(model_folder: Path) -> Iterator[None]:
    """A failed export leaves no version behind, not even a half-written one (its staging
    folder goes, and the model folder too when this export created it empty)."""
    try:
        yield
    except BaseException:
        for staging in model_folder.glob(".incoming-*"):
            shutil.rmtree(staging, ignore_errors=True)
        with contextlib.suppress(OSError):
            model_folder.rmdir()  # only when empty
        raise


def export_run(
    run_dir: Path,
    model_folder: Path,
    exporter: str = "auto",
    tolerance: float = 1e-4,
    version: int | None = None,
    name: str | None = None,
    data_dir: str | None = None,
) -> dict[str, Any]:
    """Export one run directory as a version of the model in `model_folder` (a folder of the
    repository) and return the card written: version `version`, or the next one."""
    with no_partial_version(model_folder):
        if not run_dir.is_dir():
            raise ExportError(
                f"{run_dir} is not a run directory: give the folder training.train wrote "
                "(it holds best.pt and metrics.json)"
            )
        ckpt = load_checkpoint(run_dir / "best.pt")
        metrics = json.loads((run_dir / "metrics.json").read_text())
        model = model_from_checkpoint(ckpt)
        name = name or model_folder.name
        if not valid_name(name) or name != model_folder.name:
            raise ExportError(
                f"{name!r}: a model's name is its repository folder's name "
                f"({model_folder.name!r}), letters, digits, . _ -"
            )
        version = version or next_version(model_folder)
        out_dir = model_folder / f".incoming-{version}"  # renamed to <version> when complete
        reference = torch_runner(model)
        spec: KindSpec
        if isinstance(model, SequenceClassifier):
            spec = classifier_spec(model)
            inputs = classifier_inputs(data_dir)

            def parity_fn(ref: Runner, cand: Runner) -> Parity:
                return classifier_parity(ref, cand, inputs, tolerance)
        else:
            assert isinstance(model, CharLM)
            spec = charlm_spec(model)
            char_model = model

            def parity_fn(ref: Runner, cand: Runner) -> Parity:
                return charlm_parity(ref, cand, char_model, tolerance)

        shutil.rmtree(out_dir, ignore_errors=True)
        out_dir.mkdir(parents=True)
        with tempfile.TemporaryDirectory(prefix="rnnserve-export-") as tmp:
            workdir = Path(tmp)
            # TorchScript
            ts_path = workdir / TORCHSCRIPT_FILE
            export_torchscript(model, spec, ts_path)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                scripted = torch.jit.load(str(ts_path))
            ts_parity = parity_fn(reference, torch_runner(scripted))
            ts_parity.check("TorchScript", tolerance)
            # ONNX candidates
            exporters = ("dynamo", "legacy") if exporter == "auto" else (exporter,)
            candidates = [
                try_onnx_candidate(
                    e, model, spec, workdir, reference, parity_fn, tolerance, name, str(version)
                )
                for e in exporters
            ]
            valid = [(c, p) for c, p in candidates if c.ok]
            if not valid:
                reasons = "; ".join(f"{c.exporter}: {c.error}" for c, _ in candidates)
                raise ExportError(f"no usable ONNX export for {run_dir}: {reasons}")
            timing_key = spec.choose_on
            chosen, chosen_path = min(valid, key=lambda cp: cp[0].latency_ms[timing_key])
            for stale in (out_dir / ONNX_FILE, out_dir / TORCHSCRIPT_FILE):
                stale.unlink(missing_ok=True)
            shutil.copyfile(chosen_path, out_dir / ONNX_FILE)
            shutil.copyfile(ts_path, out_dir / TORCHSCRIPT_FILE)

        contract = contracts(ckpt, model)
        card: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "name": name,
            "version": version,
            "task": contract.pop("task"),
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "architecture": {
                "class": type(model).__name__,
                **ckpt["config"],
                "parameters": sum(p.numel() for p in model.parameters()),
            },
            **contract,
            "metrics": metrics_section(metrics),
            "training": training_section(metrics),
            "export": {
                "tolerance": tolerance,
                "onnx": {
                    "exporter": chosen.exporter,
                    "opset": chosen.opset,
                    "ops": chosen.ops,
                    "parity_vs_pytorch": chosen.parity,
                    "chosen_by": f"fastest valid candidate at {timing_key} "
                    "(onnxruntime CPU, 1 thread, median ms)",
                    "candidates": [
                        {
                            "exporter": c.exporter,
                            "valid": c.ok,
                            "error": c.error,
                            "latency_ms": c.latency_ms,
                            "ops": c.ops,
                            "sha256": c.sha256,
                        }
                        for c, _ in candidates
                    ],
                },
                "torchscript": {
                    "method": "torch.jit.trace",
                    "parity_vs_pytorch": ts_parity.summary(),
                },
                "torch_version": torch.__version__,
                "onnx_version": onnx.__version__,
                "onnxruntime_version": ort.__version__,
            },
            **input_check_section(model, data_dir),
            "examples": record_examples(
                reference,
                example_feeds(model, data_dir),
                [o["name"] for o in contract["outputs"]],
                tolerance,
            ),
            "files": {
                "onnx": describe_file(out_dir, ONNX_FILE),
                "torchscript": describe_file(out_dir, TORCHSCRIPT_FILE),
            },
        }
        (out_dir / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
        load_card(out_dir)  # what we wrote must pass the same check the service applies
        final = model_folder / str(version)
        if final.exists():  # --version N given: that version is replaced
            shutil.rmtree(final)
        out_dir.rename(final)
        load_version(model_folder.parent, name, version)
        return card


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m training.export",
        description="Export a training run to TorchScript + ONNX with a parity-checked card.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("run_dir", type=Path, help="a run directory written by training.train")
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="the model's folder in the repository (models/<name>): a version folder is "
        "written inside it",
    )
    parser.add_argument(
        "--onnx-exporter",
        choices=("auto", "legacy", "dynamo"),
        default="auto",
        help="auto: try both, keep the fastest one that passes every check",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="max |logit difference| vs PyTorch (written in the card)",
    )
    parser.add_argument(
        "--version",
        type=int,
        help="version to write (replaces it if present; default: one above the newest)",
    )
    parser.add_argument("--name", help="model name (default: the output folder's name)")
    parser.add_argument("--data-dir", help="data root for real parity inputs (optional)")
    args = parser.parse_args(argv)
    try:
        card = export_run(
            args.run_dir,
            args.out,
            args.onnx_exporter,
            args.tolerance,
            args.version,
            args.name,
            args.data_dir,
        )
    except (ExportError, CheckpointError, FileNotFoundError) as exc:
        raise SystemExit(f"export failed: {exc}") from None
    onnx_info = card["export"]["onnx"]
    print(
        f"{card['name']}: ONNX via {onnx_info['exporter']} (opset {onnx_info['opset']}), "
        f"max |diff| ONNX {onnx_info['parity_vs_pytorch']['max_abs_diff']:.2e}, TorchScript "
        f"{card['export']['torchscript']['parity_vs_pytorch']['max_abs_diff']:.2e} "
        f"-> {args.out / str(card['version'])}",
        file=sys.stderr,
    )
    for cand in onnx_info["candidates"]:
        status = "ok" if cand["valid"] else f"rejected ({cand['error']})"
        print(f"  {cand['exporter']:7s} {status} {cand['latency_ms']}", file=sys.stderr)


if __name__ == "__main__":
    main()
