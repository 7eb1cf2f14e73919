"""``benchmarks/studies/run.py``: core groups, and a scheduler that never gives two running runs the same cores."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

DRIVER = Path(__file__).resolve().parents[2] / "benchmarks" / "studies" / "run.py"


@pytest.fixture(scope="module")
def driver() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("bench_studies_run", DRIVER)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


@pytest.mark.parametrize(("cores", "parallel", "groups"), [
    ([0, 1], 2, [(0,), (1,)]),
    ([0, 1], 1, [(0, 1)]),
    ([0, 1, 2, 3, 4], 2, [(0, 1, 2), (3, 4)]),
    ([2, 5, 7], 3, [(2,), (5,), (7,)]),
])
def test_core_groups_are_contiguous_disjoint_and_even(driver, cores, parallel, groups) -> None:
    assert driver.core_groups(cores, parallel) == groups


@pytest.mark.parametrize("parallel", [0, 3])
def test_core_groups_refuse_more_runs_than_cores(driver, parallel) -> None:
    with pytest.raises(ValueError, match="--pin-cores"):
        driver.core_groups([0, 1], parallel)


class _FakeProc:
    """A process that ends after ``polls`` polls."""

    def __init__(self, polls: int) -> None:
        self.polls = polls

    def poll(self) -> int | None:
        self.polls -= 1
        return 0 if self.polls < 0 else None


@pytest.mark.parametrize("pin", [True, False])
def test_schedule_gives_each_running_run_cores_of_its_own_and_frees_them(driver, monkeypatch, tmp_path, pin) -> None:
    launched: list[tuple[str, tuple[int, ...] | None]] = []

    def fake_launch(job, budget, device, logs, cores=None):
        busy = [j.cores for j in jobs if j.status == "running"]
        assert cores is None or cores not in busy  # never two running runs on one core group
        launched.append((job.spec.name, cores))
        job.proc, job.status, job.cores = _FakeProc(polls=1 + len(launched) % 3), "running", cores

    monkeypatch.setattr(driver, "_launch", fake_launch)
    monkeypatch.setattr(driver.os, "sched_getaffinity", lambda _pid: {0, 1}, raising=False)
    jobs = [driver.Job(tmp_path / "p.yaml", tmp_path, SimpleNamespace(name=f"run{i}", teacher_run=None,
                                                                       kind="student")) for i in range(5)]
    args = argparse.Namespace(parallel=2, pin_cores=pin, hard_deadline=float("inf"), deadline=float("inf"),
                              budget="cpu", device="cpu", work=tmp_path)
    driver.schedule(jobs, args, poll_s=0.0)
    assert [name for name, _ in launched] == [f"run{i}" for i in range(5)]
    assert all(j.status == "ended" for j in jobs)
    if pin:
        assert {cores for _, cores in launched} == {(0,), (1,)}
    else:
        assert all(cores is None for _, cores in launched)
