"""Collect an experiment folder's finished runs into portable JSON records (no checkpoints, no machine paths).

``OUT/runs/<run name>.json`` holds, per run: the grid entry (kind, cell, seed, model, objective, teacher,
the run config as the preset expanded it, with relative data paths and the teacher given by run name), the
test summary and per-case metrics, the epoch history, the training summary, the parameter count, for
multi-task teachers the reconstruction PSNR and, for runs on simulated sites, the test evaluation without them.
A report can be re-rendered from these files alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medkd.evaluate.runner import TEST_WITHOUT_SITES
from medkd.io import atomic_write_json
from medkd.run import RunFolder, read_json

__all__ = ["RunRecord", "collect_runs", "load_records", "read_record"]


@dataclass
class RunRecord:
    """What the report needs from one finished run."""

    name: str
    kind: str
    cell: str
    seed: int
    model_key: str
    objective: str | None
    teacher_key: str | None
    config: dict[str, Any]
    summary: dict[str, Any]
    per_case: list[dict[str, Any]]
    epochs: list[dict[str, Any]] = field(default_factory=list)
    train: dict[str, Any] = field(default_factory=dict)
    params: int | None = None
    reconstruction: dict[str, Any] | None = None
    #: the test cases scored without their simulated sites (``medkd evaluate --without-sites``): the summary and
    #: the per-case metrics, or None when the run has no such evaluation
    without_sites: dict[str, Any] | None = None

    @property
    def row(self) -> str:
        """The run's name without cell and seed, e.g. ``student-enet/baseline``."""
        return self.name.split("/", 1)[1].rsplit("/seed", 1)[0]

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _optional(path: Path) -> Any:
    """``path``'s JSON, or None when the file does not exist."""
    return read_json(path) if path.is_file() else None


def read_record(run: RunFolder, entry: dict[str, Any]) -> RunRecord | None:
    """The record of one grid entry from its run folder, or None when the run has no test evaluation yet."""
    if not run.has_evaluation():
        return None
    return RunRecord(
        name=entry["name"], kind=entry["kind"], cell=entry["cell"], seed=entry["seed"],
        model_key=entry["model_key"], objective=entry.get("objective"), teacher_key=entry.get("teacher_key"),
        config=entry["config"], summary=run.evaluation(), per_case=run.per_case(), epochs=run.epoch_metrics(),
        train=run.summary() if run.has_summary() else {}, params=run.parameter_count(),
        reconstruction=run.reconstruction(), without_sites=_without_sites(run),
    )


def _without_sites(run: RunFolder) -> dict[str, Any] | None:
    """The run's evaluation of the test cases without their simulated sites, when it has one."""
    if not run.has_evaluation(TEST_WITHOUT_SITES):
        return None
    return {"summary": run.evaluation(TEST_WITHOUT_SITES), "per_case": run.per_case(TEST_WITHOUT_SITES)}


def collect_runs(folder: Path, out: Path) -> list[RunRecord]:
    """Read every finished run of ``folder/index.json`` and write ``out/runs/<name>.json`` for each.

    Returns:
        The records of the finished runs, in grid order.

    Raises:
        MedkdError: ``index.json`` is missing or unreadable, or a finished run's files are.
    """
    index = read_json(Path(folder) / "index.json", "not found; run `medkd experiment run` first")
    records = []
    for entry in index["runs"]:
        rec = read_record(RunFolder(Path(folder) / "runs" / entry["name"]), entry)
        if rec is None:
            continue
        records.append(rec)
        atomic_write_json(Path(out) / "runs" / f"{entry['name']}.json", rec.to_json())
    return records


def load_records(out: Path, index: dict[str, Any]) -> list[RunRecord]:
    """Read the records written by :func:`collect_runs` (in grid order; missing runs left out)."""
    records = []
    for entry in index["runs"]:
        data = _optional(Path(out) / "runs" / f"{entry['name']}.json")
        if data is not None:
            records.append(RunRecord(**data))
    return records
