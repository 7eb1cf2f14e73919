"""The report's "Loss balance" section: how hard each distillation term pulled on the student.

Each distilled run logs, per epoch, the mean gradient norm on the student's parameters of every part of its loss
(``train_gn/seg``, ``train_gn/kd/<term>``, ``train_gn/pseudo_label``; each as it enters the loss, its weight and
any balance scale included). A term's *ratio* in an epoch is its norm over the segmentation loss's. Per run the
section takes the median ratio over the first :data:`EARLY_SHARE` of the epochs (where a swamping term does its
damage) and over the whole run, then the median of those over the row's runs. A ratio above 1 means the term
pulled harder on the student than its own segmentation loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import median
from typing import Any

from medkd.experiment.collect import RunRecord
from medkd.report.context import ReportContext
from medkd.report.document import Document

__all__ = ["EARLY_SHARE", "balance_rows", "balance_section", "run_ratios"]

#: The share of a run's epochs counted as "early".
EARLY_SHARE = 0.2
_SEG = "train_gn/seg"
_PREFIX = "train_gn/"


def _epoch_ratios(epochs: Sequence[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """term -> [(epoch, ratio to the segmentation gradient)] over the epochs that logged both."""
    out: dict[str, list[tuple[int, float]]] = {}
    for rec in epochs:
        seg = rec.get(_SEG)
        if not isinstance(seg, (int, float)) or not math.isfinite(seg) or seg <= 0:
            continue
        for key, value in rec.items():
            if key.startswith(_PREFIX) and key != _SEG and isinstance(value, (int, float)) and math.isfinite(value):
                term = key.removeprefix(_PREFIX).removeprefix("kd/")
                out.setdefault(term, []).append((int(rec.get("epoch", 0)), float(value) / float(seg)))
    return out


def run_ratios(record: RunRecord) -> dict[str, dict[str, float]]:
    """term -> ``{"early": median ratio over the first EARLY_SHARE of epochs, "all": over every epoch}``."""
    ratios = _epoch_ratios(record.epochs)
    if not ratios:
        return {}
    last = max(epoch for series in ratios.values() for epoch, _ in series)
    early_until = max(1, math.ceil(EARLY_SHARE * last))
    out = {}
    for term, series in ratios.items():
        early = [r for epoch, r in series if epoch <= early_until] or [series[0][1]]
        out[term] = {"early": float(median(early)), "all": float(median(r for _, r in series))}
    return out


def balance_rows(ctx: ReportContext) -> list[dict[str, Any]]:
    """One entry per (distilled student row, term): the medians over the row's runs, and how many runs."""
    rows = []
    for skey in ctx.students():
        for row, okey, tkey in ctx.student_rows(skey):
            per_run = [r for r in (run_ratios(rec) for rec in ctx.runs(row)) if r]
            terms = list(dict.fromkeys(t for r in per_run for t in r))
            for term in terms:
                runs = [r[term] for r in per_run if term in r]
                rows.append({"student": skey, "row": row, "objective": okey, "teacher": tkey, "term": term,
                             "early": float(median(r["early"] for r in runs)),
                             "all": float(median(r["all"] for r in runs)), "runs": len(runs)})
    return rows


def balance_section(doc: Document, ctx: ReportContext, stats: dict[str, Any]) -> None:
    """Add the section (nothing when no run logged gradient norms) and its rows to ``stats["loss_balance"]``."""
    rows = balance_rows(ctx)
    if not rows:
        return
    stats["loss_balance"] = rows
    doc.heading("Loss balance: each distillation term's gradient against the segmentation loss's", 2)
    doc.paragraph(
        f"Gradient norm on the student's parameters of each term as it enters the loss (weight and balance scale "
        f"included) over the segmentation loss's, from the epoch means in each run's metrics.jsonl; the median over "
        f"the first {EARLY_SHARE:.0%} of a run's epochs and over all of them, then the median over the row's runs. "
        f"Above 1, the term pulled on the student harder than the segmentation loss did.")
    doc.table(["student", "objective", "term", f"ratio, first {EARLY_SHARE:.0%} of epochs", "ratio, whole run",
               "runs"],
              [[ctx.label("students", r["student"]), ctx.objective_label(r["objective"], r["teacher"]), r["term"],
                f"{r['early']:.2f}", f"{r['all']:.2f}", str(r["runs"])] for r in rows])
