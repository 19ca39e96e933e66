"""Every Python block of docs/api.md runs as written against a real server, and what it prints
matches the output the block shows (its closing `# ` lines; `...` stands for any text).

Each block runs in a process of its own (kserve and tritonclient.grpc cannot share one: see
tests/clients/__init__.py), in a temp dir (blocks write their pictures there), with only the
documented addresses swapped for this server's (HTTP 127.0.0.1:3000, gRPC 127.0.0.1:8001).
A changed answer, a renamed field or a client that no longer works then fails here instead of
misleading a reader.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.servers import Server

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "api.md"
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def blocks() -> list[tuple[int, str]]:
    text = PAGE.read_text(encoding="utf-8")
    return [(text[: m.start()].count("\n") + 1, m.group(1)) for m in BLOCK.finditer(text)]


def shown_output(block: str) -> list[str]:
    """The output a block shows: its trailing lines that start with '# '."""
    lines = block.rstrip("\n").splitlines()
    shown: list[str] = []
    while lines and lines[-1].startswith("# "):
        shown.insert(0, lines.pop()[2:])
    return shown


def matches(shown: str, printed: str) -> bool:
    pattern = ".*".join(re.escape(part) for part in shown.split("..."))
    return re.fullmatch(pattern, printed) is not None


def for_server(block: str, server: Server) -> str:
    host = server.url.removeprefix("http://")
    return block.replace("127.0.0.1:3000", host).replace("127.0.0.1:8001", server.grpc_target)


def test_the_page_has_python_blocks() -> None:
    assert len(blocks()) >= 5


@pytest.mark.parametrize(("line", "block"), blocks(), ids=[f"api.md:{n}" for n, _ in blocks()])
def test_each_python_block_runs_as_written(
    line: int, block: str, default_server: Server, tmp_path: Path
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", for_server(block, default_server)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, f"docs/api.md:{line} failed:\n{done.stderr[-3000:]}"
    shown = shown_output(block)
    if shown:
        printed = done.stdout.rstrip("\n").splitlines()
        assert len(printed) == len(shown), (printed, shown)
        for want, got in zip(shown, printed, strict=True):
            assert matches(want, got), f"docs/api.md:{line} shows {want!r}, prints {got!r}"
