"""A tiny run folder built without training: the real writer, random (seeded) weights, a hand-written log."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from medkd.config import RunConfig
from medkd.run import RunFolder
from medkd.train.checkpoint import save_best, save_checkpoint

#: metrics.jsonl lines of the fake run: two epochs, one step each.
RECORDS: list[dict[str, Any]] = [
    {"kind": "step", "epoch": 1, "step": 1, "loss": 1.5},
    {"kind": "epoch", "epoch": 1, "loss": 1.4, "val_dice": 0.25},
    {"kind": "step", "epoch": 2, "step": 2, "loss": 1.1},
    {"kind": "epoch", "epoch": 2, "loss": 1.0, "val_dice": 0.5},
]
SUMMARY: dict[str, Any] = {"epochs": 2, "best": {"epoch": 2, "val_dice": 0.5}, "train_seconds": 1.25}


def build_run(untrained_run: Any, cfg: RunConfig, run_dir: Path) -> RunFolder:
    """Write a finished two-epoch run folder of ``cfg`` (best = epoch 2 weights, epoch 1 weights all zero) on top
    of the ``untrained_run`` fixture's folder."""
    run = untrained_run(cfg, run_dir)
    state = load_file(str(run.best_weights))
    save_checkpoint(run.checkpoints, 1, {k: v * 0 for k, v in state.items()}, {}, {"epoch": 1})
    save_checkpoint(run.checkpoints, 2, state, {}, {"epoch": 2})
    save_best(run.checkpoints, state, {"epoch": 2, "val_dice": 0.5})
    for record in RECORDS:
        run.log(record)
    run.write_summary(SUMMARY)
    return run


@pytest.fixture(scope="session")
def built_run(synth2d: Path, make_run_config: Any, untrained_run: Any,
              tmp_path_factory: pytest.TempPathFactory) -> RunFolder:
    """One tiny unet_s1 run folder per session (read-only: tests that change files use ``fresh_run``)."""
    return build_run(untrained_run, make_run_config(synth2d), tmp_path_factory.mktemp("runs") / "tiny")


@pytest.fixture
def fresh_run(built_run: RunFolder, tmp_path: Path) -> RunFolder:
    """A private copy of ``built_run`` a test may change."""
    return RunFolder(Path(shutil.copytree(built_run.path, tmp_path / "run")))
