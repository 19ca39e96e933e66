"""The training CLI: smoke runs of every model kind, run-directory contents, determinism, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from tests.conftest import ROOT
from training import train
from training.nets import CharLM, SequenceClassifier

MNIST_KINDS = [
    ["--cell", "rnn"],
    ["--cell", "rnn", "--bidirectional"],
    ["--cell", "lstm"],
    ["--cell", "gru", "--bidirectional", "--dropout", "0.1"],
]


def run_mnist(root: Path, out: Path, *extra: str) -> dict:
    return train.main(
        [
            "mnist",
            "--data-dir",
            str(root),
            "--out",
            str(out),
            "--no-progress",
            "--hidden",
            "16",
            "--batch-size",
            "64",
            *extra,
        ]
    )


@pytest.mark.parametrize("kind", MNIST_KINDS, ids=lambda k: "-".join(k).replace("--", ""))
def test_mnist_dry_run_every_kind(kind: list[str], mnist_root: Path, tmp_path: Path) -> None:
    metrics = run_mnist(mnist_root, tmp_path, "--dry-run", *kind)
    assert metrics["dry_run"] and len(metrics["history"]) == 1
    for name in ("best.pt", "metrics.json", "curves.png", "confusion.png"):
        assert (tmp_path / name).stat().st_size > 0, name


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_charlm_dry_run_every_cell(cell: str, corpus_path: Path, tmp_path: Path) -> None:
    metrics = train.main(
        [
            "charlm",
            "--corpus",
            str(corpus_path),
            "--out",
            str(tmp_path),
            "--dry-run",
            "--no-progress",
            "--cell",
            cell,
            "--hidden",
            "32",
            "--seq-len",
            "32",
            "--sample-len",
            "20",
        ]
    )
    assert metrics["val"]["bits_per_char"] == pytest.approx(
        metrics["val"]["loss_nats_per_char"] / 0.6931471805599453
    )
    assert all(len(s["text"]) == 20 for s in metrics["samples"])
    for name in ("best.pt", "metrics.json", "curves.png", "samples.png", "samples.txt"):
        assert (tmp_path / name).stat().st_size > 0, name


def test_mnist_tiny_training_learns_and_writes_a_loadable_checkpoint(
    mnist_root: Path, tmp_path: Path
) -> None:
    metrics = run_mnist(
        mnist_root, tmp_path, "--epochs", "6", "--hidden", "48", "--lr", "3e-3", "--cell", "gru"
    )
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["test"]["accuracy"] == metrics["test"]["accuracy"]
    assert len(saved["test"]["confusion_matrix"]) == 10
    assert sum(map(sum, saved["test"]["confusion_matrix"])) == 200
    # far better than chance (10%) after 6 short epochs on 540 real digits
    assert metrics["test"]["accuracy"] > 0.5
    ckpt = train.load_checkpoint(tmp_path / "best.pt")
    model = train.model_from_checkpoint(ckpt)
    assert isinstance(model, SequenceClassifier) and model.config.hidden_size == 48
    assert ckpt["best_epoch"] == metrics["best_epoch"]


def test_checkpoints_are_loaded_weights_only(mnist_root: Path, tmp_path: Path) -> None:
    """A pickled object that is not plain data must be refused, not executed."""
    torch.save({"format": 1, "payload": Path("/etc")}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match=r"[Ww]eights only"):
        train.load_checkpoint(tmp_path / "evil.pt")


def test_same_seed_same_result(mnist_root: Path, tmp_path: Path) -> None:
    a = run_mnist(mnist_root, tmp_path / "a", "--epochs", "2", "--seed", "7")
    b = run_mnist(mnist_root, tmp_path / "b", "--epochs", "2", "--seed", "7")
    c = run_mnist(mnist_root, tmp_path / "c", "--epochs", "2", "--seed", "8")
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
    sd_a = torch.load(tmp_path / "a" / "best.pt", weights_only=True)["state_dict"]
    sd_b = torch.load(tmp_path / "b" / "best.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    assert a["history"][0]["train_loss"] != c["history"][0]["train_loss"]


def test_charlm_checkpoint_rebuilds_and_generates(corpus_path: Path, tmp_path: Path) -> None:
    train.main(
        [
            "charlm",
            "--corpus",
            str(corpus_path),
            "--out",
            str(tmp_path),
            "--epochs",
            "1",
            "--no-progress",
            "--hidden",
            "32",
            "--seq-len",
            "64",
            "--sample-len",
            "10",
        ]
    )
    ckpt = train.load_checkpoint(tmp_path / "best.pt")
    model = train.model_from_checkpoint(ckpt)
    assert isinstance(model, CharLM)
    from training.data import Vocabulary

    vocab = Vocabulary(ckpt["vocab"])
    first = train.generate(model, vocab, "ROMEO:", 40, temperature=0.8, top_k=5, seed=3)
    again = train.generate(model, vocab, "ROMEO:", 40, temperature=0.8, top_k=5, seed=3)
    assert first == again and len(first) == 40 and set(first) <= set(vocab.itos)


def test_missing_data_exits_with_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as err:
        train.main(
            [
                "mnist",
                "--data-dir",
                str(tmp_path),
                "--out",
                str(tmp_path / "r"),
                "--dry-run",
                "--no-progress",
            ]
        )
    assert "MNIST file not found" in str(err.value) and "--download" in str(err.value)


def test_module_cli_dry_run_as_documented(mnist_root: Path, tmp_path: Path) -> None:
    """`python -m training.train ... --dry-run` works as the README says (separate process)."""
    env = {**os.environ, "RNNSERVE_DATA_DIR": str(mnist_root)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.train",
            "mnist",
            "--bidirectional",
            "--dry-run",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "test acc" in proc.stderr


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(mnist_root: Path, tmp_path: Path) -> None:
    """DDP with gloo: two ranks train together and rank 0 writes one run directory."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "training.train",
            "mnist",
            "--data-dir",
            str(mnist_root),
            "--out",
            str(tmp_path),
            "--epochs",
            "6",
            "--batch-size",
            "32",
            "--lr",
            "0.01",
            "--hidden",
            "16",
            "--no-progress",
            "--device",
            "cpu",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert len(metrics["history"]) == 6
    # 6 short epochs of a 16-unit net on 540 digits: well above chance (10%), far from good
    assert metrics["test"]["accuracy"] >= 0.3, metrics["test"]
    assert (tmp_path / "best.pt").exists()


