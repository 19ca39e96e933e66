"""A short real Locust run against a real server: the traffic mix must see zero failures."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.run_load import plot, run_locust
from loadtest.servers import start_server
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_short_locust_mix_has_no_failures(tmp_path: Path) -> None:
    server = start_server(tmp_path / "server", model_dir=str(ROOT / "models"))
    try:
        rows = run_locust(server.url, 8, 5, tmp_path / "step-8")  # 8 users, 5 s
    finally:
        server.stop()
    by_name = {r.name: r for r in rows}
    total = by_name["Aggregated"]
    assert total.requests > 50, rows
    assert total.failures == 0, (tmp_path / "step-8_failures.csv").read_text()
    for endpoint in ("/classify_pixels", "/next_char"):
        assert by_name[endpoint].requests > 0
    assert (tmp_path / "step-8.html").stat().st_size > 0
    plot(rows, tmp_path / "load.png")
    assert (tmp_path / "load.png").stat().st_size > 0
