"""Collect an experiment folder's finished runs into portable JSON records (no checkpoints, no machine paths).

``OUT/runs/<run name>.json`` holds, per run: the grid entry (kind, cell, seed, model, objective, teacher,
the run config as the preset expanded it, with relative data paths and the teacher given by run name), the
test summary and per-case metrics, the epoch history, the training summary, the parameter count and, for
multi-task teachers, the reconstruction PSNR. A report can be re-rendered from these files alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medkd.errors import MedkdError
from medkd.io import atomic_write_json

__all__ = ["RunRecord", "collect_runs", "load_records"]


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

    @property
    def row(self) -> str:
        """The run's name without cell and seed, e.g. ``student-enet/baseline``."""
        return self.name.split("/", 1)[1].rsplit("/seed", 1)[0]

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _params(run_dir: Path) -> int | None:
    from safetensors import safe_open

    path = run_dir / "checkpoints" / "best.safetensors"
    if not path.is_file():
        return None
    total = 0
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
                continue
            shape = f.get_slice(key).get_shape()
            n = 1
            for d in shape:
                n *= int(d)
            total += n
    return total


def collect_runs(folder: Path, out: Path) -> list[RunRecord]:
    """Read every finished run of ``folder/index.json`` and write ``out/runs/<name>.json`` for each.

    Returns:
        The records of the finished runs, in grid order.
    """
    index = _read_json(Path(folder) / "index.json")
    if index is None:
        raise MedkdError(f"{folder}: no index.json; run `medkd experiment run` first")
    records = []
    for entry in index["runs"]:
        run_dir = Path(folder) / "runs" / entry["name"]
        summary = _read_json(run_dir / "evaluation" / "summary.json")
        if summary is None:
            continue
        lines = (run_dir / "metrics.jsonl").read_text().splitlines() if (run_dir / "metrics.jsonl").is_file() else []
        epochs = [r for r in (json.loads(x) for x in lines if x.strip()) if r.get("kind") == "epoch"]
        rec = RunRecord(
            name=entry["name"], kind=entry["kind"], cell=entry["cell"], seed=entry["seed"],
            model_key=entry["model_key"], objective=entry.get("objective"), teacher_key=entry.get("teacher_key"),
            config=entry["config"], summary=summary,
            per_case=_read_json(run_dir / "evaluation" / "per_case.json") or [], epochs=epochs,
            train=_read_json(run_dir / "train_summary.json") or {}, params=_params(run_dir),
            reconstruction=_read_json(run_dir / "evaluation" / "reconstruction.json"),
        )
        records.append(rec)
        atomic_write_json(Path(out) / "runs" / f"{entry['name']}.json", rec.to_json())
    return records


def load_records(out: Path, index: dict[str, Any]) -> list[RunRecord]:
    """Read the records written by :func:`collect_runs` (in grid order; missing runs left out)."""
    records = []
    for entry in index["runs"]:
        data = _read_json(Path(out) / "runs" / f"{entry['name']}.json")
        if data is not None:
            records.append(RunRecord(**data))
    return records
