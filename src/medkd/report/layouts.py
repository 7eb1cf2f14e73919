"""The table layouts of a study report, one per preset ``study``.

* ``paper_a`` (paper A, Tables 2-4): per student, rows = teacher / student w/o KD / student w/ KD from each
  teacher (the seed's full objective, and medkd's recipe as its own row), columns = target sites (+ mean); then
  the ablation (rows = objectives, columns = target sites);
* ``thesis_b`` (thesis Tables 4.2-4.11): per student, rows = objectives (scale subsets x PMD, contrastive / MSE),
  columns IoU, Dice, recall, precision; the teacher with its reconstruction PSNR; one-way ANOVA;
* ``kdnet`` (KD-Net Tables 1-2): rows = teacher / objectives, columns WT, TC, ET (Dice), per skip setting;
* ``generic`` (a preset without ``study:``): per student, rows = teachers then every objective, columns =
  protocol cells (when more than one), Dice per class and the foreground mean.

Captions name the classes the runs were scored on (from their evaluation summaries). Each layout records every
comparison with its baseline in ``stats[row]`` (and the ANOVA in ``stats["anova/<student>"]``); every comparison
row ends with the same columns (:data:`COMPARISON_HEADERS`): the per-volume Wilcoxon, the seed-level paired t and
the seeds x volumes bootstrap interval.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from medkd.evaluate.stats import one_way_anova
from medkd.experiment.collect import RunRecord
from medkd.report.context import (
    RECIPE_OBJECTIVE,
    ReportContext,
    case_scores,
    class_names,
    delta,
    fmt,
    fmt_ci,
    fmt_p,
    fmt_seed_p,
    footnote,
    params_text,
    row_values,
    seed_level,
    significance,
)
from medkd.report.document import Document

__all__ = ["COMPARISON_HEADERS", "LAYOUTS", "comparison", "comparison_cells"]

METRIC_NAMES = {"dice": "Dice", "iou": "IoU", "recall": "Recall", "precision": "Precision"}

Layout = Callable[[Document, ReportContext, dict[str, Any]], None]


#: The comparison columns every layout ends its rows with (see :func:`comparison_cells`).
COMPARISON_HEADERS = ["p (volumes, Wilcoxon)", "p (seeds, paired t)", "95% CI (bootstrap seeds x volumes)", "n"]


def comparison(runs: list[RunRecord], base_runs: list[RunRecord]) -> dict[str, Any]:
    """A row against its baseline: Δ of the means, the per-volume Wilcoxon (seed-averaged volumes) and the
    seed-level statistics (:func:`~medkd.report.context.seed_level`), as ``statistics.json`` records them."""
    test = significance(runs, base_runs)
    return {"delta": delta(row_values(runs), row_values(base_runs)),
            "wilcoxon": {k: v for k, v in test.items() if k != "cases"}, **seed_level(runs, base_runs)}


def comparison_cells(runs: list[RunRecord], base_runs: list[RunRecord] | None, n_text: str,
                     stats: dict[str, Any] | None = None, key: str | None = None) -> list[str]:
    """The "Δ vs baseline" cell and the :data:`COMPARISON_HEADERS` cells of a row (blank but ``n`` for the baseline
    itself); records the comparison in ``stats[key]`` (computed once per key)."""
    if base_runs is None:
        return ["", "", "", "", n_text]
    if stats is not None and key is not None and key in stats:
        cmp = stats[key]
    else:
        cmp = comparison(runs, base_runs)
        if stats is not None and key is not None:
            stats[key] = cmp
    test = cmp["wilcoxon"]
    return [cmp["delta"], f"{fmt_p(test)} (n={test['n']})", fmt_seed_p(cmp["paired_t"]), fmt_ci(cmp["bootstrap"]),
            n_text]


def _site_row(label: str, runs: list[RunRecord], cells: list[str], base_runs: list[RunRecord] | None,
              stats: dict[str, Any] | None = None, key: str | None = None) -> list[str]:
    row = [label, params_text(runs)]
    for cell in cells:
        row.append(fmt(row_values([r for r in runs if r.cell == cell])))
    row.append(fmt(row_values(runs)))
    return row + comparison_cells(runs, base_runs, str(len(runs)), stats, key)


def _teacher_site_rows(ctx: ReportContext, cells: list[str]) -> list[list[str]]:
    return [_site_row(f"Teacher {ctx.label('teachers', t)}", ctx.runs(f"teacher-{t}"), cells, None)
            for t in ctx.teachers()]


# --------------------------------------------------------------------------------------------- paper A
def _paper_a(doc: Document, ctx: ReportContext, stats: dict[str, Any]) -> None:
    cells = ctx.cells
    baseline, headline = ctx.index["baseline"], ctx.index["headline"]
    headers = (["method", "params"] + [f"target {c.removeprefix('sites-')}" for c in cells]
               + ["mean", "Δ vs w/o KD", *COMPARISON_HEADERS])
    classes = ", ".join(class_names(ctx.records))
    doc.heading("Generalisation to unseen (simulated) target sites (paper A, Tables 2-3 layout)", 2)
    for skey in ctx.students():
        rows_out = _teacher_site_rows(ctx, cells)
        base_row = f"student-{skey}/{baseline}"
        base_runs = ctx.runs(base_row)
        for row, okey, tkey in ctx.student_rows(skey):
            if okey not in (baseline, headline, RECIPE_OBJECTIVE) and row != base_row:
                continue
            label = f"{ctx.label('students', skey)} " + (
                "w/o KD" if okey == baseline else f"w/ KD ({ctx.objective_label(okey, tkey)})")
            rows_out.append(_site_row(label, ctx.runs(row), cells, None if okey == baseline else base_runs,
                                      stats, row))
        doc.heading(f"Student {ctx.label('students', skey)}", 3)
        doc.table(headers, rows_out, caption=footnote(ctx, f"cells: mean foreground Dice ({classes}) per test "
                                                           "volume, mean ± std over seeds"))
    doc.heading("Module ablation and comparison methods (paper A, Tables 3-4 layout)", 2)
    for skey in ctx.students():
        base_runs = ctx.runs(f"student-{skey}/{baseline}")
        rows_out = [_site_row(ctx.objective_label(okey, tkey), ctx.runs(row), cells,
                              None if okey == baseline else base_runs, stats, row)
                    for row, okey, tkey in ctx.student_rows(skey)]
        doc.heading(f"Student {ctx.label('students', skey)}", 3)
        doc.table(headers, rows_out, caption=footnote(ctx, "cells: mean foreground Dice per test volume"))


# --------------------------------------------------------------------------------------------- thesis B
def _thesis_teachers(doc: Document, ctx: ReportContext, metrics: list[str]) -> None:
    doc.heading("Teachers", 2)
    rows_out = []
    for tkey in ctx.teachers():
        runs = ctx.runs(f"teacher-{tkey}")
        psnr = [r.reconstruction["psnr"]["mean"] for r in runs if r.reconstruction and
                r.reconstruction["psnr"]["mean"] is not None]
        rows_out.append([ctx.label("teachers", tkey), params_text(runs)]
                        + [fmt(row_values(runs, m)) for m in metrics] + [fmt(psnr, 2), str(len(runs))])
    classes = ", ".join(class_names(ctx.records))
    doc.table(["teacher", "params"] + [METRIC_NAMES[m] for m in metrics] + ["recon. PSNR (dB)", "n"], rows_out,
              caption=footnote(ctx, f"metrics: mean over {classes} per test volume; PSNR of the reconstruction "
                                    "head against its (z-scored) input, per test volume"))


def _anova_paragraph(ctx: ReportContext, skey: str, groups: dict[str, list[float]], stats: dict[str, Any]) -> str:
    anova = one_way_anova(groups)
    stats[f"anova/{skey}"] = anova
    f_txt = "n/a" if anova["F"] is None else f"{anova['F']:.3f}"
    p_txt = "n/a" if anova["p"] is None else ("<0.0001" if anova["p"] < 1e-4 else f"{anova['p']:.4f}")
    return (f"One-way ANOVA over the per-test-volume Dice (averaged over seeds) of the baseline and every "
            f"distilled row of {ctx.label('students', skey)}: F = {f_txt}, p = {p_txt}, "
            f"df = {anova['df']}" + (f" ({anova['reason']})" if anova["reason"] else "") + ".")


def _thesis_b(doc: Document, ctx: ReportContext, stats: dict[str, Any]) -> None:
    baseline = ctx.index["baseline"]
    metrics = ["iou", "dice", "recall", "precision"]
    headers = ["method", "params"] + [METRIC_NAMES[m] for m in metrics] + ["Δ Dice", *COMPARISON_HEADERS]
    _thesis_teachers(doc, ctx, metrics)
    doc.heading("Students (thesis Tables 4.2-4.11 layout)", 2)
    for skey in ctx.students():
        base_runs = ctx.runs(f"student-{skey}/{baseline}")
        rows_out, anova_groups = [], {}
        for row, okey, tkey in ctx.student_rows(skey):
            runs = ctx.runs(row)
            label = ctx.objective_label(okey, tkey)
            rows_out.append([label, params_text(runs, 3)] + [fmt(row_values(runs, m)) for m in metrics]
                            + comparison_cells(runs, None if okey == baseline else base_runs, str(len(runs)),
                                               stats, row))
            if okey == baseline or tkey is not None:
                anova_groups[label] = list(case_scores(runs).values())
        doc.heading(f"Student {ctx.label('students', skey)}", 3)
        doc.table(headers, rows_out, caption=footnote(ctx, "students train on 50% of the teacher's training "
                                                           "patients unless marked 100%"))
        doc.paragraph("The distilled rows keep the thesis' weights (0.4 x Dice loss + the distillation terms); the "
                      "students alone train with 1.0 x Dice loss, so a distilled row also differs by its lower "
                      "segmentation weight; the 'PMD only' row is the closest to that alone.")
        doc.paragraph(_anova_paragraph(ctx, skey, anova_groups, stats))


# --------------------------------------------------------------------------------------------- KD-Net
def _kdnet(doc: Document, ctx: ReportContext, stats: dict[str, Any]) -> None:
    baseline = ctx.index["baseline"]
    regions = list(ctx.records[0].summary["foreground_classes"])  # e.g. WT, TC, ET
    headers = ["method", "params"] + [f"Dice {g}" for g in regions] + ["mean", "Δ vs GT", *COMPARISON_HEADERS]
    doc.heading("Multi-modal teacher vs mono-modal students (KD-Net Tables 1-2 layout)", 2)
    for skey in ctx.students():
        rows_out = []
        teacher_keys = ctx.preset.get("students", {}).get(skey, {}).get("teachers") or ctx.teachers()
        for tkey in teacher_keys:
            runs = ctx.runs(f"teacher-{tkey}")
            if runs:
                rows_out.append([ctx.label("teachers", tkey), params_text(runs)]
                                + [fmt(row_values(runs, "dice", g)) for g in regions]
                                + [fmt(row_values(runs)), "", "", "", "", str(len(runs))])
        base_runs = ctx.runs(f"student-{skey}/{baseline}")
        for row, okey, _tkey in ctx.student_rows(skey):
            runs = ctx.runs(row)
            rows_out.append([ctx.objective_label(okey, None), params_text(runs)]
                            + [fmt(row_values(runs, "dice", g)) for g in regions] + [fmt(row_values(runs))]
                            + comparison_cells(runs, None if okey == baseline else base_runs, str(len(runs)),
                                               stats, row))
        doc.heading(ctx.label("students", skey), 3)
        doc.table(headers, rows_out, caption=footnote(ctx, "Dice per BraTS region per test volume (WT = labels "
                                                           "1-4, TC = 1, 3, 4, ET = 4); mean = over the 3 regions"))


# --------------------------------------------------------------------------------------------- generic
def _generic_row(label: str, runs: list[RunRecord], cells: list[str], classes: list[str],
                 base_runs: list[RunRecord] | None, stats: dict[str, Any], key: str | None) -> list[str]:
    row = [label, params_text(runs)]
    if len(cells) > 1:
        row += [fmt(row_values([r for r in runs if r.cell == cell])) for cell in cells]
    row += [fmt(row_values(runs, "dice", c)) for c in classes] + [fmt(row_values(runs))]
    return row + comparison_cells(runs, base_runs, str(len(runs)), stats, key)


def _generic(doc: Document, ctx: ReportContext, stats: dict[str, Any]) -> None:
    baseline = ctx.index["baseline"]
    classes = class_names(ctx.records)
    cells = ctx.cells if len(ctx.cells) > 1 else []
    headers = (["method", "params"] + cells + [f"Dice {c}" for c in classes]
               + ["mean", f"Δ vs {ctx.label('objectives', baseline)}", *COMPARISON_HEADERS])
    doc.heading("Teachers and students on the test cases", 2)
    for skey in ctx.students():
        base_runs = ctx.runs(f"student-{skey}/{baseline}")
        rows_out = [_generic_row(f"Teacher {ctx.label('teachers', t)}", ctx.runs(f"teacher-{t}"), cells,
                                 classes, None, stats, None) for t in ctx.teachers()]
        for row, okey, tkey in ctx.student_rows(skey):
            rows_out.append(_generic_row(ctx.objective_label(okey, tkey), ctx.runs(row), cells, classes,
                                         None if okey == baseline else base_runs, stats, row))
        doc.heading(f"Student {ctx.label('students', skey)}", 3)
        cols = "per protocol cell, " if cells else ""
        doc.table(headers, rows_out, caption=footnote(ctx, f"cells: mean Dice {cols}per class and over the "
                                                           f"foreground classes ({', '.join(classes)}) per test "
                                                           "volume, mean ± std over seeds"))


LAYOUTS: dict[str, Layout] = {"paper_a": _paper_a, "thesis_b": _thesis_b, "kdnet": _kdnet, "generic": _generic}
