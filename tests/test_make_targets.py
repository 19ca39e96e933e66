"""Every make target the README and docs/ name (in code: blocks and `spans`) works from a fresh
clone: it exists, and it creates what it needs (the virtualenv it runs from) before it uses it.

`make -n` on a copy of the Makefile in an empty directory (no .venv, no .venv-perf, no
.venv-peers: a fresh clone) prints what each target would run, in order: the first command that
uses a virtualenv must be the one that creates it. The targets that need only the serving core
(`make serve`, `make build`, the images) must install the project without its `[dev]` extras.
The project's modules a target runs (`python -m training.summary`, ...) must exist. The
installs themselves run for real in CI, where `make test` starts from a fresh clone.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.doc_blocks import PAGES, ROOT

MENTION = re.compile(r"(?:^|[\s`=;&|(])make ([a-z][a-z-]*)\b")
CODE = re.compile(r"```\w*\n(.*?)```|`([^`\n]+)`", re.S)
HELP = re.compile(r"^([a-z][a-z-]*):.*##", re.M)
VENVS = (".venv", ".venv-perf", ".venv-peers")
MODULE = re.compile(r"-m ((?:training|service|loadtest|tests)(?:\.\w+)*)")
SERVING_CORE = ("serve", "build", "image", "image-gpu")
# What a make target reads besides the Makefile (its stamps depend on them).
INPUTS = (
    "Makefile",
    "pyproject.toml",
    "loadtest/peers/requirements.txt",
    "loadtest/perf/requirements.txt",
    "deploy/tools/requirements.txt",
    "deploy/tools/package.json",
)


def documented_targets() -> list[str]:
    found: set[str] = set()
    for page in PAGES:
        for block, span in CODE.findall(page.read_text(encoding="utf-8")):
            found.update(MENTION.findall(block or span))
    return sorted(found)


def makefile_targets() -> set[str]:
    return set(HELP.findall((ROOT / "Makefile").read_text(encoding="utf-8")))


@pytest.fixture(scope="module")
def fresh_clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    clone = tmp_path_factory.mktemp("fresh-clone")
    for name in INPUTS:
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, clone / name)
    return clone


def make(clone: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`make` as a user types it, not as a sub-make of the `make test` that runs this suite
    (which would print its directories and pass its flags down)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    return subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def dry_run(clone: Path, target: str) -> list[str]:
    done = make(clone, "-n", target)
    assert done.returncode == 0, f"make -n {target}: {done.stderr[-2000:]}"
    return done.stdout.splitlines()


def test_the_docs_name_make_targets() -> None:
    assert {"serve", "test", "build", "image", "models"} <= set(documented_targets())


def test_every_documented_target_is_a_listed_target() -> None:
    missing = set(documented_targets()) - makefile_targets()
    assert not missing, f"the docs name make targets the Makefile lacks: {sorted(missing)}"


def used_before_created(commands: list[str]) -> list[str]:
    """The commands of a dry run that use a virtualenv no earlier command created."""
    early: list[str] = []
    for venv in VENVS:
        uses = [line for line in commands if f"{venv}/bin/" in line]
        if uses and f"-m venv {venv}" not in uses[0]:
            early.append(uses[0])
    return early


def test_a_target_that_uses_the_venv_without_creating_it_is_caught(tmp_path: Path) -> None:
    (tmp_path / "Makefile").write_text("flood:\n\t.venv/bin/python -m loadtest.flood\n")
    assert used_before_created(dry_run(tmp_path, "flood"))


@pytest.mark.parametrize("target", documented_targets())
def test_each_documented_target_creates_what_it_uses(fresh_clone: Path, target: str) -> None:
    commands = dry_run(fresh_clone, target)
    early = used_before_created(commands)
    assert not early, f"make {target} on a fresh clone uses a venv before creating it: {early}"
    for module in {m for line in commands for m in MODULE.findall(line)}:
        path = ROOT.joinpath(*module.split("."))
        assert path.with_suffix(".py").is_file() or (path / "__main__.py").is_file(), (
            f"make {target} runs python -m {module}, which does not exist"
        )


@pytest.mark.parametrize("target", SERVING_CORE)
def test_the_serving_targets_install_the_serving_core_only(fresh_clone: Path, target: str) -> None:
    installs = [line for line in dry_run(fresh_clone, target) if "pip install" in line]
    assert any(re.search(r"install .*-e \.(\s|$)", line) for line in installs), installs
    assert not any("[dev]" in line for line in installs), installs


def test_make_help_lists_every_target_on_a_fresh_clone(fresh_clone: Path) -> None:
    done = make(fresh_clone, "help")
    assert done.returncode == 0, done.stderr
    listed = {line.split()[0] for line in done.stdout.splitlines() if line.strip()}
    assert listed == makefile_targets()
    assert not (fresh_clone / ".venv").exists()
