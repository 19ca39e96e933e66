"""loadtest/time_tests.py: the summary it reads from pytest and the table it writes (running it
here would run the suite inside itself)."""

from __future__ import annotations

from loadtest.time_tests import SUMMARY, Timing, render


def test_the_pytest_summary_is_read_from_quiet_and_bordered_output() -> None:
    quiet = "....\n[100%]\n418 passed, 2 deselected in 358.65s (0:05:58)\n"
    bordered = "==== 3 failed, 415 passed, 1 error in 12.01s ====\n"
    assert SUMMARY.findall(quiet) == ["418 passed, 2 deselected"]
    assert SUMMARY.findall(bordered) == ["3 failed, 415 passed, 1 error"]


def test_a_failed_layer_is_marked_in_the_table() -> None:
    table = render(
        [
            Timing("fast layer", 'pytest -m "not slow"', 41.6, "240 passed", True),
            Timing("whole suite", "pytest", 290.2, "2 failed, 430 passed", False),
        ]
    )
    assert "Command: `python -m loadtest.time_tests`" in table
    assert "pytest options from pyproject.toml: `-ra --strict-markers -n 2" in table
    assert '| fast layer | `pytest -m "not slow"` | 42 | 240 passed |' in table
    assert "| whole suite | `pytest` | 290 | FAILED: 2 failed, 430 passed |" in table
