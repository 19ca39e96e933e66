"""The soak script, run short (the full 10-minute soak is `python -m loadtest.soak`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from loadtest import soak
from loadtest.soak import MAX_GROWTH, Sample, main, memory_growth


def test_memory_growth_is_measured_after_warm_up() -> None:
    flat = [Sample(t, 0, 0, [100.0 + (50.0 if t < 10 else 0.0)]) for t in range(0, 40, 2)]
    # start-up growth before the warm-up ends does not count...
    assert memory_growth(flat, warmup_s=10)["growth"] == pytest.approx(0.0)
    # ...a steady leak after it does
    leak = [Sample(t, 0, 0, [100.0 + 2.0 * t]) for t in range(0, 40, 2)]
    assert memory_growth(leak, warmup_s=10)["growth"] > MAX_GROWTH
    assert math.isnan(memory_growth([], warmup_s=0)["growth"])


@pytest.mark.slow
def test_short_soak_reports_no_failures_and_worker_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "soak"
    monkeypatch.setattr(soak, "PROGRESS_EVERY_S", 3.0)
    main(["--seconds", "6", "--sample-s", "0.5", "--clients", "4", "--out", str(out)])
    progress = [line for line in capsys.readouterr().err.splitlines() if "/6 s:" in line]
    assert progress and "requests" in progress[0]  # a long soak says where it is
    result = json.loads((out / "soak.json").read_text())
    assert result["failures"] == 0, result["failure_examples"]
    assert result["requests"] > 100  # every kind of request in the mix ran many times
    rss = [s["worker_rss_mb"] for s in result["samples"]]
    assert len(rss) >= 10 and all(len(r) == 1 and r[0] > 50 for r in rss[1:])
    assert math.isfinite(result["memory"]["growth"])
    assert "| growth |" in (out / "soak.md").read_text()
    assert (out / "soak.png").stat().st_size > 10_000
