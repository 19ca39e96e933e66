"""`make models` machinery (training.defaults): train side by side, export, summarize.

The real settings take most of an hour; here the same code runs every default model's
command with --dry-run on the fixtures, so the path `make models` takes is exercised end to
end (subprocess training, logs, export into a models folder, verified summary).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from service.model.repository import discover_cards
from training import defaults


def make_models(tmp_path: Path, data_dir: Path) -> int:
    """What `make models` runs, with runs and models inside tmp_path."""
    return defaults.main(
        [
            "all",
            "--runs",
            str(tmp_path / "runs"),
            "--models",
            str(tmp_path / "models"),
            "--data-dir",
            str(data_dir),
        ]
    )


@pytest.mark.slow  # trains, exports and calibrates every default model (tiny): ~40 s
def test_defaults_all_trains_exports_and_summarizes(
    tmp_path: Path,
    mnist_root: Path,
    corpus_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tiny = {
        name: [
            *args,
            "--dry-run",
            "--hidden",
            "16",
            *(
                ["--corpus", str(corpus_path), "--seq-len", "32", "--sample-len", "5"]
                if args[0] == "charlm"
                else []
            ),
        ]
        for name, args in defaults.DEFAULT_MODELS.items()
    }
    monkeypatch.setattr(defaults, "DEFAULT_MODELS", tiny)
    photo_stage = list(defaults.PHOTO_FINE_TUNE)
    photo_stage[photo_stage.index("--photos") + 1] = "0.05"
    monkeypatch.setattr(defaults, "PHOTO_FINE_TUNE", photo_stage)
    calibration = ["--per-kind", "2", "--blanks", "4", "--big-photos", "0"]
    monkeypatch.setattr(defaults, "CALIBRATION", calibration)
    monkeypatch.setattr(defaults, "PROGRESS_EVERY_S", 0.1)
    monkeypatch.setattr(defaults, "ONNX_EXPORTER", "legacy")  # auto's choice: test_export.py
    code = make_models(tmp_path, mnist_root)
    assert code == 0
    cards = discover_cards(tmp_path / "models")
    assert {c.name for c in cards} == set(tiny)
    for name in tiny:
        assert (tmp_path / "runs" / "logs" / f"{name}.log").stat().st_size > 0
    for name in defaults.PHOTO_MODELS:  # the photo stage ran from stage one, was exported
        log = (tmp_path / "runs" / "logs" / f"{name}-photos.log").read_text()
        assert "rendering 5% of the digits as photos" in log
        card = next(c for c in cards if c.name == name)
        hyper = card.data["training"]["hyperparameters"]
        assert hyper["init_from"] == str(tmp_path / "runs" / name / "best.pt")
        assert hyper["photos"] == 0.05 and "photo/scan renders" in card.data["metrics"]["val_split"]
        assert hyper["shapes"] == 0.3 and hyper["augment"]
        assert 0 < card.data["calibration"]["confidence_threshold"] <= 1
    assert {c.data["export"]["onnx"]["exporter"] for c in cards} == {"legacy"}
    captured = capsys.readouterr()
    assert "every file matches its card's sha256" in captured.out
    # progress while a training runs: its latest epoch line, not only start and end
    assert "min: epoch 1 " in captured.err


def test_a_failed_training_stops_before_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(defaults, "DEFAULT_MODELS", {"broken": ["mnist", "--cell", "rnn"]})
    code = make_models(tmp_path, tmp_path / "nodata")
    assert code == 1
    assert not (tmp_path / "models").exists()
    assert "MNIST file not found" in (tmp_path / "runs" / "logs" / "broken.log").read_text()
