"""Fixtures for report tests: synthetic per-run results (no training) written as a results folder."""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import yaml

from medkd.evaluate.metrics import summarize
from medkd.experiment.collect import RunRecord

CLASSES = ("RV", "MYO", "LV")


def per_case_records(level: float, n_cases: int, classes: tuple[str, ...] = CLASSES, seed: int = 0,
                     site: str = "site1") -> list[dict[str, Any]]:
    """Per-case records whose Dice is about ``level`` (case k adds 0.01 * k, so pairs differ case by case)."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n_cases):
        metrics = {}
        for j, cls in enumerate(classes):
            dice = float(np.clip(level + 0.01 * k + 0.02 * j + rng.normal(0, 0.005), 0, 1))
            metrics[cls] = {"dice": dice, "iou": dice / (2 - dice), "precision": dice, "recall": dice,
                            "hd95": 10 * (1 - dice), "status": "ok"}
        out.append({"case": f"case{k:02d}", "site": site, "metrics": metrics})
    return out


def make_record(name: str, kind: str, model_key: str, level: float, objective: str | None = None,
                teacher_key: str | None = None, seed: int = 0, n_cases: int = 8,
                classes: tuple[str, ...] = CLASSES) -> RunRecord:
    """A finished run's record with synthetic test results around ``level``."""
    cell = name.split("/", 1)[0]
    per_case = per_case_records(level, n_cases, classes, seed=zlib.crc32(name.encode()))
    summary = summarize(per_case, group_key="site")
    epochs = [{"kind": "epoch", "epoch": e, "train_seg": 1.0 / e, "val_dice": level * e / 3} for e in (1, 2, 3)]
    config = {"data": {"root": "data2d", "dim": 2, "size": [32, 32]}, "model": {"name": model_key}}
    return RunRecord(name=name, kind=kind, cell=cell, seed=seed, model_key=model_key, objective=objective,
                     teacher_key=teacher_key, config=config, summary=summary, per_case=per_case, epochs=epochs,
                     train={"train_seconds": 1.0}, params=123_000 if kind == "student" else 1_500_000)


def grid_records(cell: str = "fixed", seeds: int = 2, classes: tuple[str, ...] = CLASSES) -> list[RunRecord]:
    """Teacher t, student s alone (``baseline``) and distilled (``full`` from t), ``seeds`` seeds each."""
    recs = []
    for seed in range(seeds):
        recs.append(make_record(f"{cell}/teacher-t/seed{seed}", "teacher", "t", 0.85, seed=seed, classes=classes))
    for seed in range(seeds):
        recs.append(make_record(f"{cell}/student-s/baseline/seed{seed}", "student", "s", 0.6, "baseline",
                                seed=seed, classes=classes))
    for seed in range(seeds):
        recs.append(make_record(f"{cell}/student-s/full-from-t/seed{seed}", "student", "s", 0.7, "full", "t",
                                seed=seed, classes=classes))
    return recs


def write_results(folder: Path, records: list[RunRecord], study: str | None, preset: dict | None = None,
                  protocol: dict | None = None) -> Path:
    """A results folder (``index.json``, ``preset.yaml``, ``runs/<name>.json``) as ``collect_runs`` writes it."""
    index = {"study": study, "title": f"tiny {study}", "preset": "p.yaml", "budget": "quick",
             "budget_description": "tiny.", "cuts": [], "seeds": 2,
             "protocol": protocol or {"kind": "fixed", "sites": None, "folds": None, "simulated": False},
             "baseline": "baseline", "headline": "full", "hardware": "CPU test",
             "runs": [{"name": r.name, "kind": r.kind, "cell": r.cell, "seed": r.seed, "model_key": r.model_key,
                       "objective": r.objective, "teacher_key": r.teacher_key, "config": r.config,
                       "status": "done"} for r in records]}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "index.json").write_text(json.dumps(index))
    (folder / "preset.yaml").write_text(yaml.safe_dump(preset or {
        "title": "tiny", "teachers": {"t": {"label": "Big"}}, "students": {"s": {"label": "Small"}},
        "objectives": {"baseline": {}, "full": {"label": "Full KD"}}}))
    for rec in records:
        path = folder / "runs" / f"{rec.name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rec.to_json()))
    return folder


@pytest.fixture
def fakes() -> SimpleNamespace:
    """The helpers above, for tests (conftest modules are not importable under importlib mode)."""
    return SimpleNamespace(per_case_records=per_case_records, make_record=make_record, grid_records=grid_records,
                           write_results=write_results, classes=CLASSES)


@pytest.fixture
def results_folder(tmp_path: Path):
    """Factory: ``results_folder(study, classes=..., name=...)`` -> a written results folder."""
    def _make(study: str | None, classes: tuple[str, ...] = CLASSES, name: str = "results") -> Path:
        return write_results(tmp_path / name, grid_records(classes=classes), study)
    return _make


@pytest.fixture(scope="session")
def tiny_experiment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished experiment without ``study:``: teacher t, student s alone and distilled, one seed, 2 steps."""
    from medkd.data.synthetic import generate_dataset
    from medkd.experiment.runner import run_experiment

    train = {"epochs": 1, "batch_size": 4, "max_steps_per_epoch": 2, "progress": False, "threads": 1}
    preset = {
        "title": "tiny generic", "baseline": "baseline", "headline": "kd",
        "base": {"data": {"root": "data2d", "dim": 2, "size": [32, 32], "split": {"val": 0.2, "test": 0.3}},
                 "train": train, "evaluate": {"batch_size": 8}},
        "teachers": {"t": {"model": {"name": "unet_s1"}}}, "students": {"s": {"model": {"name": "unet_s1"}}},
        "objectives": {"baseline": {"seg_loss": "dice"},
                       "kd": {"seg_loss": "dice", "terms": [{"loss": "logits_kl", "weight": 0.5}]}},
        "budgets": {"quick": {"seeds": 1}},
    }
    root = tmp_path_factory.mktemp("tiny_exp")
    generate_dataset(root / "data2d", dim=2, cases=10, sites=2, modalities=1, seed=0, size=(32, 32))
    (root / "preset.yaml").write_text(yaml.safe_dump(preset, sort_keys=False))
    cwd = Path.cwd()
    os.chdir(root)  # relative data paths, as experiments are run from the project root
    try:
        run_experiment(root / "preset.yaml", root / "exp", "quick", device="cpu", echo=lambda s: None)
    finally:
        os.chdir(cwd)
    return root / "exp"
