"""`make serve`'s model summary (training/summary.py) says what the cards say."""

from __future__ import annotations

import json
from pathlib import Path

from training.checkpoints import starting_point
from training.summary import training_time


def test_every_training_stage_is_shown_first_to_last() -> None:
    """A fine-tuned model (mnist-bigru's photo stage) shows its first run and the stage on
    top, as the README's table does: the summary once showed the last stage alone."""
    first = {"epochs_run": 20, "wall_time_s": 1354.7}
    assert training_time({"epochs_run": 4, "wall_time_s": 326.2, "started_from": first}) == (
        "20 + 4 ep, 23 + 5 min"
    )
    assert training_time({"epochs_run": 25, "wall_time_s": 2634.0}) == "25 ep, 44 min"
    # a start from weights that record no run of their own is not a stage
    assert training_time(
        {"epochs_run": 3, "wall_time_s": 60, "started_from": {"weights": "x"}}
    ) == ("3 ep, 1 min")


def test_a_model_fine_tuned_twice_keeps_every_stage_on_record(tmp_path: Path) -> None:
    """Fine-tuning an exported model that was itself fine-tuned (mnist-bigru's second photo
    stage, `--from-committed`) records the whole chain: the first run is not lost."""
    first = {"epochs_run": 20, "wall_time_s": 1354.7, "test_accuracy": 0.9958}
    card = {
        "metrics": {"test_accuracy": 0.9957},
        "training": {"epochs_run": 4, "wall_time_s": 326.2, "started_from": first},
    }
    (tmp_path / "card.json").write_text(json.dumps(card))
    start = starting_point(tmp_path / "model.ts")
    assert start["started_from"] == first and start["epochs_run"] == 4
    assert training_time({"epochs_run": 4, "wall_time_s": 332.1, "started_from": start}) == (
        "20 + 4 + 4 ep, 23 + 5 + 6 min"
    )
