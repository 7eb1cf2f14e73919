"""Shared fixtures: tiny synthetic datasets and run configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from medkd.config import parse_config

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Runs in tests keep their prepared-sample cache in a temporary folder, never in ~/.cache/medkd."""
    old = os.environ.get("MEDKD_CACHE")
    os.environ["MEDKD_CACHE"] = str(tmp_path_factory.mktemp("medkd_cache"))
    yield
    if old is None:
        os.environ.pop("MEDKD_CACHE", None)
    else:
        os.environ["MEDKD_CACHE"] = old


@pytest.fixture(autouse=True)
def _fresh_cache(tmp_path_factory, monkeypatch):
    """Every test starts with an empty prepared-sample cache (tests that count file reads stay order-independent)."""
    monkeypatch.setenv("MEDKD_CACHE", str(tmp_path_factory.mktemp("medkd_cache")))


@pytest.fixture(autouse=True)
def _small_threads():
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def synth2d(tmp_path_factory) -> Path:
    """16 tiny 2D synthetic cases from 2 sites (created once per test session)."""
    from medkd.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("synth") / "synth2d"
    generate_dataset(root, dim=2, cases=16, sites=2, modalities=1, seed=0, size=(48, 48))
    return root


@pytest.fixture(scope="session")
def synth2d_mm(tmp_path_factory) -> Path:
    """12 tiny 2D synthetic cases with 2 modalities."""
    from medkd.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("synth") / "synth2d_mm"
    generate_dataset(root, dim=2, cases=12, sites=2, modalities=2, seed=1, size=(48, 48))
    return root


def tiny_config(root: Path, **overrides) -> dict:
    """A small 2D run config dict on ``root`` (override sections by keyword)."""
    cfg = {
        "name": "tiny",
        "seed": 0,
        "data": {"root": str(root), "dim": 2, "size": [32, 32], "split": {"val": 0.2, "test": 0.2, "seed": 0}},
        "model": {"name": "unet_s1"},
        "train": {"epochs": 2, "batch_size": 4, "optimizer": {"name": "adam", "lr": 0.003}, "progress": False},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def tiny_run_config(root: Path, **overrides):
    return parse_config(tiny_config(root, **overrides))


@pytest.fixture(scope="session")
def make_config():
    """Factory fixture: ``make_config(root, **section_overrides)`` -> config dict."""
    return tiny_config


@pytest.fixture(scope="session")
def make_run_config():
    """Factory fixture: ``make_run_config(root, **section_overrides)`` -> RunConfig."""
    return tiny_run_config


def _write_untrained_run(cfg, run_dir: Path):
    """A run folder of ``cfg`` with seeded (torch seed 0), untrained weights: config, split and best weights,
    what training writes first."""
    from medkd.data.loader import build_bundle
    from medkd.run import RunFolder, build_network, resolve_paths
    from medkd.train.checkpoint import save_best

    cfg = resolve_paths(cfg)
    bundle = build_bundle(cfg)
    run = RunFolder(run_dir)
    run.prepare(cfg, bundle)
    torch.manual_seed(0)
    net = build_network(cfg.model, bundle.in_channels, bundle.num_classes, cfg.data.dim)
    save_best(run.checkpoints, net.state_dict(), {"epoch": 1})
    return run


@pytest.fixture(scope="session")
def untrained_run():
    """Factory ``(cfg, run_dir) -> RunFolder``: a run folder with seeded, untrained best weights."""
    return _write_untrained_run
