"""`make serve`'s model summary (training/summary.py) says what the cards say."""

from __future__ import annotations

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
