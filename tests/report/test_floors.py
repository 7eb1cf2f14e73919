"""The report's "Did the networks learn?" section: teachers and students alone against the preset's floors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medkd.errors import ConfigError
from medkd.experiment.preset import load_preset, parse_preset
from medkd.report.context import ReportContext, row_values
from medkd.report.floors import learning_check
from medkd.report.study import render_report

PRESET = {"title": "tiny", "teachers": {"t": {"label": "Big"}}, "students": {"s": {"label": "Small"}},
          "objectives": {"baseline": {}, "full": {"label": "Full KD"}}}
PROJECT = Path(__file__).resolve().parents[2]


def _render(fakes, tmp_path: Path, floors: dict | None, name: str) -> tuple[str, dict]:
    preset = {**PRESET, **({"floors": floors} if floors else {})}
    folder = fakes.write_results(tmp_path / name, fakes.grid_records(), "generic", preset)
    md, _ = render_report(folder, tmp_path / f"{name}-out")
    return md.read_text(), json.loads((tmp_path / f"{name}-out" / "statistics.json").read_text())


def test_floors_met_and_missed_are_said_before_the_tables(fakes, tmp_path: Path) -> None:
    recs = fakes.grid_records()  # teacher about 0.87, student alone about 0.62 (see the fixtures)
    teacher = float(np.mean(row_values([r for r in recs if r.kind == "teacher"])))
    alone = float(np.mean(row_values([r for r in recs if r.objective == "baseline"])))
    text, stats = _render(fakes, tmp_path, {"teacher": 0.8, "student_gap": 0.3}, "met")
    assert stats["floors"]["met"] is True
    assert [c["met"] for c in stats["floors"]["checks"]] == [True, True]
    assert stats["floors"]["checks"][0]["value"] == pytest.approx(teacher)
    assert stats["floors"]["checks"][1]["floor"] == pytest.approx(teacher - 0.3)
    assert text.index("Did the networks learn?") < text.index("Headline")
    assert "Verdict: every floor met" in text and "NOT MET" not in text

    text, stats = _render(fakes, tmp_path, {"teacher": 0.8, "student_gap": 0.15}, "gap")
    assert [c["met"] for c in stats["floors"]["checks"]] == [True, False] and stats["floors"]["met"] is False
    assert f"Small alone vs Big: Dice {alone:.3f} (floor {teacher - 0.15:.3f}): NOT MET." in text
    assert "Verdict: floors NOT MET" in text
    assert "The floors were NOT MET" in text.split("## Closing note")[1]

    text, stats = _render(fakes, tmp_path, {"teacher": 0.95}, "teacher")
    assert len(stats["floors"]["checks"]) == 1 and stats["floors"]["met"] is False
    assert f"teacher Big: Dice {teacher:.3f} (floor 0.950): NOT MET." in text


def test_a_floor_on_one_region_reads_that_regions_dice(fakes, tmp_path: Path) -> None:
    recs = fakes.grid_records(classes=("WT", "TC", "ET"))
    ctx = ReportContext({"baseline": "baseline", "runs": [{"cell": "fixed"}]}, recs,
                        {**PRESET, "floors": {"teacher": 0.5, "group": "WT"}})
    check = learning_check(ctx)
    teachers = [r for r in recs if r.kind == "teacher"]
    want = float(np.mean([r.summary["classes"]["WT"]["dice"]["mean"] for r in teachers]))
    assert check["checks"][0]["value"] == pytest.approx(want) and check["checks"][0]["what"].endswith("Dice WT")
    assert want != pytest.approx(float(np.mean(row_values(teachers))))  # not the foreground mean


def test_no_floors_no_section_and_unfinished_teachers_do_not_pass(fakes, tmp_path: Path) -> None:
    text, stats = _render(fakes, tmp_path, None, "none")
    assert "Did the networks learn?" not in text and "floors" not in stats
    students_only = [r for r in fakes.grid_records() if r.kind == "student"]
    grid = [{"cell": "fixed", "kind": "teacher", "model_key": "t"}]
    ctx = ReportContext({"baseline": "baseline", "runs": grid}, students_only,
                        {**PRESET, "floors": {"teacher": 0.5, "student_gap": 0.2}})
    check = learning_check(ctx)
    assert check["met"] is False and [c["met"] for c in check["checks"]] == [False, False]
    assert check["checks"][0]["value"] is None and check["checks"][1]["floor"] is None


def test_the_study_presets_state_the_issue_floors() -> None:
    floors = {p: load_preset(PROJECT / "experiments" / f"{p}.yaml").floors
              for p in ("paper_a_acdc", "thesis_b_acdc", "kdnet_brats")}
    assert floors["paper_a_acdc"].teacher == 0.85 and floors["paper_a_acdc"].student_gap == 0.15
    assert floors["thesis_b_acdc"].teacher == 0.85 and floors["thesis_b_acdc"].student_gap == 0.15
    assert floors["kdnet_brats"].teacher == 0.70 and floors["kdnet_brats"].group == "WT"
    with pytest.raises(ConfigError, match="floors.teacher"):
        parse_preset({"title": "x", "base": {}, "teachers": {}, "students": {}, "objectives": {"baseline": {}},
                      "budgets": {}, "floors": {"teacher": 1.5}})
