"""Did the networks learn? A budget's teachers and students alone against the preset's ``floors``.

A comparison between a distilled student and the student alone says something about a method only when the
teacher is good and the student alone has learned too (a budget so short that neither has converged measures the
schedule, not the method). The preset states the floors (:class:`medkd.experiment.preset.FloorSpec`); the report
checks them before any table and says plainly when they were missed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medkd.report.context import ReportContext, row_values

__all__ = ["learning_check", "learning_lines"]


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _grid_teachers(ctx: ReportContext) -> list[str]:
    """The teachers of the grid, finished or not (an unfinished teacher does not pass a floor)."""
    planned = [r["model_key"] for r in ctx.index.get("runs", []) if r.get("kind") == "teacher"]
    return list(dict.fromkeys(planned + ctx.teachers()))


def _teacher_checks(ctx: ReportContext, floor: float, group: str | None) -> list[dict[str, Any]]:
    """One check per teacher row: its mean test Dice (of ``group``, default the foreground mean) >= ``floor``."""
    checks = []
    for tkey in _grid_teachers(ctx):
        value = _mean(row_values(ctx.runs(f"teacher-{tkey}"), "dice", group))
        what = f"teacher {ctx.label('teachers', tkey)}: Dice" + (f" {group}" if group else "")
        checks.append({"what": what, "value": value, "floor": floor,
                       "met": value is not None and value >= floor})
    return checks


def _student_checks(ctx: ReportContext, gap: float) -> list[dict[str, Any]]:
    """One check per (student alone, its teacher): the student's mean test Dice >= the teacher's - ``gap``."""
    checks = []
    baseline = ctx.index["baseline"]
    for skey in ctx.students():
        alone = _mean(row_values(ctx.runs(f"student-{skey}/{baseline}")))
        teachers = list(dict.fromkeys(t for _, _, t in ctx.student_rows(skey) if t)) or _grid_teachers(ctx)
        for tkey in teachers:
            teacher = _mean(row_values(ctx.runs(f"teacher-{tkey}")))
            floor = None if teacher is None else teacher - gap
            checks.append({"what": f"{ctx.label('students', skey)} alone vs {ctx.label('teachers', tkey)}: Dice",
                           "value": alone, "floor": floor,
                           "met": alone is not None and floor is not None and alone >= floor})
    return checks


def learning_check(ctx: ReportContext) -> dict[str, Any] | None:
    """The floors' checks and whether all were met (``statistics.json["floors"]``); None without ``floors``."""
    floors = ctx.preset.get("floors")
    if not floors:
        return None
    checks = _teacher_checks(ctx, floors["teacher"], floors.get("group"))
    if floors.get("student_gap") is not None:
        checks += _student_checks(ctx, floors["student_gap"])
    return {"floors": floors, "checks": checks, "met": bool(checks) and all(c["met"] for c in checks)}


def _check_text(check: dict[str, Any]) -> str:
    value = "not finished" if check["value"] is None else f"{check['value']:.3f}"
    floor = "n/a" if check["floor"] is None else f"{check['floor']:.3f}"
    return f"{check['what']} {value} (floor {floor}): {'met' if check['met'] else 'NOT MET'}"


def learning_lines(check: dict[str, Any]) -> list[str]:
    """The report's paragraphs: each check, then the verdict."""
    floors = check["floors"]
    rule = f"teachers' test Dice{' (' + floors['group'] + ')' if floors.get('group') else ''} >= {floors['teacher']}"
    if floors.get("student_gap") is not None:
        rule += f"; students alone within {floors['student_gap']} of their teacher"
    lines = [f"Floors of this study: {rule} (mean over the runs of a row, test split)."]
    lines += [_check_text(c) + "." for c in check["checks"]]
    if check["met"]:
        lines.append("Verdict: every floor met; the networks learned at this budget, so the comparisons below "
                     "test the methods at this budget.")
    else:
        lines.append("Verdict: floors NOT MET. At this budget the networks had not learned enough; the comparisons "
                     "below measure this schedule, not the methods, and should not be read as evidence for or "
                     "against the seed's claims.")
    return lines
