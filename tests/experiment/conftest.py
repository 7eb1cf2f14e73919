"""A tiny finished experiment (generic preset, one seed, a few training steps) shared by the collect tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

TRAIN = {"epochs": 1, "batch_size": 4, "max_steps_per_epoch": 2, "progress": False, "threads": 1,
         "optimizer": {"lr": 1.0e-3}}


def tiny_preset(data_root: str) -> dict:
    """Teacher t, student s alone and distilled from t (logits KL), no ``study:`` (the generic layout)."""
    return {
        "title": "tiny generic", "baseline": "baseline", "headline": "kd",
        "base": {"data": {"root": data_root, "dim": 2, "size": [32, 32], "split": {"val": 0.2, "test": 0.3}},
                 "train": TRAIN, "evaluate": {"batch_size": 8}},
        "teachers": {"t": {"model": {"name": "unet_s1"}}},
        "students": {"s": {"model": {"name": "unet_s1"}}},
        "objectives": {"baseline": {"seg_loss": "dice"},
                       "kd": {"seg_loss": "dice", "terms": [{"loss": "logits_kl", "weight": 0.5}]}},
        "budgets": {"quick": {"seeds": 1}},
    }


@pytest.fixture(scope="module")
def tiny_experiment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``EXP/`` with index.json, preset.yaml and three evaluated run folders (teacher, baseline, kd)."""
    from medkd.data.synthetic import generate_dataset
    from medkd.experiment.runner import run_experiment

    root = tmp_path_factory.mktemp("tiny_exp")
    generate_dataset(root / "data2d", dim=2, cases=10, sites=2, modalities=1, seed=0, size=(32, 32))
    preset = root / "preset.yaml"
    preset.write_text(yaml.safe_dump(tiny_preset("data2d"), sort_keys=False))
    cwd = Path.cwd()
    os.chdir(root)  # relative data paths, as experiments are run from the project root
    try:
        index = run_experiment(preset, root / "exp", "quick", device="cpu", echo=lambda s: None)
    finally:
        os.chdir(cwd)
    assert [r["status"] for r in index["runs"]] == ["done"] * 3
    return root / "exp"
