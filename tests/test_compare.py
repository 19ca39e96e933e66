"""A smoke run of the serving comparison (tiny durations; the numbers are the benchmark's job)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest.compare import main

pytestmark = pytest.mark.slow


def test_comparison_runs_each_server_and_writes_its_report(tmp_path: Path) -> None:
    targets = ["rnnserve-lean", "rnnserve-lean-binary", "fastapi"]
    outcome = main(
        [
            "--rounds",
            "1",
            "--seconds",
            "4",
            "--warmup",
            "0",
            "--users",
            "4",
            "--out",
            str(tmp_path),
            "--targets",
            *targets,
        ]
    )
    summary = outcome["summary"]
    assert list(summary) == targets
    for name, row in summary.items():
        assert row["failures"] == 0, name  # every digit right
        assert row["rps"] > 0 and row["cpu_ms"] > 0, (name, row)  # speeds: compare.md
    report = (tmp_path / "compare.md").read_text()
    assert "rnnserve-lean / fastapi:" in report and "| target | req/s |" in report
    assert len(json.loads((tmp_path / "compare.json").read_text())) == 3
    assert (tmp_path / "compare.png").stat().st_size > 10_000
