"""A tiny run folder built without training: the real writer, random (seeded) weights, a hand-written log."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from medkd.config import RunConfig
from medkd.data.loader import build_bundle
from medkd.run import RunFolder, build_network, resolve_paths
from medkd.train.checkpoint import save_best, save_checkpoint

#: metrics.jsonl lines of the fake run: two epochs, one step each.
RECORDS: list[dict[str, Any]] = [
    {"kind": "step", "epoch": 1, "step": 1, "loss": 1.5},
    {"kind": "epoch", "epoch": 1, "loss": 1.4, "val_dice": 0.25},
    {"kind": "step", "epoch": 2, "step": 2, "loss": 1.1},
    {"kind": "epoch", "epoch": 2, "loss": 1.0, "val_dice": 0.5},
]
SUMMARY: dict[str, Any] = {"epochs": 2, "best": {"epoch": 2, "val_dice": 0.5}, "train_seconds": 1.25}


def build_run(cfg: RunConfig, run_dir: Path) -> RunFolder:
    """Write a finished two-epoch run folder of ``cfg`` (best = epoch 2 weights, epoch 1 weights all zero)."""
    cfg = resolve_paths(cfg)
    bundle = build_bundle(cfg)
    run = RunFolder(run_dir)
    run.prepare(cfg, bundle)
    torch.manual_seed(0)
    net = build_network(cfg.model, bundle.in_channels, bundle.num_classes, cfg.data.dim)
    save_checkpoint(run.checkpoints, 1, {k: v * 0 for k, v in net.state_dict().items()}, {}, {"epoch": 1})
    save_checkpoint(run.checkpoints, 2, net.state_dict(), {}, {"epoch": 2})
    save_best(run.checkpoints, net.state_dict(), {"epoch": 2, "val_dice": 0.5})
    for record in RECORDS:
        run.log(record)
    run.write_summary(SUMMARY)
    return run


@pytest.fixture(scope="session")
def built_run(synth2d: Path, make_run_config: Any, tmp_path_factory: pytest.TempPathFactory) -> RunFolder:
    """One tiny unet_s1 run folder per session (read-only: tests that change files use ``fresh_run``)."""
    return build_run(make_run_config(synth2d), tmp_path_factory.mktemp("runs") / "tiny")


@pytest.fixture
def fresh_run(built_run: RunFolder, tmp_path: Path) -> RunFolder:
    """A private copy of ``built_run`` a test may change."""
    return RunFolder(Path(shutil.copytree(built_run.path, tmp_path / "run")))
