"""The scripts under ``benchmarks/`` render their committed JSON to exactly their committed markdown."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}_run", BENCHMARKS / name / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("dims", [2, 3])
def test_efficiency(dims):
    stem = BENCHMARKS / "efficiency" / f"efficiency_{dims}d"
    result = json.loads(stem.with_suffix(".json").read_text())
    assert _script("efficiency").render(result, dims) == stem.with_suffix(".md").read_text()


def test_losses_and_an_error_row():
    run = _script("losses")
    result = json.loads((BENCHMARKS / "losses" / "losses_cpu.json").read_text())
    assert run.render_md(result) == (BENCHMARKS / "losses" / "losses_cpu.md").read_text()
    result["results"] = [{"term": "affinity", "dim": "3d", "error": "out of memory"}]
    assert run.render_md(result).splitlines()[-1] == "| affinity | 3d | error: out of memory | | | | | |"


def test_losses_machine_record():
    machine = _script("losses").machine_info()
    assert list(machine) == ["platform", "python", "torch", "cpu", "cpu_count", "torch_threads", "note"]
    assert machine["cpu_count"] >= 1 and machine["cpu"]


def test_startup():
    record = json.loads((BENCHMARKS / "startup" / "startup_cpu.json").read_text())
    assert _script("startup").render_md(record) == (BENCHMARKS / "startup" / "startup_cpu.md").read_text()
