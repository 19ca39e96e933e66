"""Every package the code imports is declared where its install comes from: the serving code
in pyproject's core dependencies and in both bentofiles (the images install only those), the
training code in the core or the `train` extra, the load tests and tests in `dev`. A package
that is only there because another one pulls it in breaks the day that one stops."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

# imported only where present, each behind a guard that says what to install
OPTIONAL_IN_SERVING = {"torch"}  # the TorchScript backend: the `train` extra, said at start-up


def imported_top_levels(folder: Path) -> set[str]:
    names: set[str] = set()
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    local = {"service", "training", "loadtest", "tests", "evaluation"}
    return {n for n in names if n not in sys.stdlib_module_names and n not in local}


def distribution_names(imports: set[str]) -> set[str]:
    owners = packages_distributions()
    missing = sorted(n for n in imports if n not in owners)
    assert not missing, f"imported but not installed here: {missing}"
    return {normalized(owners[n][0]) for n in imports}


def normalized(requirement: str) -> str:
    """'onnxruntime-gpu[cuda]>=1.31; sys_platform...' -> 'onnxruntime-gpu' (PEP 503 form)."""
    name = re.split(r"[\s\[<>=!~;]", requirement.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(requirements: list[str]) -> set[str]:
    return {normalized(r) for r in requirements if not r.startswith("rnnserve")}


PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
CORE = declared(PYPROJECT["dependencies"])
EXTRAS = {name: declared(reqs) for name, reqs in PYPROJECT["optional-dependencies"].items()}
# onnxruntime-gpu and onnxruntime install the same `onnxruntime` module
SAME_MODULE = {"onnxruntime-gpu": "onnxruntime"}


def satisfied(needed: set[str], available: set[str]) -> list[str]:
    available = available | {SAME_MODULE.get(n, n) for n in available}
    return sorted(n for n in needed if SAME_MODULE.get(n, n) not in available)


def test_the_serving_code_imports_only_core_dependencies() -> None:
    needed = distribution_names(imported_top_levels(ROOT / "service") - OPTIONAL_IN_SERVING)
    assert satisfied(needed, CORE) == [], "add to [project] dependencies"


@pytest.mark.parametrize("bentofile", ["bentofile.yaml", "bentofile-gpu.yaml"])
def test_the_images_install_what_the_serving_code_imports(bentofile: str) -> None:
    packages = yaml.safe_load((ROOT / bentofile).read_text())["python"]["packages"]
    needed = distribution_names(imported_top_levels(ROOT / "service") - OPTIONAL_IN_SERVING)
    assert satisfied(needed, declared(packages)) == [], f"add to {bentofile}"


def test_training_and_tools_import_only_declared_packages() -> None:
    training = distribution_names(imported_top_levels(ROOT / "training"))
    assert satisfied(training, CORE | EXTRAS["train"]) == [], "add to the train extra"
    tools = distribution_names(
        imported_top_levels(ROOT / "loadtest")
        | imported_top_levels(ROOT / "tests")
        | imported_top_levels(ROOT / "evaluation")
    )
    everything = CORE | set().union(*EXTRAS.values())
    assert satisfied(tools, everything) == [], "add to the dev extra"
