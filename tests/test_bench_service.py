"""A smoke run of the service benchmark: two alternating rounds of batching on and off (tiny
durations; the numbers are the benchmark's job, not the test's)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest.bench_service import main

pytestmark = pytest.mark.slow


def test_bench_alternates_rounds_and_reports_medians_and_ratios(tmp_path: Path) -> None:
    scenarios = ["lean pixels, batching on", "lean pixels, batching off"]
    raw, table = tmp_path / "bench.json", tmp_path / "bench.md"
    quick = ["--rounds", "2", "--clients", "2", "--seconds", "1", "--warmup", "0"]
    main([*quick, "--json", str(raw), "--markdown", str(table), "--scenarios", *scenarios])
    result = json.loads(raw.read_text())
    levels = result["levels"]
    # the order the servers ran in: on, off, on, off
    assert [(lv["round"], lv["scenario"]) for lv in levels] == [
        (r, s) for r in (0, 1) for s in scenarios
    ]
    assert all(lv["errors"] == 0 and lv["requests"] > 10 for lv in levels)
    for name in scenarios:
        assert len(result["servers"][name]["worker_rss_mb"]) == 2
        assert all(0 < mb < 1000 for mb in result["servers"][name]["worker_rss_mb"])
    report = table.read_text()
    assert report.startswith("Command: `python -m loadtest.bench_service --rounds 2")
    assert "median of 2 alternating rounds" in report
    assert "lean pixels: batching on vs off at 32 clients" not in report  # no 32-client level
    assert report.count("| lean pixels, batching") == 2 + 2  # two median rows, two servers
