"""An experiment's records as a study report reads them: rows, cells, values, labels and number formats.

Cells of every study table are mean ± std over the seeds (and folds) of each run's mean over its test cases
(:func:`row_values`); the per-volume paired test uses each test case's foreground score averaged over the seeds
of a row (:func:`case_scores`, keyed ``cell/case``), the score being the evaluation's own per-case foreground mean;
the seed-level statistics (:func:`seed_level`) take one training run (``cell/seed<s>``) as the unit.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medkd.evaluate.stats import format_mean_std, hierarchical_bootstrap, paired_seed_test, paired_wilcoxon
from medkd.experiment.collect import RunRecord
from medkd.report.scores import case_foreground_means

__all__ = ["MIN_SEEDS", "N_BOOT", "RECIPE_OBJECTIVE", "ReportContext", "case_scores", "class_names", "delta", "fmt",
           "fmt_ci", "fmt_p", "fmt_seed_p", "footnote", "params_text", "row_values", "run_case_scores", "run_means",
           "seed_level", "significance"]

#: Fewest paired seeds (training runs) for which the report gives a seed-level paired t-test.
MIN_SEEDS = 3
#: The objective key of medkd's own row (the recommended recipe), shown beside the seed's objective.
RECIPE_OBJECTIVE = "medkd-recipe"
#: Bootstrap resamples of the seeds x volumes interval (fixed generator seed: a re-render gives the same CI).
N_BOOT = 10000


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


def _unit(rec: RunRecord) -> str:
    """The seed-level unit of a run: one training run, ``cell/seed<s>`` (a fold or target site times a seed)."""
    return f"{rec.cell}/seed{rec.seed}"


def run_means(runs: Sequence[RunRecord], metric: str = "dice") -> dict[str, float]:
    """Per training run (key ``cell/seed<s>``): its mean foreground ``metric`` over its test cases, as in
    :func:`row_values`."""
    return {_unit(r): v for r in runs if (v := _metric_of(r, metric)) is not None}


def run_case_scores(runs: Sequence[RunRecord], metric: str = "dice") -> dict[str, dict[str, float]]:
    """Per training run (key ``cell/seed<s>``): per test case, its foreground ``metric`` (not seed-averaged)."""
    return {_unit(r): case_foreground_means(r.per_case, metric, r.summary["foreground_classes"]) for r in runs}


def seed_level(runs: list[RunRecord], base_runs: list[RunRecord]) -> dict[str, Any]:
    """Seed-level statistics of a row against its baseline, the training run being the unit.

    Returns:
        ``{"unit", "spread", "paired_t", "bootstrap"}``: the spread (mean ± std over runs of each run's mean Dice)
        of the row and of the baseline; :func:`~medkd.evaluate.stats.paired_seed_test` over the runs both hold
        (same cell and seed; no p-value below :data:`MIN_SEEDS`); and
        :func:`~medkd.evaluate.stats.hierarchical_bootstrap` over runs, then test volumes.
    """
    a, b = run_means(runs), run_means(base_runs)
    return {
        "unit": "training run (protocol cell x seed), paired by cell and seed",
        "spread": {"row": fmt(list(a.values())), "row_n": len(a), "baseline": fmt(list(b.values())),
                   "baseline_n": len(b)},
        "paired_t": paired_seed_test(a, b, min_n=MIN_SEEDS),
        "bootstrap": hierarchical_bootstrap(run_case_scores(runs), run_case_scores(base_runs), n_boot=N_BOOT),
    }


def fmt_seed_p(test: dict[str, Any]) -> str:
    """The seed-level paired t cell: p and the number of paired seeds, or ``n/a (k seeds)``."""
    if test["p"] is None:
        if test["n"] < MIN_SEEDS:
            return f"n/a ({test['n']} seed{'s' if test['n'] != 1 else ''})"
        return f"n/a ({test['reason']})"
    p = "<0.001" if test["p"] < 1e-3 else f"{test['p']:.3f}"
    return f"{p} (n={test['n']})"


def fmt_ci(boot: dict[str, Any], digits: int = 3) -> str:
    """The bootstrap cell: ``[lo, hi]`` of the mean difference, or ``n/a (k seeds)`` below 2 paired seeds."""
    if boot["ci95"] is None:
        return f"n/a ({boot['n_seeds']} seed{'s' if boot['n_seeds'] != 1 else ''})"
    lo, hi = boot["ci95"]
    return f"[{lo:+.{digits}f}, {hi:+.{digits}f}]"


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
