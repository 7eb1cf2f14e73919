"""Seed-level statistics in study reports: the paired t over seeds and the seeds x volumes bootstrap, recomputed
by hand from synthetic results folders (no training)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from medkd.report.study import render_report


def _table_row(text: str, label: str) -> list[str]:
    line = next(x for x in text.splitlines() if x.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def _run_mean(rec) -> float:
    return rec.summary["foreground_mean"]["dice"]["mean"]


def test_seed_level_paired_t_on_three_seeds_matches_the_hand_computation(fakes, tmp_path: Path) -> None:
    recs = fakes.grid_records(seeds=3)
    md, _ = render_report(fakes.write_results(tmp_path / "res", recs, "paper_a"), tmp_path / "out")
    by = {r.name: r for r in recs}
    kd = np.array([_run_mean(by[f"fixed/student-s/full-from-t/seed{s}"]) for s in range(3)])
    base = np.array([_run_mean(by[f"fixed/student-s/baseline/seed{s}"]) for s in range(3)])
    d = kd - base
    t = d.mean() / (d.std(ddof=1) / math.sqrt(3))
    p = 2 * sps.t.sf(abs(t), df=2)
    stats = json.loads((tmp_path / "out" / "statistics.json").read_text())["student-s/full-from-t"]
    assert stats["paired_t"]["n"] == 3
    assert stats["paired_t"]["t"] == pytest.approx(t)
    assert stats["paired_t"]["p"] == pytest.approx(p)
    assert stats["paired_t"]["delta"] == pytest.approx(d.mean())
    assert stats["spread"]["row"] == f"{kd.mean():.3f} ± {kd.std(ddof=1):.3f}" and stats["spread"]["row_n"] == 3
    assert stats["spread"]["baseline"] == f"{base.mean():.3f} ± {base.std(ddof=1):.3f}"
    row = _table_row(md.read_text(), "Small w/ KD (Full KD ← Big)")
    p_text = "<0.001" if p < 1e-3 else f"{p:.3f}"
    assert row[-3] == f"{p_text} (n=3)"
    # the bootstrap over seeds, then volumes: its interval contains the mean per-volume difference
    boot = stats["bootstrap"]
    lo, hi = boot["ci95"]
    assert boot["n_seeds"] == 3 and boot["n_cases"] == 8
    per_volume = [np.mean([a["metrics"][c]["dice"] - b["metrics"][c]["dice"] for c in fakes.classes])
                  for s in range(3)
                  for a, b in zip(by[f"fixed/student-s/full-from-t/seed{s}"].per_case,
                                  by[f"fixed/student-s/baseline/seed{s}"].per_case)]
    assert boot["delta"] == pytest.approx(np.mean(per_volume))
    assert lo < boot["delta"] < hi and hi - lo < 0.2
    assert lo > 0  # the synthetic distilled rows are 0.1 above the baseline in every seed
    assert row[-2] == f"[{lo:+.3f}, {hi:+.3f}]"
    # the per-volume Wilcoxon is still there, under its own name
    assert stats["wilcoxon"]["n"] == 8 and row[-4].endswith("(n=8)")
    # a re-render from the JSON alone gives the same numbers (fixed bootstrap generator)
    render_report(tmp_path / "res")
    again = json.loads((tmp_path / "res" / "statistics.json").read_text())["student-s/full-from-t"]
    assert again["bootstrap"]["ci95"] == boot["ci95"]


def test_two_seeds_get_no_seed_level_p_value_but_a_bootstrap(fakes, tmp_path: Path) -> None:
    md, _ = render_report(fakes.write_results(tmp_path / "res", fakes.grid_records(seeds=2), "thesis_b"),
                          tmp_path / "out")
    row = _table_row(md.read_text(), "Full KD ← Big")
    assert row[-3] == "n/a (2 seeds)"
    assert row[-2].startswith("[+") and row[-1] == "2"
    stats = json.loads((tmp_path / "out" / "statistics.json").read_text())["student-s/full-from-t"]
    assert stats["paired_t"]["p"] is None and stats["paired_t"]["reason"] == "only 2 paired seed(s)"
    assert "over seeds: paired t p = n/a (2 seeds)" in md.read_text()


def test_one_seed_gets_neither(fakes, tmp_path: Path) -> None:
    md, _ = render_report(fakes.write_results(tmp_path / "res", fakes.grid_records(seeds=1), "kdnet",
                                              ), tmp_path / "out")
    row = _table_row(md.read_text(), "Full KD")
    assert row[-3:] == ["n/a (1 seed)", "n/a (1 seed)", "1"]


def test_runs_pair_by_cell_and_seed(fakes, tmp_path: Path) -> None:
    """With two target sites and 2 seeds, the paired units are the 4 (site, seed) runs."""
    recs = fakes.grid_records("sites-a", seeds=2) + fakes.grid_records("sites-b", seeds=2)
    proto = {"kind": "sites", "sites": ["a", "b"], "folds": None, "simulated": True}
    render_report(fakes.write_results(tmp_path / "res", recs, "paper_a", protocol=proto), tmp_path / "out")
    by = {r.name: r for r in recs}
    d = [_run_mean(by[f"{c}/student-s/full-from-t/seed{s}"]) - _run_mean(by[f"{c}/student-s/baseline/seed{s}"])
         for c in ("sites-a", "sites-b") for s in (0, 1)]
    stats = json.loads((tmp_path / "out" / "statistics.json").read_text())["student-s/full-from-t"]
    assert stats["paired_t"]["n"] == 4
    assert stats["paired_t"]["p"] == pytest.approx(float(sps.ttest_1samp(d, 0.0).pvalue))
    assert stats["bootstrap"]["n_seeds"] == 4


def test_medkd_recipe_row_sits_beside_the_seed_objective(fakes, tmp_path: Path) -> None:
    recs = fakes.grid_records(seeds=3)
    recs += [fakes.make_record(f"fixed/student-s/medkd-recipe-from-t/seed{s}", "student", "s", 0.75, "medkd-recipe",
                               "t", seed=s) for s in range(3)]
    preset = {"title": "tiny", "teachers": {"t": {"label": "Big"}}, "students": {"s": {"label": "Small"}},
              "objectives": {"baseline": {}, "full": {"label": "Full KD"}, "medkd-recipe": {"label": "medkd"},
                             "other": {"label": "Other"}}}
    md, _ = render_report(fakes.write_results(tmp_path / "res", recs, "paper_a", preset=preset), tmp_path / "out")
    text = md.read_text()
    main = text.split("Module ablation")[0]
    assert "| Small w/ KD (Full KD ← Big) |" in main and "| Small w/ KD (medkd ← Big) |" in main
    assert _table_row(main, "Small w/ KD (medkd ← Big)")[-1] == "3"
    headline = text.split("## Headline")[1].split("##")[0]
    assert "Full KD 0.755" in headline and "medkd 0.805" in headline
