"""The report's "What the unseen site costs" section (runs on simulated sites scored without them too)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medkd.evaluate.metrics import summarize
from medkd.report.context import ReportContext
from medkd.report.site_shift import site_shift_rows
from medkd.report.study import render_report


def _add_without_sites(fakes, rec, level: float) -> None:
    """Give ``rec`` an evaluation of its test cases without their simulated site, about ``level``."""
    per_case = fakes.per_case_records(level, len(rec.per_case), seed=rec.seed)
    rec.without_sites = {"summary": summarize(per_case, group_key="site"), "per_case": per_case}


def _dice(summary: dict) -> float:
    return summary["foreground_mean"]["dice"]["mean"]


def test_rows_pair_each_run_with_itself_without_the_site(fakes) -> None:
    recs = fakes.grid_records(seeds=3)
    for rec in recs:
        gain = {"teacher": 0.05, "student": 0.10}[rec.kind] if rec.objective != "full" else 0.02
        _add_without_sites(fakes, rec, _dice(rec.summary) + gain - 0.03)  # per_case_records adds ~0.03 on average
    recs[-1].without_sites = None  # one distilled seed without the evaluation: left out, not zero
    ctx = ReportContext({"baseline": "baseline", "runs": [{"cell": "fixed"}]}, recs, {})
    rows = {r["row"]: r for r in site_shift_rows(ctx)}
    assert list(rows) == ["t", "s: baseline", "s: full ← t"]
    assert [rows[k]["runs"] for k in rows] == [3, 3, 2]
    for key, runs in (("t", recs[0:3]), ("s: baseline", recs[3:6]), ("s: full ← t", recs[6:8])):
        expected = sum(_dice(r.without_sites["summary"]) - _dice(r.summary) for r in runs) / len(runs)
        assert rows[key]["cost"] == pytest.approx(expected)
        assert rows[key]["on_site"] == pytest.approx([_dice(r.summary) for r in runs])
    assert rows["s: baseline"]["cost"] > rows["s: full ← t"]["cost"]


def test_the_report_shows_the_section_only_for_runs_scored_without_sites(fakes, tmp_path: Path) -> None:
    recs = fakes.grid_records()
    folder = fakes.write_results(tmp_path / "plain", recs, "generic")
    md, _ = render_report(folder, tmp_path / "plain-out")
    assert "What the unseen site costs" not in md.read_text()

    for rec in recs:
        _add_without_sites(fakes, rec, 0.9)
    folder = fakes.write_results(tmp_path / "sites", recs, "generic")
    md, _ = render_report(folder, tmp_path / "sites-out")
    text = md.read_text()
    assert text.index("What the unseen site costs") < text.index("## Closing note")
    stats = json.loads((tmp_path / "sites-out" / "statistics.json").read_text())
    row = stats["site_shift"][1]
    assert row["row"] == "Small: baseline" and row["runs"] == 2
    cost = f"{row['cost']:+.3f}"
    assert "| Small: baseline | 2 |" in text and cost in text and row["cost"] > 0.2
