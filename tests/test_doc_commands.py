"""Every bash block of README.md and docs/*.md that talks to the service runs as written against
a real server, and each command's output matches what the page shows under it
(tests/doc_blocks.py says how a page shows output). A changed answer, a renamed field or a
command that no longer works then fails here instead of misleading a reader.

A page's blocks run in order in one bash (`set -eo pipefail`) in a temp dir of its own, as for
a reader in one terminal: files, variables and exports made by one block serve the next;
`.venv` there is a link to the project's, and only the documented addresses are swapped
for this server's (HTTP 127.0.0.1:3000, gRPC 127.0.0.1:8001). Every curl reports its status
on the side: no answer may be a 5xx, and a 4xx only where the page shows an error under it.

On those pages every bash block runs but those that serve, deploy, train, test or benchmark
(`make serve`, `bentoml`, `podman`, `kubectl`, `training.*`, `pytest`, `locust`, make targets,
perf_analyzer: its stability windows are a measurement, which a loaded CI machine fails;
tests/test_perf_analyzer.py runs it against the same routes with a fixed request count):
the bento, the image and the manifests are run by tests/test_deploy.py and
tests/test_container.py, the make targets checked by tests/test_make_targets.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from loadtest.bench_swap import copy_repository
from loadtest.servers import Server, start_server
from tests.doc_blocks import (
    PAGES,
    ROOT,
    Block,
    Step,
    bash_steps,
    blocks,
    output_matches,
    page_name,
    server_settings,
    swap_addresses,
)

SERVICE = re.compile(r"127\.0\.0\.1:(3000|8001)\b")
# Serving, deploying, training, testing, benchmarking: not what a reader runs beside a server.
NOT_RUN = re.compile(
    r"\bmake \w|\bbentoml\b|\bpodman\b|\bkubectl\b"
    r"|-m training\.|\btorchrun\b|\bpytest\b|\blocust\b|\bperf_analyzer\b"
)
STATUS = re.compile(r"@@status (\d{3})@@")
STEP = re.compile(r"^@@step (\d+)@@$", re.M)
PRELUDE = """set -eo pipefail
curl() { command curl --write-out '%{stderr}@@status %{http_code}@@\\n' "$@"; }
"""


def runs_here(block: Block) -> bool:
    """A bash block a reader runs beside the server: its requests, and the files they send."""
    return block.language in ("bash", "sh") and NOT_RUN.search(block.text) is None


def talks_to_the_service(block: Block) -> bool:
    return runs_here(block) and SERVICE.search(block.text) is not None


def pages_with_commands() -> list[Path]:
    return [page for page in PAGES if any(talks_to_the_service(b) for b in blocks(page))]


def page_steps(page: Path) -> list[Step]:
    """The commands a reader of `page` runs beside the server, in order, with the page's
    hidden set-up steps where its directives stand."""
    steps: list[Step] = []
    for block in blocks(page):
        if runs_here(block):
            for args in block.setup:
                setup = f'PYTHONPATH="$DOC_ROOT" "$DOC_PYTHON" -m tests.doc_setup {args}'
                steps.append(Step(block.line, [setup]))
            steps.extend(bash_steps(block))
    return steps


def script(steps: list[Step], server: Server) -> str:
    host = server.url.removeprefix("http://")
    lines = [PRELUDE]
    for number, step in enumerate(steps):
        lines.append(f"printf '\\n@@step {number}@@\\n'; printf '@@step {number}@@\\n' >&2")
        command = "\n".join(step.command)
        lines.append(swap_addresses(command, host, server.grpc_target))
    return "\n".join(lines) + "\n"


def by_step(stream: str) -> dict[int, str]:
    parts = STEP.split(stream)
    return {int(parts[i]): parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def shows_an_error(step: Step) -> bool:
    return any('"error"' in line for line in step.shown)


def run_page(page: Path, server: Server, cwd: Path, env: dict[str, str]) -> None:
    """The page's commands in one bash, as in one terminal (files, variables and exports made
    by one block serve the next), then each command's statuses and output checked."""
    steps = page_steps(page)
    done = subprocess.run(
        ["bash", "-c", script(steps, server)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    printed, reported = by_step(done.stdout), by_step(done.stderr)
    name = page_name(page)
    if done.returncode != 0:
        last = max(reported, default=0)
        raise AssertionError(
            f"{name}:{steps[last].line} failed ({done.returncode}): "
            + "\n".join(steps[last].command)
            + f"\n{reported.get(last, done.stderr)[-3000:]}"
        )
    for number, step in enumerate(steps):
        statuses = [int(code) for code in STATUS.findall(reported.get(number, ""))]
        where = f"{name}:{step.line}"
        assert all(code < 500 for code in statuses), f"{where}: HTTP {statuses}"
        if not shows_an_error(step):
            output = printed.get(number, "")[:1500]
            assert all(code < 400 for code in statuses), f"{where}: HTTP {statuses}: {output}"
        if step.shown:
            output = printed.get(number, "")
            assert output_matches(step.shown, output), (
                f"{where} shows:\n" + "\n".join(step.shown) + f"\nbut prints:\n{output[:1500]}"
            )


@pytest.fixture(scope="module")
def own_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[Path, Server]]:
    """A server for each page that asks for its own settings, over a copy of the repository
    (its directives add versions to it)."""
    servers: dict[Path, Server] = {}
    try:
        for page in pages_with_commands():
            settings = server_settings(page)
            if settings is not None:
                scratch = tmp_path_factory.mktemp(page.stem)
                repository = copy_repository(scratch / "models")
                options = cast(dict[str, Any], {"model_dir": str(repository), **settings})
                servers[page] = start_server(scratch, **options)
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def test_the_pages_have_commands_to_run() -> None:
    pages = {page.name for page in pages_with_commands()}
    assert {"README.md", "api.md", "lifecycle.md", "photos.md"} <= pages, pages


@pytest.mark.parametrize("page", pages_with_commands(), ids=lambda page: page.name)
def test_each_command_block_runs_as_written(
    page: Path, default_server: Server, own_servers: dict[Path, Server], tmp_path: Path
) -> None:
    server = own_servers.get(page, default_server)
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    repository = ROOT / "models" if server is default_server else server.log_path.parent / "models"
    env = {
        **os.environ,
        "DOC_ROOT": str(ROOT),
        "DOC_PYTHON": sys.executable,
        "DOC_MODEL_DIR": str(repository),
    }
    run_page(page, server, tmp_path, env)


SAMPLE = """# a description, not output
curl -s http://127.0.0.1:3000/a \\
  -d '{}'
# {"answer": 1,
#  "more": [...]}

python3 - <<'EOF2'   # a remark
print("# not shown output")
EOF2
curl -s http://127.0.0.1:3000/b   # inline remark
"""


def test_a_block_is_read_as_commands_and_the_output_under_them() -> None:
    steps = bash_steps(Block(ROOT / "README.md", 10, "bash", SAMPLE))
    assert [step.command[0].split()[0] for step in steps] == ["curl", "python3", "curl"]
    assert steps[0].command[1] == "  -d '{}'"
    assert steps[0].shown == ['{"answer": 1, "more": [...]}']
    assert steps[1].command[1:] == ['print("# not shown output")', "EOF2"] and not steps[1].shown
    assert steps[2].line == 20 and not steps[2].shown


def test_shown_output_checks_what_is_deterministic_and_nothing_else() -> None:
    shown = ['{"digit":1,"probabilities":[...],"model":"mnist-rnn"}']
    assert output_matches(
        shown, '\n{"digit": 1, "probabilities": [0.1, 0.9], "model": "mnist-rnn"}\n'
    )
    assert not output_matches(shown, '{"digit": 7, "probabilities": [0.9], "model": "mnist-rnn"}')
    assert not output_matches(shown, '{"digit":1,"probabilities":[],"model":"mnist-rnn","x":1}')
    events = ['data: {"text":"P"}', "...   (what was made since)", "event: end"]
    assert output_matches(
        events, 'data: {"text":"P"}\n\ndata: {"text":"ro"}\ndata: {"text":"m"}\nevent: end'
    )
    assert not output_matches(events, 'data: {"text":"Q"}\ndata: {"text":"ro"}\nevent: end')


def test_a_page_whose_command_fails_or_is_refused_or_changed_fails(
    default_server: Server, tmp_path: Path
) -> None:
    env = {**os.environ, "DOC_ROOT": str(ROOT), "DOC_PYTHON": sys.executable}
    cases = {
        "refused": "curl -s http://127.0.0.1:3000/no_such_route\n",
        "changed": "curl -s http://127.0.0.1:3000/livez\n# something else\n",
        "failed": "curl -s http://127.0.0.1:3000/livez\nfalse\n",
    }
    for name, text in cases.items():
        page = tmp_path / f"{name}.md"
        page.write_text(f"# Page\n\n```bash\n{text}```\n", encoding="utf-8")
        with pytest.raises(AssertionError):
            run_page(page, default_server, tmp_path, env)
    page.write_text("```bash\ncurl -s http://127.0.0.1:3000/livez\n```\n", encoding="utf-8")
    run_page(page, default_server, tmp_path, env)
