"""The GPU check's rehearsal (loadtest/gpu_check.py --cpu-only): the script a GPU session will
run must work before the one chance to run it there."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest.gpu_check import main

pytestmark = pytest.mark.slow


def test_the_gpu_check_rehearses_on_cpu(tmp_path: Path) -> None:
    assert main(["--cpu-only", "--skip-service", "--seconds", "0.1", "--out", str(tmp_path)]) == 0
    steps = json.loads((tmp_path / "gpu_check.json").read_text())
    assert all(step["ok"] for step in steps.values()), steps
    for name, row in steps["onnxruntime"]["result"].items():
        assert row["cpu_samples_per_s_b256"] > 0, name
    for name, row in steps["torchscript"]["result"].items():
        assert row["max_abs_diff_vs_onnx_cpu"] < 1e-3, name
    assert (tmp_path / "gpu_check.md").read_text().startswith("# GPU check")
