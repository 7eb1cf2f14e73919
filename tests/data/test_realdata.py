"""Short teacher trainings on the real datasets in ``../shared/data``, from a config, then evaluation.

Each is a smoke test of the whole path on real files (CPU, one epoch, a few steps, a few cases): ACDC 2D
with its explicit ``splits.json``, the BraTS sample with FLAIR + T1c as 2D slices (scored by region), and
Hippocampus 3D patches. Measured on 1 CPU thread of a shared 2-core machine: ACDC 2-7 s, BraTS 8-20 s,
Hippocampus 3-5 s.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from medkd.config import parse_config

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"real datasets not found at {SHARED_DATA}"),
]


def _train_and_evaluate(text: str, tmp_path: Path) -> tuple[dict, dict, list[dict]]:
    from medkd.evaluate.runner import evaluate_run
    from medkd.train.trainer import train

    cfg = parse_config(yaml.safe_load(text.replace("DATA", str(SHARED_DATA))), source="test yaml")
    run = tmp_path / "run"
    result = train(cfg, run, device="cpu")
    assert result.epochs == 1 and result.final_loss == result.final_loss  # finite, not NaN
    summary = evaluate_run(run, None, "cpu", progress=False)
    split = json.loads((run / "split.json").read_text())
    with (run / "evaluation" / "per_case.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    return summary, split, rows


def test_acdc_2d_teacher_from_yaml(tmp_path):
    summary, split, rows = _train_and_evaluate("""
name: acdc_smoke
data:
  root: DATA/acdc
  dim: 2
  size: [64, 64]
  normalize: zscore
  max_cases: 3
  split: {file: splits.json}
model: {name: unet_s1}
train: {epochs: 1, batch_size: 4, max_steps_per_epoch: 3, progress: false}
""", tmp_path)
    official = json.loads((SHARED_DATA / "acdc" / "splits.json").read_text())
    assert split["format"] == "nnunet" and split["channels"] == ["cine-MRI"]
    assert split["classes"] == ["background", "RV", "MYO", "LV"]
    for part in ("train", "val", "test"):
        assert split[part] == official[part][:3]
    assert summary["n_cases"] == 3 and summary["split"] == "test"
    assert set(summary["classes"]) == {"RV", "MYO", "LV"}
    assert {r["case"] for r in rows} == set(official["test"][:3])
    for r in rows:  # every test case holds every structure, and the scores are proper fractions
        assert int(r["ref_voxels"]) > 0
        assert 0.0 <= float(r["dice"]) <= 1.0


def test_brats_flair_t1c_2d_teacher_scored_by_region(tmp_path):
    summary, split, rows = _train_and_evaluate("""
name: brats_smoke
data:
  root: DATA/brats2015-sample
  dim: 2
  size: [48, 48]
  channels: [FLAIR, T1c]
  normalize: zscore_nonzero
  foreground_slices_only: true
  max_cases: 2
  split: {val: 0.0, test: 0.2, seed: 0}
model: {name: unet_s1}
train: {epochs: 1, batch_size: 4, max_steps_per_epoch: 3, progress: false}
evaluate:
  classes: false
  regions: {WT: [1, 2, 3, 4], TC: [1, 3, 4], ET: [4]}
""", tmp_path)
    assert split["channels"] == ["FLAIR", "T1c"]
    assert split["classes"] == ["background", "necrosis", "edema", "non-enhancing", "enhancing"]
    assert summary["channels"] == ["FLAIR", "T1c"]
    assert set(summary["classes"]) == {"WT", "TC", "ET"}
    assert len(split["train"]) == 2 and split["val"] == [] and len(split["test"]) == 1
    wt = [r for r in rows if r["class"] == "WT"]
    et = [r for r in rows if r["class"] == "ET"]
    assert len(wt) == summary["n_cases"] >= 1
    # WT unites every tumour label, so it holds at least the enhancing voxels of ET
    for w, e in zip(wt, et):
        assert int(w["ref_voxels"]) >= int(e["ref_voxels"]) > 0


def test_hippocampus_3d_teacher_from_yaml(tmp_path):
    summary, split, rows = _train_and_evaluate("""
name: hippo_smoke
data:
  root: DATA/hippocampus/Task04_Hippocampus
  dim: 3
  size: [32, 32, 32]
  normalize: zscore
  max_cases: 3
  patches_per_case: 2
  split: {val: 0.1, test: 0.1, seed: 0}
model: {name: unet3d_small}
train: {epochs: 1, batch_size: 2, max_steps_per_epoch: 3, progress: false}
""", tmp_path)
    assert split["format"] == "msd" and split["classes"] == ["background", "Anterior", "Posterior"]
    assert len(split["train"]) == len(split["test"]) == 3
    assert summary["n_cases"] == 3 and set(summary["classes"]) == {"Anterior", "Posterior"}
    assert all(r["case"].startswith("hippocampus_") for r in rows)
