"""The report's "What the unseen site costs" section, for grids on simulated sites.

Each run trained on simulated sites is also scored on its test cases without their simulated acquisition
(``evaluation/test-without-sites/``, :data:`medkd.evaluate.runner.TEST_WITHOUT_SITES`). Per row the section gives
the mean foreground Dice on the (simulated) target site and on the same volumes without it, mean ± std over the
row's runs, and the cost: the mean over runs of (without the site - on the site). Distillation that helps a
student generalise to an unseen site shows as a smaller cost than the student alone's; one that only helps on
data like the training sites does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medkd.experiment.collect import RunRecord
from medkd.report.context import ReportContext, fmt
from medkd.report.document import Document

__all__ = ["site_shift_rows", "site_shift_section"]


def _pairs(runs: Sequence[RunRecord]) -> list[tuple[float, float]]:
    """(on the site, without it) mean foreground Dice of each run that has both evaluations."""
    out = []
    for rec in runs:
        if rec.without_sites is None:
            continue
        on_site = rec.summary["foreground_mean"]["dice"]["mean"]
        without = rec.without_sites["summary"]["foreground_mean"]["dice"]["mean"]
        if on_site is not None and without is not None:
            out.append((float(on_site), float(without)))
    return out


def _row(what: str, runs: Sequence[RunRecord]) -> dict[str, Any] | None:
    pairs = _pairs(runs)
    if not pairs:
        return None
    on_site, without = (list(v) for v in zip(*pairs))
    return {"row": what, "runs": len(pairs), "on_site": on_site, "without_sites": without,
            "cost": float(np.mean(np.subtract(without, on_site)))}


def site_shift_rows(ctx: ReportContext) -> list[dict[str, Any]]:
    """One entry per teacher and student row with both evaluations: the per-run values and the mean cost."""
    rows = []
    for tkey in ctx.teachers():
        row = _row(ctx.label("teachers", tkey), ctx.runs(f"teacher-{tkey}"))
        if row is not None:
            rows.append(row)
    for skey in ctx.students():
        for name, okey, tkey in ctx.student_rows(skey):
            what = f"{ctx.label('students', skey)}: {ctx.objective_label(okey, tkey)}"
            row = _row(what, ctx.runs(name))
            if row is not None:
                rows.append(row)
    return rows


def site_shift_section(doc: Document, ctx: ReportContext, stats: dict[str, Any]) -> None:
    """Add the section (nothing when no run has an evaluation without sites) and ``stats["site_shift"]``."""
    rows = site_shift_rows(ctx)
    if not rows:
        return
    stats["site_shift"] = rows
    doc.heading("What the unseen site costs", 2)
    doc.paragraph(
        "Mean foreground Dice of each run on its test volumes as the simulated target site degrades them, and on "
        "the same volumes without the simulated acquisition (`medkd evaluate --without-sites`); mean ± std over the "
        "row's runs. Cost: the mean over runs of (without the site - on the site), in Dice. A row whose cost is "
        "smaller than the student alone's generalises better to the unseen site.")
    doc.table(["row", "runs", "on the target site", "same volumes, no site", "cost of the site"],
              [[r["row"], str(r["runs"]), fmt(r["on_site"]), fmt(r["without_sites"]), f"{r['cost']:+.3f}"]
               for r in rows])
