"""HD95's two definitions against a hand computation, and what `evaluate` says about an unfinished run (issue 12)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medkd.config import parse_config
from medkd.evaluate.metrics import HD95, binary_metrics, case_metrics
from medkd.evaluate.runner import evaluate_run
from medkd.train import trainer as trainer_mod
from medkd.train.trainer import train


def _surface(mask: np.ndarray) -> np.ndarray:
    """Coordinates of the mask's voxels that have a 4-neighbour outside the mask (mask minus its erosion)."""
    padded = np.pad(mask, 1)
    inner = padded[1:-1, 1:-1].copy()
    for shift in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        inner &= np.roll(padded, shift, axis=(0, 1))[1:-1, 1:-1]
    return np.argwhere(mask & ~inner).astype(float)


def _directed(a: np.ndarray, b: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
    """For every surface point of ``a``: the Euclidean distance (mm) to the nearest surface point of ``b``."""
    pa, pb = _surface(a) * spacing, _surface(b) * spacing
    return np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1)).min(1)


@pytest.fixture
def masks() -> tuple[np.ndarray, np.ndarray]:
    """A reference square; the prediction is it shifted by one voxel plus a far-away 2x2 blob (an outlier)."""
    ref = np.zeros((40, 40), bool)
    ref[8:18, 8:18] = True
    pred = np.zeros_like(ref)
    pred[9:19, 9:19] = True
    pred[30:32, 30:32] = True
    return pred, ref


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (1.0, 2.5)])
def test_hd95_definitions_match_a_hand_computation(masks, spacing):
    pred, ref = masks
    d_pr, d_rp = _directed(pred, ref, spacing), _directed(ref, pred, spacing)
    monai = max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))
    pooled = np.percentile(np.concatenate([d_pr, d_rp]), 95)
    assert monai > pooled + 1.0  # the outlying blob weighs on one direction only: the two definitions differ
    assert binary_metrics(pred, ref, spacing)["hd95"] == pytest.approx(monai, rel=1e-5)  # default: MONAI's
    assert binary_metrics(pred, ref, spacing, hd95="monai")["hd95"] == pytest.approx(monai, rel=1e-5)
    assert binary_metrics(pred, ref, spacing, hd95="pooled")["hd95"] == pytest.approx(pooled, rel=1e-5)
    labels = pred.astype(int), ref.astype(int)
    assert case_metrics(*labels, {"fg": 1}, spacing, hd95="pooled")["fg"]["hd95"] == pytest.approx(pooled, rel=1e-5)


def test_unknown_hd95_definition_is_a_config_error(masks):
    from medkd.errors import ConfigError

    with pytest.raises(ConfigError, match="evaluate.hd95: unknown definition 'mean'"):
        binary_metrics(*masks, hd95="mean")
    with pytest.raises(ConfigError, match="evaluate.hd95"):
        parse_config({"data": {"root": "x"}, "model": {"name": "enet"}, "evaluate": {"hd95": "mean"}})


def test_evaluate_states_the_hd95_definition_and_whether_the_run_finished(synth2d, tmp_path, monkeypatch,
                                                                          make_run_config, capsys):
    cfg = make_run_config(synth2d, train={"epochs": 2, "batch_size": 4, "progress": False, "threads": 1},
                          evaluate={"hd95": "pooled"})
    real_iter = trainer_mod.iter_indexed_batches
    calls = {"n": 0}

    def killed_in_epoch_two(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_iter(*args, **kwargs)

    monkeypatch.setattr(trainer_mod, "iter_indexed_batches", killed_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "run", device="cpu")
    monkeypatch.setattr(trainer_mod, "iter_indexed_batches", real_iter)
    capsys.readouterr()
    summary = evaluate_run(tmp_path / "run", "test", "cpu", progress=False)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: ") and "has not finished (1 of 2 epochs)" in err
    written = json.loads((tmp_path / "run" / "evaluation" / "summary.json").read_text())
    assert written["finished"] is False and written["epoch"] == 1 and summary["finished"] is False
    assert written["hd95_definition"] == HD95["pooled"]

    train(cfg, tmp_path / "run", resume=True, device="cpu")
    summary = evaluate_run(tmp_path / "run", "test", "cpu", progress=False)
    assert "warning" not in capsys.readouterr().err
    best = json.loads((tmp_path / "run" / "checkpoints" / "best.json").read_text())["epoch"]
    assert summary["finished"] is True and summary["epoch"] == best


def test_summary_states_monai_definition_by_default(synth2d, tmp_path, make_run_config):
    cfg = make_run_config(synth2d, train={"epochs": 1, "batch_size": 4, "progress": False, "threads": 1})
    train(cfg, tmp_path / "run", device="cpu")
    summary = evaluate_run(tmp_path / "run", "test", "cpu", progress=False)
    assert summary["hd95_definition"] == "max of directed 95th percentiles (MONAI)"
    assert summary["finished"] is True and summary["epoch"] == 1
