"""Every training and export CLI flag that tests/test_train.py and tests/test_export.py leave
untested has the effect its help text promises.

Each test would fail if its flag were silently ignored (parsed, then never used): effects are
read from what the run leaves behind (the checkpoint's config and weights, metrics.json, the
card, the ONNX file) or, where a flag leaves no trace there (batch sizes, sequence length), from
what the model was actually fed. Runs are tiny (a few batches of an 8-unit network on the
fixture data) and everything is written under tmp_path.

Covered elsewhere, so not repeated: --seed for MNIST (same seed, same weights), --augment,
--sample-len, a dry run of every --cell, and --onnx-exporter auto (tests/test_train.py,
tests/test_export.py). Here --tolerance is checked through the command line only.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from tests.conftest import ROOT
from training import data as D
from training import export, train
from training.nets import CharLM, ClassifierConfig, SequenceClassifier

StateDict = dict[str, torch.Tensor]
Calls = list[tuple[bool, tuple[int, ...]]]  # (model.training, input shape) per forward


pytestmark = pytest.mark.slow  # every test trains or exports a tiny model (~17 s in all)

# --------------------------------------------------------------------------- helpers


def mnist(out: Path | None, *extra: str, data_dir: Path | None = None) -> dict[str, Any]:
    """A tiny MNIST run (8 hidden units, CPU); later flags in `extra` override these."""
    argv = ["mnist", "--no-progress", "--hidden", "8", "--device", "cpu"]
    if data_dir is not None:
        argv += ["--data-dir", str(data_dir)]
    if out is not None:
        argv += ["--out", str(out)]
    return train.main([*argv, *extra])


def export_legacy(run: Path, out: Path, data_dir: Path, *extra: str) -> None:
    """`python -m training.export` with the legacy exporter alone and real parity digits."""
    flags = ["--out", str(out), "--onnx-exporter", "legacy", "--data-dir", str(data_dir)]
    export.main([str(run), *flags, *extra])


def charlm(out: Path, corpus: Path, *extra: str) -> dict[str, Any]:
    """A tiny char-model dry run; later flags in `extra` override these."""
    return train.main(
        [
            "charlm",
            "--corpus",
            str(corpus),
            "--out",
            str(out),
            "--no-progress",
            "--device",
            "cpu",
            "--dry-run",
            "--hidden",
            "16",
            "--seq-len",
            "24",
            "--sample-len",
            "7",
            *extra,
        ]
    )


def weights(run_dir: Path) -> StateDict:
    state: StateDict = train.load_checkpoint(run_dir / "best.pt")["state_dict"]
    return state


def seeded_init(seed: int, **config: Any) -> StateDict:
    """The weights a classifier starts from under `--seed seed` (before any step)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SequenceClassifier(ClassifierConfig(**config)).state_dict()