def test_distributed_ranks_read_disjoint_shards_that_cover_the_data() -> None:
    """Each rank's loader reads its own shard: together every example once per epoch (the
    sampler pads an odd count by repeating one), in a new order each epoch."""
    dataset = TensorDataset(torch.arange(101))
    seen = []
    for epoch in (0, 1):
        shards = []
        for rank in (0, 1):
            rt = train.Runtime(torch.device("cpu"), rank=rank, world_size=2, is_distributed=True)
            loader = train.make_loader(dataset, 8, rt, True, seed=0, epoch=epoch)
            shards.append([int(x) for (batch,) in loader for x in batch])
        assert len(shards[0]) == len(shards[1]) == 51
        assert set(shards[0]) | set(shards[1]) == set(range(101))
        assert len(set(shards[0]) & set(shards[1])) <= 1  # only the padding repeats
        seen.append(shards[0])
    assert seen[0] != seen[1]


def test_augmenter_warps_deterministically_and_keeps_the_background(mnist_root: Path) -> None:
    from training import data as D

    x = D.normalize_images(D.load_mnist_split(mnist_root, train=False).images[:16])
    a, b = train.Augmenter(3)(x), train.Augmenter(3)(x)
    assert a.shape == x.shape and torch.equal(a, b)
    assert (a - x).abs().mean() > 0.05  # it does change the images
    background = (0 - D.MNIST_MEAN) / D.MNIST_STD
    assert torch.allclose(a[:, 0, 0], torch.full((16,), background), atol=1e-4)
    # ink is preserved roughly: same amount of bright pixels within 25%
    assert abs((a > 1).sum().item() / (x > 1).sum().item() - 1) < 0.25


def test_shapes_vary_the_writers_hand_on_the_chosen_share_only(mnist_root: Path) -> None:
    """--shapes adds slant, elastic bending and restroking to that share of the images: the
    others are warped exactly as plain --augment warps them, the chosen differ, thickened
    and thinned strokes keep full darkness and the background stays the background."""
    from training import data as D

    x = D.normalize_images(D.load_mnist_split(mnist_root, train=False).images[:64])
    plain = train.Augmenter(5)(x)
    none = train.Augmenter(5, shapes=0.0)(x)
    assert torch.equal(plain, none)
    every = train.Augmenter(5, shapes=1.0)(x)
    assert torch.equal(every, train.Augmenter(5, shapes=1.0)(x))  # seeded
    differs = (every - plain).abs().flatten(1).amax(1) > 0.5
    assert differs.float().mean() > 0.9
    background = (0 - D.MNIST_MEAN) / D.MNIST_STD
    assert torch.allclose(every[:, 0, 0], torch.full((64,), background), atol=1e-4)
    # strokes keep full darkness: every image's brightest pixel within 15% of the plain one's
    ratio = (every - background).flatten(1).amax(1) / (plain - background).flatten(1).amax(1)
    assert ratio.min() > 0.85 and ratio.max() < 1.15
    # widths vary both ways: some images have clearly more ink, some clearly less
    ink = lambda z: ((z - background) > 1.0).flatten(1).sum(1).float()  # noqa: E731
    change = ink(every) / ink(plain).clamp_min(1)
    assert (change > 1.15).any() and (change < 0.87).any()


def test_shapes_needs_augment(mnist_root: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--shapes varies the --augment warps"):
        run_mnist(mnist_root, tmp_path / "s", "--epochs", "1", "--shapes", "0.5")


def test_augment_flag_changes_training(mnist_root: Path, tmp_path: Path) -> None:
    plain = run_mnist(mnist_root, tmp_path / "p", "--epochs", "1", "--seed", "1")
    warped = run_mnist(mnist_root, tmp_path / "w", "--epochs", "1", "--seed", "1", "--augment")
    assert plain["history"][0]["train_loss"] != warped["history"][0]["train_loss"]
