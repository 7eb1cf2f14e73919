"""One tiny experiment of each study kind on synthetic data: run, skip-finished, resume, report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from medkd.experiment.runner import run_experiment, run_status

TRAIN = {"epochs": 1, "batch_size": 4, "max_steps_per_epoch": 2, "progress": False, "threads": 1,
         "optimizer": {"lr": 1.0e-3}}


def _write(path: Path, preset: dict) -> Path:
    path.write_text(yaml.safe_dump(preset, sort_keys=False))
    return path


def _paper_a_style() -> dict:
    return {
        "study": "paper_a", "title": "tiny A", "baseline": "baseline", "headline": "full",
        "base": {"data": {"root": "data2d", "dim": 2, "size": [32, 32], "split": {"val": 0.2},
                          "simulate_sites": {"k": 2, "seed": 0}},
                 "train": TRAIN, "evaluate": {"batch_size": 8}},
        "protocol": {"kind": "sites", "sites": ["site1", "site2"], "simulated": True},
        "teachers": {"t": {"label": "Teacher", "model": {"name": "monai.BasicUNet",
                                                         "kwargs": {"features": [4, 4, 8, 8, 16, 4]}}}},
        "students": {"s": {"label": "Student", "model": {"name": "unet_s1"}}},
        "objectives": {"baseline": {"seg_loss": "focal_dice"},
                       "full": {"study": "paper_a", "terms": [
                           {"loss": "logits_kl", "weight": 0.2}, {"loss": "affinity", "weight": 0.9}]}},
        "budgets": {"quick": {"seeds": 2, "cells": ["sites-site1"], "cuts": ["site2 not run"]}},
    }


def test_paper_a_style_run_skip_resume_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medkd.data.synthetic import generate_dataset
    from medkd.report.study import render_report

    monkeypatch.chdir(tmp_path)
    generate_dataset(tmp_path / "data2d", dim=2, cases=10, sites=2, modalities=1, seed=0, size=(32, 32))
    (tmp_path / "data2d" / "sites.json").unlink()  # one acquisition: the sites are simulated, as on ACDC
    preset = _write(tmp_path / "a.yaml", _paper_a_style())
    lines: list[str] = []
    index = run_experiment(preset, tmp_path / "exp", "quick", echo=lines.append)
    names = [r["name"] for r in index["runs"]]
    assert names == ["sites-site1/teacher-t/seed0", "sites-site1/teacher-t/seed1",
                     "sites-site1/student-s/baseline/seed0", "sites-site1/student-s/baseline/seed1",
                     "sites-site1/student-s/full-from-t/seed0", "sites-site1/student-s/full-from-t/seed1"]
    assert all(r["status"] == "done" for r in index["runs"])
    assert lines[0].startswith("[1/6] sites-site1/teacher-t/seed0 ...")
    kd_dir = tmp_path / "exp" / "runs" / "sites-site1/student-s/full-from-t/seed1"
    cfg = yaml.safe_load((kd_dir / "config.yaml").read_text())
    assert cfg["distill"]["teacher"]["run"].endswith("sites-site1/teacher-t/seed1")
    split = json.loads((kd_dir / "split.json").read_text())
    assert split["test"] and all(c in split["test"] for c in split["test"])
    assert json.loads((tmp_path / "exp" / "index.json").read_text())["runs"][0]["status"] == "done"
    for name in names:  # every run is also scored on its test volumes without the simulated site
        clean = tmp_path / "exp" / "runs" / name / "evaluation" / "test-without-sites" / "summary.json"
        assert json.loads(clean.read_text())["without_sites"] is True

    # finished runs are skipped; a run without its evaluation is evaluated again, not retrained
    summary = kd_dir / "evaluation" / "summary.json"
    stamp = summary.stat().st_mtime_ns
    base_dir = tmp_path / "exp" / "runs" / "sites-site1/student-s/baseline/seed0"
    ckpt = (base_dir / "checkpoints" / "best.safetensors").stat().st_mtime_ns
    (base_dir / "evaluation" / "summary.json").unlink()
    assert run_status(base_dir) == "trained"
    clean_t0 = tmp_path / "exp" / "runs" / "sites-site1/teacher-t/seed0" / "evaluation" / "test-without-sites"
    kept = json.loads((clean_t0 / "summary.json").read_text())
    shutil.rmtree(clean_t0)  # a finished run without this evaluation gets it on the next invocation
    lines.clear()
    run_experiment(preset, tmp_path / "exp", "quick", echo=lines.append)
    assert sum("finished earlier, skipped" in line for line in lines) == 5
    assert summary.stat().st_mtime_ns == stamp
    assert run_status(base_dir) == "done"
    assert (base_dir / "checkpoints" / "best.safetensors").stat().st_mtime_ns == ckpt
    assert json.loads((clean_t0 / "summary.json").read_text()) == kept

    # dry run prints the grid with statuses
    lines.clear()
    run_experiment(preset, tmp_path / "exp", "quick", dry_run=True, echo=lines.append)
    assert "[6/6] sites-site1/student-s/full-from-t/seed1 (unet_s1) <- sites-site1/teacher-t/seed1 [done]" in lines[0]

    md, html = render_report(tmp_path / "exp", tmp_path / "results")
    text = md.read_text()
    assert ("| method | params | target site1 | mean | Δ vs w/o KD | "
            "p (volumes, Wilcoxon) | p (seeds, paired t) | 95% CI (bootstrap seeds x volumes) | n |") in text
    assert "sites are SIMULATED" in text and "budget: quick" in text and "site2 not run" in text
    assert "Student w/ KD" in text and "Teacher Teacher" in text
    assert "## What the unseen site costs" in text and "| Student: full ← Teacher | 2 |" in text
    assert "## Closing note" in text and "## Headline" in text
    assert (tmp_path / "results" / "figures" / "training_curves.png").stat().st_size > 1000
    assert (tmp_path / "results" / "figures" / "qualitative.png").stat().st_size > 1000
    assert "<table>" in html.read_text()
    results = list((tmp_path / "results" / "runs").rglob("*.json"))
    assert len(results) == 6
    for path in results + [tmp_path / "results" / "index.json"]:
        assert str(tmp_path) not in path.read_text()  # no machine paths in the results
    rec = json.loads(results[0].read_text())
    assert {"summary", "per_case", "epochs", "params", "config"} <= set(rec)
    # the results folder alone re-renders (as committed, without checkpoints)
    md2, _ = render_report(tmp_path / "results")
    assert "target site1" in md2.read_text()


def test_thesis_b_style_reconstruction_and_anova(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medkd.data.synthetic import generate_dataset
    from medkd.report.study import render_report

    monkeypatch.chdir(tmp_path)
    generate_dataset(tmp_path / "data2d", dim=2, cases=16, sites=2, modalities=1, seed=1, size=(32, 32))
    preset = {
        "study": "thesis_b", "title": "tiny B", "baseline": "baseline", "headline": "con-B-pmd",
        "base": {"data": {"root": "data2d", "dim": 2, "size": [32, 32], "split": {"val": 0.2, "test": 0.3}},
                 "train": {**TRAIN, "batch_size": 2}},
        "teachers": {"t1": {"model": {"name": "multitask_unet", "kwargs": {"widths": [4, 8, 8, 16, 16]}},
                            "config": {"train": {"seg_loss": {"name": "dice_bce"}}}}},
        "students": {"s1": {"model": {"name": "unet_s1"}, "config": {"data": {"train_fraction": 0.5}}}},
        "objectives": {
            "baseline": {"seg_loss": "dice"},
            "con-B-pmd": {"seg_loss": "dice", "seg_weight": 0.4, "terms": [
                {"loss": "contrastive", "weight": 0.2, "tap": "bottleneck", "dim": 16},
                {"loss": "logits_kl", "weight": 0.2, "temperature": 4.0}]},
            "mse-B": {"seg_loss": "dice", "seg_weight": 0.4, "terms": [
                {"loss": "feature_mse", "weight": 0.2, "tap": "bottleneck"}]}},
        "budgets": {"quick": {"seeds": 1}},
    }
    index = run_experiment(_write(tmp_path / "b.yaml", preset), tmp_path / "exp", "quick", echo=lambda s: None)
    assert [r["status"] for r in index["runs"]] == ["done"] * 4
    rec = json.loads((tmp_path / "exp/runs/fixed/teacher-t1/seed0/evaluation/reconstruction.json").read_text())
    assert rec["n_cases"] >= 1 and rec["psnr"]["mean"] is not None and -20 < rec["psnr"]["mean"] < 80
    split = json.loads((tmp_path / "exp/runs/fixed/student-s1/baseline/seed0/split.json").read_text())
    teacher_split = json.loads((tmp_path / "exp/runs/fixed/teacher-t1/seed0/split.json").read_text())
    assert len(split["train"]) == round(0.5 * len(teacher_split["train"]))
    md, _ = render_report(tmp_path / "exp")
    text = md.read_text()
    assert ("| method | params | IoU | Dice | Recall | Precision | Δ Dice | "
            "p (volumes, Wilcoxon) | p (seeds, paired t) | 95% CI (bootstrap seeds x volumes) | n |") in text
    assert "recon. PSNR (dB)" in text and "One-way ANOVA" in text
    stats = json.loads((tmp_path / "exp" / "statistics.json").read_text())
    assert stats["anova/s1"]["n_groups"] == 3


def test_kdnet_style_two_modalities_folds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medkd.data.synthetic import generate_dataset
    from medkd.report.study import render_report

    monkeypatch.chdir(tmp_path)
    generate_dataset(tmp_path / "data3d", dim=3, cases=6, sites=1, modalities=2, seed=0, size=(16, 16, 16))
    preset = {
        "study": "kdnet", "title": "tiny C", "baseline": "gt", "headline": "gt-kl-kd",
        "base": {"data": {"root": "data3d", "dim": 3, "channels": ["T2"], "size": [16, 16, 16],
                          "volume_size": [16, 16, 16], "patches_per_case": 1, "normalize": "zscore_nonzero",
                          "split": {"val": 0.0}},
                 "train": {**TRAIN, "batch_size": 2},
                 "evaluate": {"regions": {"WT": [1, 2], "ET": [2]}, "classes": False, "batch_size": 1}},
        "protocol": {"kind": "folds", "folds": 3},
        "teachers": {"skip2": {"model": {"name": "kdnet3d", "kwargs": {"skips": 2, "levels": 3, "base_features": 4,
                                                                        "max_features": 8}},
                               "config": {"data": {"channels": ["T1", "T2"]}}}},
        "students": {"skip2": {"model": {"name": "kdnet3d", "kwargs": {"skips": 2, "levels": 3, "base_features": 4,
                                                                        "max_features": 8}}}},
        "objectives": {"gt": {"seg_loss": "dice_bce"}, "gt-kl-kd": {"study": "kdnet"}},
        "budgets": {"quick": {"seeds": 1, "cells": ["fold0", "fold1"]}},
    }
    index = run_experiment(_write(tmp_path / "c.yaml", preset), tmp_path / "exp", "quick", echo=lambda s: None)
    assert [r["status"] for r in index["runs"]] == ["done"] * 6
    kd = yaml.safe_load((tmp_path / "exp/runs/fold1/student-skip2/gt-kl-kd-from-skip2/seed0/config.yaml").read_text())
    assert kd["data"]["channels"] == ["T2"] and kd["data"]["teacher_channels"] == ["T1", "T2"]
    s0 = json.loads((tmp_path / "exp/runs/fold0/student-skip2/gt/seed0/split.json").read_text())
    s1 = json.loads((tmp_path / "exp/runs/fold1/student-skip2/gt/seed0/split.json").read_text())
    assert len(s0["test"]) == 2 and not set(s0["test"]) & set(s1["test"])
    summary = json.loads((tmp_path / "exp/runs/fold0/teacher-skip2/seed0/evaluation/summary.json").read_text())
    assert summary["foreground_classes"] == ["WT", "ET"]
    md, _ = render_report(tmp_path / "exp")
    text = md.read_text()
    assert ("| method | params | Dice WT | Dice ET | mean | Δ vs GT | "
            "p (volumes, Wilcoxon) | p (seeds, paired t) | 95% CI (bootstrap seeds x volumes) | n |") in text
    assert "3-fold cross-validation" in text
    assert (tmp_path / "exp" / "figures" / "qualitative.png").is_file()


def test_cli_dry_run_and_report_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from medkd.cli import main

    preset = Path(__file__).resolve().parents[2] / "experiments" / "kdnet_brats.yaml"
    assert main(["experiment", "run", str(preset), "--dry-run", "--out", str(tmp_path / "x")]) == 0
    out = capsys.readouterr().out
    assert "[1/30] fold0/teacher-skip4/seed0 (kdnet3d)" in out and "30 runs: 6 teachers, 24 students" in out
    assert not (tmp_path / "x").exists()
    assert main(["experiment", "run", str(preset), "--budget", "huge", "--dry-run"]) == 2
    assert "budget" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no index.json" in err and len(err.strip().splitlines()) == 1