def max_change(a: StateDict, b: StateDict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def l2_norm(state: StateDict) -> float:
    return float(sum(float(v.double().pow(2).sum()) for v in state.values()) ** 0.5)


def spy_forward(monkeypatch: pytest.MonkeyPatch, cls: type[torch.nn.Module]) -> Calls:
    """Record (training?, input shape) of every forward call of `cls` models."""
    calls: Calls = []
    original: Callable[..., Any] = cls.forward

    def forward(self: torch.nn.Module, x: torch.Tensor, *rest: Any) -> Any:
        calls.append((self.training, tuple(x.shape)))
        return original(self, x, *rest)

    monkeypatch.setattr(cls, "forward", forward)
    return calls


def no_download(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Replace the MNIST download with a recorder: a download must never happen unasked."""
    attempts: list[Path] = []
    monkeypatch.setattr(D, "download_mnist", attempts.append)
    return attempts


# --------------------------------------------------------------------------- shared runs


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory, mnist_root: Path) -> Path:
    """The reference MNIST dry run the flag tests compare against: seed 0, lr 0.01, cosine
    schedule, clip 1, no weight decay, no dropout, 2 layers of 8 units."""
    out = tmp_path_factory.mktemp("base") / "run"
    mnist(out, "--dry-run", "--lr", "0.01", "--seed", "0", data_dir=mnist_root)
    return out


# the char runs' shared flags, each away from its default
CHAR_ARCHITECTURE = ("--cell", "gru", "--layers", "1", "--embed", "8", "--batch-size", "4")


@pytest.fixture(scope="module")
def char_run(
    tmp_path_factory: pytest.TempPathFactory, corpus_path: Path
) -> tuple[Path, dict[str, Any], Calls]:
    """A char-model dry run with every architecture flag away from its default, the corpus
    given by --corpus while --data-dir points at an empty folder; with its forward calls."""
    base = tmp_path_factory.mktemp("char")
    (base / "empty").mkdir()
    with pytest.MonkeyPatch.context() as mp:
        calls = spy_forward(mp, CharLM)
        metrics = charlm(
            base / "run",
            corpus_path,
            "--data-dir",
            str(base / "empty"),
            *CHAR_ARCHITECTURE,
            "--seed",
            "0",
        )
    return base / "run", metrics, calls


@pytest.fixture(scope="module")
def legacy_export(
    tmp_path_factory: pytest.TempPathFactory, base_run: Path, mnist_root: Path
) -> tuple[Path, dict[str, Any], list[np.ndarray]]:
    """`python -m training.export` of the base run with every flag set, and the inputs its
    parity check fed the models."""
    folder = tmp_path_factory.mktemp("exports") / "custom-name"
    inputs: list[np.ndarray] = []
    original = export.classifier_parity

    def parity(ref: Any, cand: Any, x: np.ndarray, tol: float) -> export.Parity:
        inputs.append(x)
        return original(ref, cand, x, tol)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(export, "classifier_parity", parity)
        export_legacy(
            base_run, folder, mnist_root, "--tolerance", "1e-3", "--version", "3", "--name",
            "custom-name",
        )  # fmt: skip
    out = folder / "3"
    return out, json.loads((out / "card.json").read_text()), inputs


# --------------------------------------------------------------------------- architecture


def test_architecture_flags_build_that_network_and_name_the_default_run_dir(
    mnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--cell/--layers/--hidden/--bidirectional/--dropout shape the saved weights, not only
    the recorded config; without --name/--out the run lands in runs/<derived name>."""
    monkeypatch.chdir(tmp_path)
    metrics = mnist(
        None,
        "--dry-run",
        "--cell",
        "gru",
        "--layers",
        "3",
        "--hidden",
        "12",
        "--bidirectional",
        "--dropout",
        "0.25",
        data_dir=mnist_root,
    )
    run_dir = tmp_path / "runs" / "mnist-bigru"
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["name"] == metrics["name"] == "mnist-bigru"
    ckpt = train.load_checkpoint(run_dir / "best.pt")
    assert ckpt["name"] == "mnist-bigru"
    assert ckpt["config"] == saved["config"]
    assert {k: ckpt["config"][k] for k in ("cell", "num_layers", "hidden_size")} == {
        "cell": "gru",
        "num_layers": 3,
        "hidden_size": 12,
    }
    sd = ckpt["state_dict"]
    assert sd["rnn.weight_hh_l0"].shape == (3 * 12, 12)  # three GRU gates of 12 units
    assert sd["rnn.weight_ih_l1"].shape == (3 * 12, 2 * 12)  # reads both directions
    assert "rnn.weight_hh_l2_reverse" in sd and "rnn.weight_hh_l3" not in sd
    assert sd["fc.weight"].shape == (10, 2 * 12)  # head on [forward, backward] final states
    assert saved["parameters"] == sum(v.numel() for v in sd.values())
    model = train.model_from_checkpoint(ckpt)
    assert isinstance(model.rnn, torch.nn.GRU) and model.rnn.dropout == 0.25


def test_dropout_changes_training(base_run: Path, mnist_root: Path, tmp_path: Path) -> None:
    """Same seed, same start: only dropout between the two layers can change the losses."""
    dropped = mnist(
        tmp_path,
        "--dry-run",
        "--lr",
        "0.01",
        "--seed",
        "0",
        "--dropout",
        "0.5",
        data_dir=mnist_root,
    )
    plain = json.loads((base_run / "metrics.json").read_text())
    assert dropped["config"]["dropout"] == 0.5 and plain["config"]["dropout"] == 0.0
    assert dropped["history"][0]["train_loss"] != plain["history"][0]["train_loss"]


# --------------------------------------------------------------------------- optimization


def test_lr_zero_leaves_the_seeded_initial_weights(
    base_run: Path, mnist_root: Path, tmp_path: Path
) -> None:
    mnist(tmp_path, "--dry-run", "--lr", "0", "--seed", "0", data_dir=mnist_root)
    start = seeded_init(0, hidden_size=8)
    assert max_change(weights(tmp_path), start) == 0.0
    assert max_change(weights(base_run), start) > 1e-3  # lr 0.01: three steps moved them


def test_lr_and_schedule_set_the_optimizer_learning_rate(
    base_run: Path, mnist_root: Path, tmp_path: Path
) -> None:
    """metrics.json records the optimizer's own rate after each epoch: --schedule none keeps
    the --lr peak; cosine (the base run) ends a run at 2% of its peak."""
    flat = mnist(tmp_path, "--dry-run", "--lr", "0.004", "--schedule", "none", data_dir=mnist_root)
    assert flat["history"][-1]["lr"] == pytest.approx(0.004)
    cosine = json.loads((base_run / "metrics.json").read_text())
    assert cosine["history"][-1]["lr"] == pytest.approx(0.02 * 0.01)


def test_weight_decay_shrinks_the_weights(base_run: Path, mnist_root: Path, tmp_path: Path) -> None:
    mnist(
        tmp_path,
        "--dry-run",
        "--lr",
        "0.01",
        "--seed",
        "0",
        "--weight-decay",
        "10",
        data_dir=mnist_root,
    )
    start = seeded_init(0, hidden_size=8)
    decayed, plain = l2_norm(weights(tmp_path)), l2_norm(weights(base_run))
    assert decayed < plain - 0.1 and decayed < l2_norm(start) - 0.1


def test_clip_bounds_the_gradient(base_run: Path, mnist_root: Path, tmp_path: Path) -> None:
    """A gradient clipped to norm 1e-12 is far below Adam's epsilon (1e-8): the weights barely
    move, where the base run's (clip 1) moved by about the learning rate per step."""
    mnist(
        tmp_path,
        "--dry-run",
        "--lr",
        "0.01",
        "--seed",
        "0",
        "--clip",
        "1e-12",
        data_dir=mnist_root,
    )
    start = seeded_init(0, hidden_size=8)
    assert max_change(weights(tmp_path), start) < 1e-5
    assert max_change(weights(base_run), start) > 1e-3


@pytest.mark.parametrize(
    ("patience", "epochs", "epochs_run", "stopped_early"),
    [(2, 5, 3, True), (0, 3, 3, False)],
    ids=["patience-2-stops", "patience-0-never-stops"],
)
def test_patience_and_epochs_decide_how_many_epochs_run(
    patience: int,
    epochs: int,
    epochs_run: int,
    stopped_early: bool,
    mnist_root: Path,
    tmp_path: Path,
) -> None:
    """With --lr 0 validation never improves after epoch 1, so --patience N stops after
    epoch N+1 (the default 5 would run all 5), and --patience 0 runs all --epochs."""
    mnist(
        tmp_path,
        "--lr",
        "0",
        "--epochs",
        str(epochs),
        "--patience",
        str(patience),
        "--batch-size",
        "540",
        "--hidden",
        "4",
        data_dir=mnist_root,
    )
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert len(saved["history"]) == epochs_run
    assert saved["stopped_early"] is stopped_early
    assert (
        saved["best_epoch"] == 1 and train.load_checkpoint(tmp_path / "best.pt")["best_epoch"] == 1
    )


@pytest.mark.parametrize("dry_run", [False, True], ids=["full-epoch", "dry-run"])
def test_batch_sizes_val_size_and_dry_run_set_what_the_model_sees(
    dry_run: bool, mnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """600 fixture digits, --val-size 100: 500 trained in batches of --batch-size, 100
    validated and 200 tested in batches of --eval-batch-size; --dry-run stops each pass
    after 3 batches."""
    calls = spy_forward(monkeypatch, SequenceClassifier)
    metrics = mnist(
        tmp_path,
        "--epochs",
        "1",
        "--batch-size",
        "100",
        "--eval-batch-size",
        "64",
        "--val-size",
        "100",
        *(["--dry-run"] if dry_run else []),
        data_dir=mnist_root,
    )
    assert (metrics["data"]["train"], metrics["data"]["val"]) == (500, 100)
    assert metrics["val"]["split"].startswith("100 images held out")
    trained = [shape[0] for training, shape in calls if training]
    evaluated = [shape[0] for training, shape in calls if not training]
    validation = [64, 36]
    if dry_run:
        assert trained == [100] * 3
        assert evaluated == [*validation, 64, 64, 64]  # test: its first 3 batches only
    else:
        assert trained == [100] * 5
        assert evaluated == [*validation, 64, 64, 64, 8]
    assert all(shape[1:] == (28, 28) for _, shape in calls)


# --------------------------------------------------------------------------- MNIST-only flags


@pytest.mark.parametrize("source", ["best.pt", "model.ts"])
def test_init_from_starts_from_those_weights(
    source: str,
    base_run: Path,
    legacy_export: tuple[Path, dict[str, Any], list[np.ndarray]],
    mnist_root: Path,
    tmp_path: Path,
) -> None:
    """--init-from a run's checkpoint or an exported TorchScript model: with --lr 0 the new
    run ends on exactly those weights (not its own seed's), and its metrics say so."""
    start = base_run / "best.pt" if source == "best.pt" else legacy_export[0] / "model.ts"
    metrics = mnist(
        tmp_path / "ft",
        "--dry-run",
        "--lr",
        "0",
        "--seed",
        "3",
        "--init-from",
        str(start),
        data_dir=mnist_root,
    )
    assert max_change(weights(tmp_path / "ft"), weights(base_run)) == 0.0
    started = json.loads((tmp_path / "ft" / "metrics.json").read_text())["started_from"]
    assert started == metrics["started_from"] and started["weights"] == str(start)
    base_metrics = json.loads((base_run / "metrics.json").read_text())
    assert started["test_accuracy"] == base_metrics["test"]["accuracy"]


def test_photos_add_rendered_digits_to_train_and_validation(
    mnist_root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "runs" / "p"
    metrics = mnist(
        out,
        "--dry-run",
        "--hidden",
        "4",
        "--val-size",
        "10",
        "--photos",
        "0.02",
        data_dir=mnist_root,
    )
    # 590 digits + ~2% of them as photos; 10 validation digits + all 10 as photos (a render
    # the service's own reading cannot recover is dropped, so "up to")
    assert 590 < metrics["data"]["train"] <= 590 + 12
    assert 10 < metrics["data"]["val"] <= 20
    assert "photo/scan renders" in metrics["val"]["split"]
    assert any((tmp_path / "runs" / "photo-cache").iterdir())  # cached next to the runs


# --------------------------------------------------------------------------- data location


def test_data_dir_env_var_is_used_and_the_flag_wins_over_it(
    mnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts = no_download(monkeypatch)
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv(D.DATA_DIR_ENV, str(mnist_root))
    metrics = mnist(tmp_path / "env", "--dry-run")
    saved = json.loads((tmp_path / "env" / "metrics.json").read_text())
    assert saved["data"]["root"] == str(mnist_root) and metrics["data"]["train"] == 540
    # the environment holds the data, the flag names an empty folder: the flag decides
    with pytest.raises(SystemExit) as err:
        mnist(tmp_path / "flag", "--dry-run", data_dir=empty)
    message = str(err.value)
    assert str(empty / "MNIST" / "raw" / "train-images-idx3-ubyte") in message
    assert "--download" in message
    # the environment alone names the empty folder
    monkeypatch.setenv(D.DATA_DIR_ENV, str(empty))
    with pytest.raises(SystemExit, match=r"MNIST file not found: .*empty/MNIST/raw"):
        mnist(tmp_path / "env-empty", "--dry-run")
    assert attempts == [] and list(empty.iterdir()) == []  # nothing fetched, nothing written


def test_download_flag_fetches_into_the_data_root_first(
    mnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fetched: list[Path] = []

    def fake_download(root: Path) -> None:  # what torchvision would leave there
        fetched.append(root)
        shutil.copytree(mnist_root / "MNIST", root / "MNIST")

    monkeypatch.setattr(D, "download_mnist", fake_download)
    root = tmp_path / "data"
    metrics = mnist(tmp_path / "run", "--dry-run", "--download", data_dir=root)
    assert fetched == [root]
    assert metrics["data"]["root"] == str(root) and metrics["data"]["test"] == 200


@pytest.mark.slow  # a fresh interpreter importing torch: ~3-5 s
def test_missing_data_on_the_real_command_line(tmp_path: Path) -> None:
    """The process exits non-zero with the one-paragraph message (no traceback), naming the
    missing file, and fetches nothing into the empty data root."""
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k != D.DATA_DIR_ENV}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.train",
            "mnist",
            "--dry-run",
            "--data-dir",
            str(empty),
            "--out",
            str(tmp_path / "run"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert f"error: MNIST file not found: {empty / 'MNIST' / 'raw'}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(empty.iterdir()) == []


def test_charlm_reads_the_default_corpus_under_data_dir(corpus_path: Path, tmp_path: Path) -> None:
    data_root = corpus_path.parent.parent  # <root>/text/tinyshakespeare.txt
    argv = ["charlm", "--dry-run", "--no-progress", "--hidden", "8", "--seq-len", "16"]
    metrics = train.main(
        [*argv, "--sample-len", "3", "--data-dir", str(data_root), "--out", str(tmp_path / "r")]
    )
    assert metrics["data"]["sha256"] == hashlib.sha256(corpus_path.read_bytes()).hexdigest()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit) as err:
        train.main([*argv, "--data-dir", str(empty), "--out", str(tmp_path / "e")])
    assert str(empty / "text" / "tinyshakespeare.txt") in str(err.value)
    assert "--corpus" in str(err.value)


# --------------------------------------------------------------------------- char model


def test_charlm_architecture_flags_build_that_network(
    char_run: tuple[Path, dict[str, Any], Calls],
) -> None:
    run_dir, metrics, _ = char_run
    ckpt = train.load_checkpoint(run_dir / "best.pt")
    vocab = len(ckpt["vocab"])
    assert ckpt["config"] == {
        "vocab_size": vocab,
        "embed_dim": 8,
        "hidden_size": 16,
        "num_layers": 1,
        "cell": "gru",
        "dropout": 0.0,
    }
    sd = ckpt["state_dict"]
    assert sd["embed.weight"].shape == (vocab, 8)
    assert sd["rnn.weight_ih_l0"].shape == (3 * 16, 8)  # GRU gates over the 8-dim embedding
    assert "rnn.weight_ih_l1" not in sd
    assert sd["head.weight"].shape == (vocab, 16)
    assert metrics["parameters"] == sum(v.numel() for v in sd.values())


def test_charlm_seq_len_and_batch_size_set_the_training_windows(
    char_run: tuple[Path, dict[str, Any], Calls],
) -> None:
    run_dir, metrics, calls = char_run
    assert [shape for training, shape in calls if training] == [(4, 24)] * 3  # dry run
    validation = [shape for training, shape in calls if not training and shape[0] > 1]
    assert validation and all(shape[1] == 24 for shape in validation)
    assert json.loads((run_dir / "metrics.json").read_text())["val"]["seq_len"] == 24
    assert all(len(s["text"]) == 7 for s in metrics["samples"])


def test_charlm_dropout_applies_even_with_one_layer(
    char_run: tuple[Path, dict[str, Any], Calls], corpus_path: Path, tmp_path: Path
) -> None:
    """The char model drops out around its embedding and head, whatever the layer count."""
    _, plain, _ = char_run
    dropped = charlm(tmp_path, corpus_path, *CHAR_ARCHITECTURE, "--seed", "0", "--dropout", "0.5")
    assert train.load_checkpoint(tmp_path / "best.pt")["config"]["dropout"] == 0.5
    assert dropped["history"][0]["train_loss"] != plain["history"][0]["train_loss"]


def test_charlm_seed_changes_training_and_samples(
    char_run: tuple[Path, dict[str, Any], Calls], corpus_path: Path, tmp_path: Path
) -> None:
    _, seed0, _ = char_run
    seed1 = charlm(tmp_path, corpus_path, *CHAR_ARCHITECTURE, "--seed", "1")
    assert seed1["seed"] == 1 and seed0["seed"] == 0
    assert seed1["history"][0]["train_loss"] != seed0["history"][0]["train_loss"]
    assert [s["text"] for s in seed1["samples"]] != [s["text"] for s in seed0["samples"]]


# --------------------------------------------------------------------------- run-level flags


@pytest.fixture
def restore_threads() -> Iterator[int]:
    """A thread count other than the current one; the current one is restored afterwards."""
    before = torch.get_num_threads()
    yield 2 if before == 1 else 1
    torch.set_num_threads(before)


def test_name_out_device_and_threads(
    mnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_threads: int
) -> None:
    """--out wins over runs/<name> (missing parents made); --name is what the checkpoint and
    metrics call the run; --device cpu trains there; --threads sets torch's CPU threads."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "deep" / "er" / "run"
    mnist(
        out,
        "--dry-run",
        "--name",
        "my-run",
        "--threads",
        str(restore_threads),
        data_dir=mnist_root,
    )
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["name"] == "my-run" and train.load_checkpoint(out / "best.pt")["name"] == "my-run"
    assert saved["checkpoint"] == str(out / "best.pt")
    assert saved["device"] == "cpu"
    assert not (tmp_path / "runs").exists()
    assert torch.get_num_threads() == restore_threads


def test_device_cuda(mnist_root: Path, tmp_path: Path) -> None:
    """--device cuda trains on the GPU where there is one, and is refused (before anything is
    written) where there is none, rather than quietly training on the CPU."""
    out = tmp_path / "run"
    if torch.cuda.is_available():
        metrics = mnist(out, "--dry-run", "--device", "cuda", data_dir=mnist_root)
        assert metrics["device"].startswith("cuda")
        return
    with pytest.raises(SystemExit, match="--device cuda was asked for, but no CUDA device"):
        mnist(out, "--dry-run", "--device", "cuda", data_dir=mnist_root)
    assert not out.exists()


def test_no_progress_silences_the_bars_on_a_terminal(
    mnist_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Bars are drawn only on a terminal (stderr made to look like one here), and not even
    there with --no-progress; the per-epoch summary lines stay either way."""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    argv = ["mnist", "--dry-run", "--hidden", "4", "--device", "cpu"]
    train.main([*argv, "--data-dir", str(mnist_root), "--out", str(tmp_path / "a")])
    with_bars = capsys.readouterr().err
    train.main(
        [*argv, "--data-dir", str(mnist_root), "--out", str(tmp_path / "b"), "--no-progress"]
    )
    without = capsys.readouterr().err
    assert "epochs:" in with_bars and "train 1:" in with_bars
    assert "epochs:" not in without and "train 1:" not in without
    assert "epoch   1  train_loss=" in without


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["mnist", "--cell", "transformer"], "invalid choice"),
        (["mnist", "--schedule", "step"], "invalid choice"),
        (["mnist", "--device", "tpu"], "invalid choice"),
        (["mnist", "--seq-len", "16"], "unrecognized arguments"),  # a char-model flag
        (["charlm", "--bidirectional"], "unrecognized arguments"),  # an MNIST flag
        (["charlm", "--augment"], "unrecognized arguments"),
        (["mnist", "--epochs", "two"], "invalid int value"),
    ],
)
def test_train_refuses_bad_or_misplaced_flags(
    argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as err:
        train.main(argv)
    assert err.value.code == 2 and complaint in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--layers", "1", "--dropout", "0.3"], "--dropout acts between recurrent layers"),
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--val-size", "600"], "--val-size 600: the training set has 600 images"),
        (["--photos", "1.5"], "--photos is a fraction"),
        (["--init-from", "no-such-run/best.pt"], "--init-from no-such-run/best.pt: no such file"),
        (["--hidden", "12", "--init-from", "BASE"], "its weights do not fit the architecture"),
        (["--init-from", "GARBAGE.ts"], "not a readable TorchScript model"),
    ],
    ids=[
        "dropout-one-layer",
        "no-epochs",
        "val-size",
        "photos",
        "init-missing",
        "init-shape",
        "init-garbage",
    ],
)
def test_unusable_settings_are_one_line_errors_naming_the_flag(
    flags: list[str], message: str, base_run: Path, mnist_root: Path, tmp_path: Path
) -> None:
    """Flags no run can use stop before any training with `error: ...` (the CLI prints it,
    exit 1), never a traceback and never a run that records a setting it did not apply (one
    layer with dropout did, until this was refused)."""
    (tmp_path / "GARBAGE.ts").write_bytes(b"not a TorchScript archive")
    swap = {"BASE": str(base_run / "best.pt"), "GARBAGE.ts": str(tmp_path / "GARBAGE.ts")}
    flags = [swap.get(f, f) for f in flags]
    with pytest.raises(SystemExit) as err:
        mnist(tmp_path / "run", "--dry-run", *flags, data_dir=mnist_root)
    assert str(err.value).startswith("error: ") and message in str(err.value), err.value


# --------------------------------------------------------------------------- export CLI


def test_export_flags_land_in_the_card_and_the_onnx_file(
    legacy_export: tuple[Path, dict[str, Any], list[np.ndarray]], mnist_root: Path
) -> None:
    """--onnx-exporter legacy alone is tried; --name/--version go into the card and the
    ONNX metadata; --tolerance is the card's; --out holds exactly the three files; the
    training flags appear as the card's architecture and hyperparameters."""
    out, card, _ = legacy_export
    assert sorted(p.name for p in out.iterdir()) == ["card.json", "model.onnx", "model.ts"]
    assert (card["name"], card["version"]) == ("custom-name", 3)
    assert card["export"]["tolerance"] == 1e-3
    onnx_info = card["export"]["onnx"]
    assert [c["exporter"] for c in onnx_info["candidates"]] == ["legacy"]
    assert (onnx_info["exporter"], onnx_info["opset"]) == ("legacy", export.LEGACY_OPSET)
    assert "RNN" in onnx_info["ops"]  # the legacy exporter's native recurrent op
    proto = onnx.load(str(out / "model.onnx"))
    assert {p.key: p.value for p in proto.metadata_props} == {
        "rnnserve.name": "custom-name",
        "rnnserve.version": "3",
    }
    assert proto.opset_import[0].version == export.LEGACY_OPSET
    arch = card["architecture"]
    assert (arch["hidden_size"], arch["num_layers"], arch["cell"]) == (8, 2, "rnn")
    hparams = card["training"]["hyperparameters"]
    assert (hparams["lr"], hparams["seed"], hparams["dry_run"]) == (0.01, 0, True)


def test_export_data_dir_feeds_real_digits_to_the_parity_check(
    legacy_export: tuple[Path, dict[str, Any], list[np.ndarray]], mnist_root: Path
) -> None:
    _, _, inputs = legacy_export
    digits = D.normalize_images(D.load_mnist_split(mnist_root, train=False).images).numpy()
    assert inputs and all(np.array_equal(x[:200], digits) for x in inputs)


@pytest.mark.slow  # the dynamo exporter alone takes ~5 s
def test_export_dynamo_only_with_defaults(
    base_run: Path, mnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--onnx-exporter dynamo alone is tried (opset 18, the RNN unrolled); without --name,
    --version, --tolerance the card takes the folder's name, version 1 and 1e-4; without
    --data-dir (and the environment's folder empty) parity runs on seeded noise."""
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv(D.DATA_DIR_ENV, str(empty))
    inputs: list[np.ndarray] = []
    original = export.classifier_parity

    def parity(ref: Any, cand: Any, x: np.ndarray, tol: float) -> export.Parity:
        inputs.append(x)
        return original(ref, cand, x, tol)

    monkeypatch.setattr(export, "classifier_parity", parity)
    out = tmp_path / "dyn-model"
    export.main([str(base_run), "--out", str(out), "--onnx-exporter", "dynamo"])
    card = json.loads((out / "1" / "card.json").read_text())
    assert (card["name"], card["version"], card["export"]["tolerance"]) == (
        "dyn-model",
        1,
        1e-4,
    )
    onnx_info = card["export"]["onnx"]
    assert [c["exporter"] for c in onnx_info["candidates"]] == ["dynamo"]
    assert (onnx_info["exporter"], onnx_info["opset"]) == ("dynamo", export.DYNAMO_OPSET)
    assert "RNN" not in onnx_info["ops"]
    digits = D.normalize_images(D.load_mnist_split(mnist_root, train=False).images).numpy()
    assert inputs and not any(np.allclose(x[:200], digits) for x in inputs)


def test_export_tolerance_zero_is_refused_and_writes_no_model(
    base_run: Path, mnist_root: Path, tmp_path: Path
) -> None:
    """The model that passes at --tolerance 1e-3 (legacy_export) cannot match PyTorch to
    the last bit in onnxruntime: --tolerance 0 rejects it, and nothing usable is left."""
    out = tmp_path / "m"
    with pytest.raises(SystemExit) as err:
        export_legacy(base_run, out, mnist_root, "--tolerance", "0")
    message = str(err.value)
    assert message.startswith("export failed:") and "exceeds tolerance 0.0" in message
    assert not out.exists() or list(out.iterdir()) == []  # no version, no half-written one


def _bad_run_dir(case: str, base_run: Path, tmp_path: Path) -> Path:
    """A run directory (or what a user passed as one) that holds no usable checkpoint."""
    if case == "run-dir-missing":
        return tmp_path / "no-such-run"
    if case == "checkpoint-file-given":  # the file instead of its folder
        return base_run / "best.pt"
    run_dir = tmp_path / case
    run_dir.mkdir()
    shutil.copy(base_run / "metrics.json", run_dir)
    if case == "metrics-missing":
        (run_dir / "metrics.json").unlink()
        shutil.copy(base_run / "best.pt", run_dir)
    elif case == "checkpoint-garbage":
        (run_dir / "best.pt").write_bytes(b"not a checkpoint at all")
    elif case == "checkpoint-other-format":
        torch.save({"format": 99, "state_dict": {}}, run_dir / "best.pt")
    return run_dir


@pytest.mark.parametrize(
    "case",
    [
        "run-dir-missing",
        "checkpoint-file-given",
        "metrics-missing",
        "checkpoint-garbage",
        "checkpoint-other-format",
    ],
)
def test_export_refuses_a_bad_run_dir_with_a_clear_message(
    case: str, base_run: Path, tmp_path: Path
) -> None:
    """A message naming what was given (a SystemExit with text: exit status 1), not a
    traceback, and no output folder made."""
    run_dir = _bad_run_dir(case, base_run, tmp_path)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as err:
        export.main([str(run_dir), "--out", str(out)])
    assert isinstance(err.value.code, str)
    assert err.value.code.startswith("export failed:") and str(run_dir) in err.value.code
    assert not out.exists()


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["run"], "the following arguments are required: --out"),
        (["run", "--out", "m", "--onnx-exporter", "tensorrt"], "invalid choice"),
        (["run", "--out", "m", "--tolerance", "tiny"], "invalid float value"),
    ],
)
def test_export_refuses_bad_flags(
    argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as err:
        export.main(argv)
    assert err.value.code == 2 and complaint in capsys.readouterr().err
