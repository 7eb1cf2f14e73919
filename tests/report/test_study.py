"""Study reports rendered from a results folder (synthetic per-run results, no training)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medkd.errors import MedkdError
from medkd.evaluate.stats import paired_wilcoxon
from medkd.report.scores import case_foreground_means
from medkd.report.study import render_report


def _table_row(text: str, label: str) -> list[str]:
    line = next(x for x in text.splitlines() if x.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_paper_a_layout_names_the_runs_classes(results_folder, tmp_path: Path) -> None:
    md, html = render_report(results_folder("paper_a", classes=("RV", "MYO", "LV")), tmp_path / "out")
    text = md.read_text()
    assert ("| method | params | target fixed | mean | Δ vs w/o KD | p (volumes, Wilcoxon) | p (seeds, paired t) "
            "| 95% CI (bootstrap seeds x volumes) | n |") in text
    assert "cells: mean foreground Dice (RV, MYO, LV) per test volume" in text
    other, _ = render_report(results_folder("paper_a", classes=("Tumour", "Oedema"), name="r2"), tmp_path / "o2")
    assert "cells: mean foreground Dice (Tumour, Oedema) per test volume" in other.read_text()
    assert "RV" not in other.read_text()
    assert "<table>" in html.read_text()


def test_cells_delta_and_p_come_from_the_records(results_folder, fakes, tmp_path: Path) -> None:
    folder = results_folder("paper_a")
    md, _ = render_report(folder, tmp_path / "out")
    recs = {r.name: r for r in fakes.grid_records()}
    base = [recs[f"fixed/student-s/baseline/seed{s}"] for s in (0, 1)]
    kd = [recs[f"fixed/student-s/full-from-t/seed{s}"] for s in (0, 1)]
    mean = [r.summary["foreground_mean"]["dice"]["mean"] for r in kd]
    base_mean = [r.summary["foreground_mean"]["dice"]["mean"] for r in base]
    row = _table_row(md.read_text(), "Small w/ KD (Full KD ← Big)")
    assert row[1] == "0.12 M" and row[-1] == "2"
    assert row[3].startswith(f"{np.mean(mean):.3f} ± ")
    assert row[4] == f"{np.mean(mean) - np.mean(base_mean):+.3f}"

    def pooled(runs):
        per = [case_foreground_means(r.per_case) for r in runs]
        return {f"fixed/{c}": float(np.mean([p[c] for p in per])) for c in per[0]}

    test = paired_wilcoxon(pooled(kd), pooled(base))
    stats = json.loads((tmp_path / "out" / "statistics.json").read_text())
    assert stats["student-s/full-from-t"]["wilcoxon"]["p"] == pytest.approx(test["p"])
    assert stats["student-s/full-from-t"]["wilcoxon"]["n"] == 8
    assert "distillation helped (p < 0.05)" in md.read_text()


def test_preset_without_study_gets_the_generic_layout(results_folder, tmp_path: Path) -> None:
    for study in (None, "generic"):
        md, _ = render_report(results_folder(study, classes=("gland",), name=f"r-{study}"), tmp_path / f"o-{study}")
        text = md.read_text()
        assert "paper A" not in text and "RV" not in text
        assert ("| method | params | Dice gland | mean | Δ vs baseline | p (volumes, Wilcoxon) | p (seeds, paired t) "
                "| 95% CI (bootstrap seeds x volumes) | n |") in text
        assert "per class and over the foreground classes (gland) per test volume" in text
        teacher = _table_row(text, "Teacher Big")
        assert teacher[4:8] == ["", "", "", ""] and teacher[-1] == "2"
        assert _table_row(text, "Full KD ← Big")[4].startswith("+0.1")


def test_thesis_b_and_kdnet_layouts(results_folder, tmp_path: Path) -> None:
    md, _ = render_report(results_folder("thesis_b"), tmp_path / "b")
    text = md.read_text()
    assert ("| method | params | IoU | Dice | Recall | Precision | Δ Dice | p (volumes, Wilcoxon) "
            "| p (seeds, paired t) | 95% CI (bootstrap seeds x volumes) | n |") in text
    assert "metrics: mean over RV, MYO, LV per test volume" in text and "One-way ANOVA" in text
    stats = json.loads((tmp_path / "b" / "statistics.json").read_text())
    assert stats["anova/s"]["n_groups"] == 2
    md, _ = render_report(results_folder("kdnet", classes=("WT", "TC", "ET"), name="c"), tmp_path / "c")
    assert ("| method | params | Dice WT | Dice TC | Dice ET | mean | Δ vs GT | p (volumes, Wilcoxon) "
            "| p (seeds, paired t) | 95% CI (bootstrap seeds x volumes) | n |") in md.read_text()


def test_results_folder_rerenders_and_keeps_no_figure_it_cannot_draw(results_folder, tmp_path: Path) -> None:
    folder = results_folder("paper_a")
    first, _ = render_report(folder, tmp_path / "out", note="shared machine")
    assert json.loads((tmp_path / "out" / "index.json").read_text())["note"] == "shared machine"
    assert "Note: shared machine" in first.read_text()
    md, _ = render_report(folder)
    text = md.read_text()
    assert "Note:" not in text and "qualitative" not in text
    assert (folder / "figures" / "training_curves.png").stat().st_size > 1000
    assert (folder / "statistics.json").is_file()


def test_missing_or_empty_experiment_is_one_line_error(tmp_path: Path, fakes) -> None:
    with pytest.raises(MedkdError, match="no index.json"):
        render_report(tmp_path)
    fakes.write_results(tmp_path / "empty", [], "paper_a")
    with pytest.raises(MedkdError, match="no finished run"):
        render_report(tmp_path / "empty")
