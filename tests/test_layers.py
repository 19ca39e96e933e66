"""Imports run one way (DESIGN.md, "Layout"): http -> engine -> model / imaging -> the top
(settings, errors, metrics, log bounds); training/ may import service.model, service.imaging
and the errors, nothing else of service/. Read from the source with `ast`, so that a lazy import
inside a function counts as much as one at the top of a file."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVICE = ROOT / "service"
TOP = {"settings", "errors", "metrics", "log_bounds"}
LAYERS = ("http", "engine", "model", "imaging")
# what each layer may import of service/, besides itself and the top
MAY_IMPORT = {
    "http": {"engine", "model", "imaging"},
    "engine": {"model", "imaging"},
    "model": set(),
    "imaging": set(),
    "top": set(),
}
TRAINING_MAY_IMPORT = {"service.model", "service.imaging", "service.errors"}


def service_imports(path: Path) -> set[str]:
    """Every `service...` module a file imports (absolute imports: the project uses no others)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "service")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "service":
                continue
            if node.module == "service":  # from service import errors, __version__
                found.update(f"service.{a.name}" for a in node.names if a.name != "__version__")
            else:
                found.add(node.module)
    return found


def layer_of(module: str) -> str:
    """The layer a module is in: service.engine.pipeline is in engine; a top-level module is in
    "top"."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in LAYERS:
        return parts[1]
    return "top"


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


SERVICE_FILES = sorted(
    p for p in SERVICE.rglob("*.py") if p.name != "service.py" or p.parent != SERVICE
)


def test_every_service_module_is_in_a_layer_or_the_top() -> None:
    for path in SERVICE.glob("*.py"):
        assert path.stem in TOP | {"__init__", "service"}, (
            f"{path.name}: put it in one of service/{{{','.join(LAYERS)}}}/ or add it to the "
            "top set here if every layer needs it"
        )


@pytest.mark.parametrize("path", SERVICE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_run_one_way(path: Path) -> None:
    own = layer_of(module_name(path))
    allowed = MAY_IMPORT[own] | {own, "top"}
    wrong = sorted(m for m in service_imports(path) if layer_of(m) not in allowed)
    assert not wrong, f"{own}/ may not import {wrong}"


def test_the_top_imports_no_layer() -> None:
    for name in TOP:
        imported = service_imports(SERVICE / f"{name}.py")
        assert all(layer_of(m) == "top" for m in imported), (name, imported)


@pytest.mark.parametrize(
    "path", sorted((ROOT / "training").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT))
)
def test_training_imports_only_the_contract_modules(path: Path) -> None:
    wrong = sorted(
        m
        for m in service_imports(path)
        if not any(m == ok or m.startswith(ok + ".") for ok in TRAINING_MAY_IMPORT)
    )
    assert not wrong, f"training/ may import only {sorted(TRAINING_MAY_IMPORT)}: {wrong}"


def test_the_rule_is_checked_on_real_imports() -> None:
    """The reader sees what the files import (or every test above would pass on nothing)."""
    pipeline = service_imports(SERVICE / "engine" / "pipeline.py")
    assert "service.model.inference" in pipeline and "service.errors" in pipeline
    assert layer_of("service.http.v2_app") == "http" and layer_of("service.errors") == "top"
    photos = service_imports(ROOT / "training" / "photos.py")
    assert any(m.startswith("service.imaging") for m in photos)
