"""Every CLI verb end to end on tiny data, and the one-line error contract."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from medkd.cli import main
from medkd.data.nifti_io import read_nifti


def _write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """data synth -> train (teacher YAML) -> a run folder, via the CLI."""
    base = tmp_path_factory.mktemp("cli")
    data = base / "data"
    assert main(["data", "synth", str(data), "--cases", "10", "--sites", "2", "--size", "40x40", "--seed", "3"]) == 0
    cfg = {
        "name": "cli_teacher", "data": {"root": str(data), "dim": 2, "size": [32, 32],
                                        "split": {"val": 0.2, "test": 0.2}},
        "model": {"name": "unet_s1"},
        "train": {"epochs": 2, "batch_size": 4, "progress": False},
    }
    config = _write_yaml(base / "teacher.yaml", cfg)
    run = base / "run"
    assert main(["train", str(config), "--out", str(run), "--set", "train.epochs=1", "--no-evaluate"]) == 0
    return base, data, run


def test_train_evaluate_predict_roundtrip(trained, capsys):
    base, data, run = trained
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 1  # --set applied
    assert main(["evaluate", str(run), "--split", "test"]) == 0
    summary = json.loads((run / "evaluation" / "summary.json").read_text())
    test_cases = json.loads((run / "split.json").read_text())["test"]
    assert summary["split"] == "test" and summary["n_cases"] == len(test_cases)
    assert (run / "evaluation" / "per_case.csv").read_text().startswith("case,site,class,dice")
    out = base / "pred"
    image = next((data / "imagesTr").glob("*_0000.nii.gz"))
    assert main(["predict", str(run), str(image), "--out", str(out)]) == 0
    pred_file = out / image.name.replace("_0000.nii.gz", ".nii.gz")
    pred, affine = read_nifti(pred_file)
    ref, ref_affine = read_nifti(image)
    assert pred.shape == ref.shape and np.allclose(affine, ref_affine)
    assert set(np.unique(pred)) <= {0, 1, 2}
    # a whole folder works too
    assert main(["predict", str(run), str(data / "imagesTr"), "--out", str(base / "pred_all")]) == 0
    assert len(list((base / "pred_all").glob("*.nii.gz"))) == len(list((data / "imagesTr").glob("*.nii.gz")))


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["evaluate", "NOPE"], "not a run folder"),
        (["predict", "RUN", "missing.nii.gz", "--out", "o"], "input not found"),
        (["train", "missing.yaml"], "config file not found"),
        (["data", "synth", "OUT", "--dim", "4"], "--dim 4: must be 2 or 3"),
    ],
)
def test_user_errors_are_one_line_with_exit_2(trained, tmp_path, capsys, argv, expected):
    _, _, run = trained
    argv = [str(run) if a == "RUN" else str(tmp_path / a) if a in ("NOPE", "missing.nii.gz", "o", "OUT") else a
            for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and expected in err and "\n" not in err and "Traceback" not in err


def test_unknown_config_key_is_named(trained, tmp_path, capsys):
    _, data, _ = trained
    config = _write_yaml(tmp_path / "c.yaml", {"data": {"root": str(data), "sise": [32, 32]}, "model": {"name": "x"}})
    assert main(["train", str(config)]) == 2
    assert "did you mean 'data.size'" in capsys.readouterr().err


def test_predict_refuses_wrong_channel_count_without_writing(trained, tmp_path, capsys):
    _, data, run = trained
    from medkd.data.nifti_io import write_nifti

    bad = tmp_path / "in"
    bad.mkdir()
    write_nifti(bad / "x.nii.gz", np.zeros((8, 8, 2, 3), np.float32))
    assert main(["predict", str(run), str(bad / "x.nii.gz"), "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


def test_models_and_losses_list(capsys):
    assert main(["models", "enet"]) == 0
    assert "enet" in capsys.readouterr().out
    assert main(["losses"]) == 0
    out = capsys.readouterr().out
    for name in ("logits_kl", "adaptive_affinity", "kernel_matrix", "contrastive", "kdnet_soft_label"):
        assert name in out


def test_help_exits_zero(capsys):
    assert main(["--help"]) == 0
    assert "demo" in capsys.readouterr().out


def test_demo_quick_writes_runs_and_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick"]) == 0
    for name in ("teacher", "student", "distilled"):
        summary = json.loads((out / name / "evaluation" / "summary.json").read_text())
        assert summary["foreground_mean"]["dice"]["n"] > 0
    report = (out / "report.md").read_text()
    assert "Verdict" in report and "distilled" in report
    assert (out / "report.html").read_text().startswith("<!DOCTYPE html>")
    for fig in ("figures/training_curves.png", "figures/qualitative.png"):
        assert (out / fig).read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "teacher" in printed and "distilled" in printed
    # refuses to overwrite a non-empty folder
    assert main(["demo", "--out", str(out), "--quick"]) == 2


def test_killed_train_process_resumes(trained, tmp_path):
    """SIGKILL a real `medkd train` after its first checkpoint, then --resume finishes it."""
    _, data, _ = trained
    cfg = {"name": "killme", "data": {"root": str(data), "dim": 2, "size": [32, 32]},
           "model": {"name": "unet_s1"}, "train": {"epochs": 40, "batch_size": 2, "progress": False}}
    config = _write_yaml(tmp_path / "k.yaml", cfg)
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "medkd", "train", str(config), "--out", str(run), "--no-evaluate"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run / "checkpoints" / "last.json").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = json.loads((run / "checkpoints" / "last.json").read_text())["epoch"]
    assert 1 <= done < 40
    result = subprocess.run([sys.executable, "-m", "medkd", "train", str(config), "--out", str(run), "--resume",
                             "--no-evaluate"],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads((run / "checkpoints" / "last.json").read_text())["epoch"] == 40
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "epoch"]
    assert epochs == list(range(1, 41))  # no epoch logged twice or lost
