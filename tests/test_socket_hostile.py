"""Every family of loadtest/socket_hostile.py against a real `bentoml serve`: one worker without
auth, and two workers with auth on (raw sockets, bounded, 127.0.0.1 only).

Each row must hold its family's property (status, time, closed connection, nothing fetched,
series unchanged, ...), /readyz and an ordinary request must stay fast after it, and over the
whole run the workers' memory may grow by at most MAX_GROWTH_MB and their file descriptors
must come back to where they were.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from loadtest import socket_hostile
from loadtest.servers import Server
from tests.conftest import ROOT

pytestmark = pytest.mark.slow
MAX_GROWTH_MB = 300.0
TOKEN = "hostile-token"
CI_SIZES = [
    "--parallel", "48",
    "--header-mb", "8",
    "--header-count", "500",
    "--paths", "2000",
    "--stalled", "24",
    "--chunked", "24",
    "--chunk-mb", "3.5",
    "--idle", "3000",
]  # fmt: skip


@pytest.fixture(scope="module", params=[(1, None), (2, TOKEN)], ids=["1 worker", "2 workers, auth"])
def target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[socket_hostile.Target, Server]]:
    workers, token = request.param
    server = socket_hostile.start_hostile_server(
        tmp_path_factory.mktemp("socket-hostile"), workers, token, str(ROOT / "models")
    )
    port = int(server.url.rsplit(":", 1)[1])
    yield socket_hostile.Target("127.0.0.1", port, token, server.process.pid, server.log), server
    server.stop()


def test_every_family_is_bounded(target: tuple[socket_hostile.Target, Server]) -> None:
    hostile, server = target
    args = socket_hostile.parser().parse_args(
        [*CI_SIZES, "--workers", str(len(socket_hostile.workers(hostile)))]
    )
    rss_before = socket_hostile.rss_mb(hostile)
    fds_before = socket_hostile.fd_count(hostile)
    rows = socket_hostile.run_all(hostile, args)
    print(socket_hostile.table(rows))
    failed = [f"{r.family} / {r.case}: {r.detail}" for r in rows if not r.ok]
    assert not failed, "\n".join(failed)
    assert {r.family for r in rows} >= {
        "fetch", "headers", "metrics", "stalled", "chunked", "idle", "logs", "trailers", "small",
    }  # fmt: skip
    grown = socket_hostile.rss_mb(hostile) - rss_before
    assert grown <= MAX_GROWTH_MB, (rss_before, grown)
    deadline = time.monotonic() + 10  # the last sockets close within the idle timeout
    while socket_hostile.fd_count(hostile) > fds_before + 20 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert socket_hostile.fd_count(hostile) <= fds_before + 20
    log = server.log()
    assert "Traceback" not in log and "status=500" not in log
