"""Every Python block of README.md and docs/*.md runs as written against a real server, and
what it prints matches the output the block shows (its closing `# ` lines, read as
tests/doc_blocks.py says).

Each block runs in a process of its own (kserve and tritonclient.grpc cannot share one: see
tests/clients/__init__.py), in a temp dir (blocks write their pictures there), with only the
documented addresses swapped for this server's (HTTP 127.0.0.1:3000, gRPC 127.0.0.1:8001).
A changed answer, a renamed field or a client that no longer works then fails here instead of
misleading a reader.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.servers import Server
from tests.doc_blocks import PAGES, Block, blocks, output_matches, python_shown, swap_addresses


def python_blocks() -> list[Block]:
    return [block for page in PAGES for block in blocks(page) if block.language == "python"]


def test_the_pages_have_python_blocks() -> None:
    assert len([b for b in python_blocks() if b.page.name == "api.md"]) >= 5


@pytest.mark.parametrize("block", python_blocks(), ids=lambda block: block.where)
def test_each_python_block_runs_as_written(
    block: Block, default_server: Server, tmp_path: Path
) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            swap_addresses(
                block.text, default_server.url.removeprefix("http://"), default_server.grpc_target
            ),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, f"{block.where} failed:\n{done.stderr[-3000:]}"
    shown = python_shown(block)
    if shown:
        assert output_matches(shown, done.stdout), (
            f"{block.where} shows:\n" + "\n".join(shown) + f"\nbut prints:\n{done.stdout[:1500]}"
        )
