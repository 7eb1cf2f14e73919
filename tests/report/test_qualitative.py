"""The qualitative panel: saved predictions are read, not recomputed; without them the run is predicted again."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from medkd.errors import MedkdError
from medkd.evaluate.saved_predictions import panel_cases, save_panel_prediction
from medkd.experiment.collect import load_records
from medkd.report import figures, qualitative
from medkd.report.context import ReportContext
from medkd.report.study import render_report
from medkd.run import RunFolder

COLUMNS = ["teacher-t", "baseline", "kd-from-t"]


@pytest.fixture
def context(tiny_experiment: Path, tmp_path: Path) -> ReportContext:
    from medkd.experiment.collect import collect_runs

    index = json.loads((tiny_experiment / "index.json").read_text())
    collect_runs(tiny_experiment, tmp_path)
    return ReportContext(index, load_records(tmp_path, index))


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> dict:
    seen: dict = {}

    def fake_plot(images, reference, predictions, path, row_labels=None):
        seen.update(images=images, reference=reference, predictions=predictions, labels=row_labels)
        return Path(path)

    monkeypatch.setattr(figures, "plot_qualitative", fake_plot)
    return seen


def _runs(exp: Path) -> dict[str, RunFolder]:
    return {c: RunFolder(exp / "runs" / n) for c, n in zip(COLUMNS, ["fixed/teacher-t/seed0",
                                                                    "fixed/student-s/baseline/seed0",
                                                                    "fixed/student-s/kd-from-t/seed0"])}


def test_panel_columns_and_rows(context: ReportContext, tiny_experiment: Path) -> None:
    assert [r.row for r in qualitative.panel_runs(context)] == ["teacher-t", "student-s/baseline",
                                                                "student-s/kd-from-t"]
    test = RunFolder(tiny_experiment / "runs" / "fixed/student-s/baseline/seed0").split()["test"]
    assert len(panel_cases(test)) == 3


def test_saved_predictions_are_read_and_match_a_fresh_prediction(
        context: ReportContext, tiny_experiment: Path, tmp_path: Path, captured: dict,
        monkeypatch: pytest.MonkeyPatch) -> None:
    exp = tmp_path / "exp"
    shutil.copytree(tiny_experiment, exp)
    qualitative.draw_panel(exp, context, tmp_path / "q.png")  # nothing saved: predicted now
    fresh = captured["predictions"]
    assert list(fresh) == COLUMNS and all(len(v) == 3 for v in fresh.values())
    assert captured["labels"][0].startswith(panel_cases(_runs(exp)["baseline"].split()["test"])[0])
    for run in _runs(exp).values():
        test = run.split()["test"]
        maps = qualitative._predict(run, panel_cases(test))
        for cid, lab in zip(panel_cases(test), maps):
            save_panel_prediction(run.evaluation_dir(), test, cid, lab)

    def no_inference(*args, **kwargs):
        raise AssertionError("the panel ran a model although predictions were saved")

    monkeypatch.setattr(qualitative, "_predict", no_inference)
    qualitative.draw_panel(exp, context, tmp_path / "q.png")
    for column in COLUMNS:
        for a, b in zip(captured["predictions"][column], fresh[column]):
            np.testing.assert_array_equal(a, b)
    assert captured["images"][0].shape == captured["reference"][0].shape == (32, 32)


def test_saved_prediction_on_another_grid_is_refused(context: ReportContext, tiny_experiment: Path,
                                                     tmp_path: Path, captured: dict) -> None:
    exp = tmp_path / "exp"
    shutil.copytree(tiny_experiment, exp)
    run = _runs(exp)["teacher-t"]
    test = run.split()["test"]
    for cid in panel_cases(test):
        save_panel_prediction(run.evaluation_dir(), test, cid, np.zeros((5, 5), dtype=np.int64))
    with pytest.raises(MedkdError, match="prediction grid"):
        qualitative.draw_panel(exp, context, tmp_path / "q.png")
    md, _ = render_report(exp, tmp_path / "out")
    assert "(qualitative panel not drawn:" in md.read_text()


def test_report_of_run_folders_draws_the_panel(tiny_experiment: Path, tmp_path: Path) -> None:
    md, _ = render_report(tiny_experiment, tmp_path / "out")
    text = md.read_text()
    assert "![test cases (slice with most foreground)" in text
    assert (tmp_path / "out" / "figures" / "qualitative.png").stat().st_size > 1000
    assert "| method | params | Dice " in text and "paper A" not in text
