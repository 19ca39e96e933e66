"""Shared fixtures: the small real-data fixtures and a per-test scratch directory."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    """A data root laid out as torchvision expects: <root>/MNIST/raw/*.gz (600 + 200 images)."""
    return FIXTURES


@pytest.fixture(scope="session")
def corpus_path() -> Path:
    """The first 40 KB of Tiny Shakespeare."""
    return FIXTURES / "text" / "tinyshakespeare.txt"
