"""Per-case foreground scores: the evaluation's own rule, case by case."""

from __future__ import annotations

import pytest

from medkd.evaluate.metrics import summarize
from medkd.report.scores import case_foreground_mean, case_foreground_means


def _rec(case: str, **dice: float | None) -> dict:
    metrics = {}
    for cls, value in dice.items():
        status = "both_empty" if value is None else "ok"
        metrics[cls] = {"dice": value, "iou": None if value is None else value / 2, "status": status}
    return {"case": case, "metrics": metrics}


def test_mean_of_defined_foreground_values() -> None:
    assert case_foreground_mean(_rec("a", RV=0.5, MYO=0.7, LV=0.9)) == pytest.approx(0.7)
    assert case_foreground_mean(_rec("a", RV=0.5, MYO=None, LV=0.9)) == pytest.approx(0.7)
    assert case_foreground_mean(_rec("a", RV=0.5, MYO=0.7, LV=0.9), "iou") == pytest.approx(0.35)


def test_classes_restrict_and_undefined_cases_are_left_out() -> None:
    recs = [_rec("a", RV=0.2, LV=0.6), _rec("b", RV=None, LV=None), _rec("c", RV=1.0, LV=0.0)]
    assert case_foreground_means(recs) == pytest.approx({"a": 0.4, "c": 0.5})
    assert case_foreground_means(recs, classes=["LV"]) == pytest.approx({"a": 0.6, "c": 0.0})
    assert case_foreground_mean(_rec("x", RV=0.3), classes=["LV"]) is None


def test_background_is_not_foreground() -> None:
    rec = _rec("a", background=1.0, RV=0.4)
    assert case_foreground_mean(rec) == pytest.approx(0.4)


def test_agrees_with_the_evaluation_summary(fakes) -> None:
    per_case = fakes.per_case_records(0.5, 6)
    means = case_foreground_means(per_case)
    assert list(means) == [f"case{k:02d}" for k in range(6)]
    assert sum(means.values()) / 6 == pytest.approx(summarize(per_case)["foreground_mean"]["dice"]["mean"])
