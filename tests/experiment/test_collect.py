"""collect_runs / load_records: what a finished run's record holds, read through RunFolder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from medkd.errors import MedkdError
from medkd.experiment.collect import collect_runs, load_records, read_record
from medkd.run import RunFolder

NAMES = ["fixed/teacher-t/seed0", "fixed/student-s/baseline/seed0", "fixed/student-s/kd-from-t/seed0"]


def test_records_hold_what_the_run_folder_holds(tiny_experiment: Path, tmp_path: Path) -> None:
    records = collect_runs(tiny_experiment, tmp_path)
    assert [r.name for r in records] == NAMES
    assert [r.row for r in records] == ["teacher-t", "student-s/baseline", "student-s/kd-from-t"]
    for rec in records:
        run = RunFolder(tiny_experiment / "runs" / rec.name)
        assert rec.summary == run.evaluation() and rec.per_case == run.per_case()
        assert [e["epoch"] for e in rec.epochs] == [1] and rec.train == run.summary()
        model, _ = run.load_model()
        assert rec.params == sum(p.numel() for p in model.parameters()) > 1000
        assert rec.reconstruction is None
    kd = records[2]
    assert (kd.kind, kd.model_key, kd.objective, kd.teacher_key) == ("student", "s", "kd", "t")
    assert kd.config["distill"]["terms"][0]["loss"] == "logits_kl"


def test_written_records_are_portable_and_read_back(tiny_experiment: Path, tmp_path: Path) -> None:
    records = collect_runs(tiny_experiment, tmp_path)
    files = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "runs").rglob("*.json"))
    assert files == sorted(f"runs/{n}.json" for n in NAMES)
    for path in (tmp_path / "runs").rglob("*.json"):
        assert str(tiny_experiment.parent) not in path.read_text()
    index = json.loads((tiny_experiment / "index.json").read_text())
    again = load_records(tmp_path, index)
    assert [r.to_json() for r in again] == json.loads(json.dumps([r.to_json() for r in records]))


def test_unevaluated_runs_are_left_out(tiny_experiment: Path, tmp_path: Path) -> None:
    exp = tmp_path / "exp"
    shutil.copytree(tiny_experiment, exp)
    shutil.rmtree(exp / "runs" / NAMES[1] / "evaluation")
    records = collect_runs(exp, tmp_path / "out")
    assert [r.name for r in records] == [NAMES[0], NAMES[2]]
    assert not (tmp_path / "out" / "runs" / f"{NAMES[1]}.json").exists()
    assert read_record(RunFolder(exp / "runs" / "missing"), {"name": "missing"}) is None
    (exp / "runs" / NAMES[2] / "evaluation" / "summary.json").write_text("{broken")
    with pytest.raises(MedkdError, match="summary.json: not readable JSON"):
        collect_runs(exp, tmp_path / "out")


def test_parameter_count_and_missing_index(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    run = RunFolder(tmp_path / "run")
    assert run.parameter_count() is None
    run.best_weights.parent.mkdir(parents=True)
    save_file({"conv.weight": torch.zeros(4, 3, 3, 3), "bn.weight": torch.zeros(4), "bn.running_mean": torch.zeros(4),
               "bn.num_batches_tracked": torch.zeros((), dtype=torch.long)}, str(run.best_weights))
    assert run.parameter_count() == 4 * 27 + 4
    with pytest.raises(MedkdError, match="index.json: not found"):
        collect_runs(tmp_path, tmp_path / "out")
