"""The report's "Loss balance" section: each distillation term's gradient against the segmentation loss's."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from medkd.report.balance import EARLY_SHARE, balance_rows, run_ratios
from medkd.report.context import ReportContext
from medkd.report.study import render_report


def _epochs(n: int, seg: float, kd: dict[str, Callable[[int], float]]) -> list[dict]:
    """``n`` epoch records: the segmentation gradient ``seg``, each term's norm ``kd[term](epoch)``."""
    return [{"kind": "epoch", "epoch": e, "train_seg": 0.5, "train_gn/seg": seg,
             **{f"train_gn/kd/{t}": f(e) for t, f in kd.items()}} for e in range(1, n + 1)]


def test_run_ratios_split_early_epochs_from_the_whole_run(fakes) -> None:
    rec = fakes.make_record("fixed/student-s/full-from-t/seed0", "student", "s", 0.7, "full", "t")
    # pmd pulls 10x the segmentation loss in the first 2 of 10 epochs, then 0.5x; con is 2x throughout
    rec.epochs = _epochs(10, 0.1, {"pmd": lambda e: 1.0 if e <= 2 else 0.05, "con": lambda e: 0.2})
    rec.epochs[4]["train_gn/pseudo_label"] = 0.3  # a part logged in one epoch only counts there
    ratios = run_ratios(rec)
    assert EARLY_SHARE == pytest.approx(0.2)
    assert ratios["pmd"] == {"early": pytest.approx(10.0), "all": pytest.approx(0.5)}
    assert ratios["con"] == {"early": pytest.approx(2.0), "all": pytest.approx(2.0)}
    assert ratios["pseudo_label"]["all"] == pytest.approx(3.0)


def test_epochs_without_a_usable_segmentation_gradient_are_skipped(fakes) -> None:
    rec = fakes.make_record("fixed/student-s/full-from-t/seed0", "student", "s", 0.7, "full", "t")
    rec.epochs = _epochs(5, 0.1, {"pmd": lambda e: 0.4})
    rec.epochs[0]["train_gn/seg"] = 0.0
    rec.epochs[1]["train_gn/seg"] = float("nan")
    assert run_ratios(rec)["pmd"]["all"] == pytest.approx(4.0)
    rec.epochs = _epochs(3, 0.1, {})  # the student alone: no term, nothing to say
    assert run_ratios(rec) == {}


def test_rows_take_the_median_over_runs_and_leave_students_alone_out(fakes) -> None:
    recs = fakes.grid_records(seeds=3)
    for rec, k in zip([r for r in recs if r.objective == "full"], (1.0, 2.0, 6.0), strict=True):
        rec.epochs = _epochs(5, 0.1, {"pmd": lambda e, k=k: 0.1 * k})
    for rec in recs:
        if rec.objective == "baseline":
            rec.epochs = _epochs(5, 0.1, {})
    ctx = ReportContext({"baseline": "baseline", "runs": [{"cell": "fixed"}]}, recs, {})
    rows = balance_rows(ctx)
    assert [(r["row"], r["term"], r["runs"]) for r in rows] == [("student-s/full-from-t", "pmd", 3)]
    assert rows[0]["all"] == pytest.approx(2.0) and rows[0]["early"] == pytest.approx(2.0)


def test_the_report_shows_the_section_only_when_gradients_were_logged(fakes, tmp_path: Path) -> None:
    recs = fakes.grid_records()
    folder = fakes.write_results(tmp_path / "plain", recs, "generic")
    md, _ = render_report(folder, tmp_path / "plain-out")
    assert "Loss balance" not in md.read_text()
    assert "loss_balance" not in json.loads((tmp_path / "plain-out" / "statistics.json").read_text())

    for rec in recs:
        if rec.objective == "full":
            rec.epochs = _epochs(5, 0.1, {"pmd": lambda e: 1.5})
    folder = fakes.write_results(tmp_path / "gn", recs, "generic")
    md, _ = render_report(folder, tmp_path / "gn-out")
    text = md.read_text()
    assert text.index("Loss balance") < text.index("## Closing note")
    assert "| Small | Full KD ← Big | pmd | 15.00 | 15.00 | 2 |" in text
    stats = json.loads((tmp_path / "gn-out" / "statistics.json").read_text())
    assert stats["loss_balance"][0]["all"] == pytest.approx(15.0)
