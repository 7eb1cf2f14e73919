"""Shared by the tests of the benchmark scripts."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

#: ``benchmarks/quality/``: a script folder (not a package); its modules import each other by plain name.
QUALITY = Path(__file__).resolve().parents[2] / "benchmarks" / "quality"


@pytest.fixture(scope="module")
def import_quality() -> Iterator[Callable[[str], ModuleType]]:
    """``import_quality("run")``: a module of ``benchmarks/quality/``, with that folder on ``sys.path`` meanwhile."""
    sys.path.insert(0, str(QUALITY))
    try:
        yield importlib.import_module
    finally:
        sys.path.remove(str(QUALITY))
