"""An experiment's records as a study report reads them: rows, cells, values, labels and number formats.

Cells of every study table are mean ± std over the seeds (and folds) of each run's mean over its test cases
(:func:`row_values`); paired tests use each test case's foreground score averaged over the seeds of a row
(:func:`case_scores`, keyed ``cell/case``), the score being the evaluation's own per-case foreground mean.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medkd.evaluate.stats import format_mean_std, paired_wilcoxon
from medkd.experiment.collect import RunRecord
from medkd.report.scores import case_foreground_means

__all__ = ["ReportContext", "case_scores", "class_names", "delta", "fmt", "fmt_p", "footnote", "params_text",
           "row_values", "significance"]


class ReportContext:
    """The index and records of one experiment, with lookup helpers."""

    def __init__(self, index: dict[str, Any], records: list[RunRecord], preset: dict[str, Any] | None = None
                 ) -> None:
        self.index = index
        self.records = records
        self.preset = preset or {}
        self.cells = list(dict.fromkeys(r["cell"] for r in index["runs"]))
        self.by_row: dict[tuple[str, str], list[RunRecord]] = defaultdict(list)
        for rec in records:
            self.by_row[(rec.cell, rec.row)].append(rec)

    def runs(self, row: str, cells: Sequence[str] | None = None) -> list[RunRecord]:
        """The records of ``row`` in ``cells`` (default: every cell), in grid order."""
        return [r for c in (cells or self.cells) for r in self.by_row.get((c, row), [])]

    def rows(self, kind: str | None = None) -> list[str]:
        """Row names (``teacher-t``, ``student-s/baseline`` ...) of ``kind`` in grid order."""
        return list(dict.fromkeys(r.row for r in self.records if kind is None or r.kind == kind))

    def students(self) -> list[str]:
        return list(dict.fromkeys(r.model_key for r in self.records if r.kind == "student"))

    def teachers(self) -> list[str]:
        return list(dict.fromkeys(r.model_key for r in self.records if r.kind == "teacher"))

    def student_rows(self, skey: str) -> list[tuple[str, str | None, str | None]]:
        """(row, objective, teacher) of one student's rows in grid order."""
        out = []
        for row in self.rows("student"):
            runs = [r for r in self.records if r.row == row]
            if runs and runs[0].model_key == skey:
                out.append((row, runs[0].objective, runs[0].teacher_key))
        return out

    def label(self, kind: str, key: str | None) -> str:
        """The preset's ``label`` of a teacher / student / objective (default: its key)."""
        spec = self.preset.get(kind, {}).get(key, {}) or {}
        return spec.get("label") or str(key)

    def objective_label(self, okey: str | None, tkey: str | None) -> str:
        label = self.label("objectives", okey)
        if tkey:
            label += f" ← {self.label('teachers', tkey)}"
        return label


def class_names(records: Sequence[RunRecord]) -> list[str]:
    """The foreground classes (or regions) the runs were scored on, from their evaluation summaries."""
    names: list[str] = []
    for rec in records:
        names.extend(c for c in rec.summary.get("foreground_classes", []) if c not in names)
    return names


def _metric_of(rec: RunRecord, metric: str, group: str | None = None) -> float | None:
    block = rec.summary["classes"].get(group, {}) if group else rec.summary["foreground_mean"]
    return block.get(metric, {}).get("mean")


def row_values(runs: Sequence[RunRecord], metric: str = "dice", group: str | None = None) -> list[float]:
    """The per-run means (one per seed / fold) of a metric, foreground mean or one class / region."""
    return [v for v in (_metric_of(r, metric, group) for r in runs) if v is not None]


def case_scores(runs: Sequence[RunRecord], metric: str = "dice") -> dict[str, float]:
    """Per test case (key ``cell/case``): the foreground mean of ``metric``, averaged over the runs' seeds."""
    acc: dict[str, list[float]] = defaultdict(list)
    for rec in runs:
        for case, value in case_foreground_means(rec.per_case, metric, rec.summary["foreground_classes"]).items():
            acc[f"{rec.cell}/{case}"].append(value)
    return {k: float(np.mean(v)) for k, v in acc.items()}


def significance(runs: list[RunRecord], base_runs: list[RunRecord]) -> dict[str, Any]:
    """Paired two-sided Wilcoxon test of the rows' :func:`case_scores`."""
    return paired_wilcoxon(case_scores(runs), case_scores(base_runs))


def fmt(values: Sequence[float], digits: int = 3) -> str:
    """``mean ± std`` over several runs; the bare value for one run (its spread is unknown, not zero)."""
    vals = [v for v in values if v is not None]
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return format_mean_std(vals, digits)


def fmt_p(test: dict[str, Any]) -> str:
    if test["p"] is None:
        return f"n/a ({test['reason']})" if test.get("reason") else "n/a"
    return "<0.001" if test["p"] < 1e-3 else f"{test['p']:.3f}"


def delta(values: list[float], base: list[float]) -> str:
    if not values or not base:
        return "n/a"
    return f"{np.mean(values) - np.mean(base):+.3f}"


def params_text(runs: Sequence[RunRecord], digits: int = 2) -> str:
    return f"{runs[0].params / 1e6:.{digits}f} M" if runs and runs[0].params else "n/a"


def footnote(ctx: ReportContext, extra: str = "") -> str:
    """The data / budget / hardware / seeds line under a table, plus ``extra``."""
    idx = ctx.index
    proto = idx["protocol"]
    data = ctx.records[0].config["data"] if ctx.records else {}
    size = "x".join(str(s) for s in data.get("size", []))
    parts = [f"Data: {Path(str(data.get('root', '?'))).name} ({data.get('dim', '?')}D, input {size})",
             f"budget: {idx['budget']}", f"hardware: {idx.get('hardware', '?')}"]
    seeds = sorted({r.seed for r in ctx.records})
    if proto["kind"] == "folds":
        parts.append(f"{proto['folds']}-fold cross-validation, {len(seeds)} seed(s) per fold; ± is over folds x seeds")
    else:
        parts.append(f"up to {len(seeds)} seed(s) per row (n column); ± is over seeds")
    if proto.get("simulated"):
        parts.append("sites are SIMULATED from one real dataset (not real multi-site data)")
    if extra:
        parts.append(extra)
    return "; ".join(parts) + "."
