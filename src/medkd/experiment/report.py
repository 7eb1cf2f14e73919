"""``medkd report DIR``: an experiment's tables, statistics and figures as Markdown + HTML.

Tables follow the seeds' layouts:

* ``paper_a`` (paper A, Tables 2-4): per student, rows = teacher / student w/o KD / student w/ KD from each
  teacher, columns = target sites (+ mean); then the ablation (rows = objectives, columns = target sites);
* ``thesis_b`` (thesis Tables 4.2-4.11): per student, rows = objectives (scale subsets x PMD, contrastive / MSE),
  columns IoU, Dice, recall, precision; the teacher with its reconstruction PSNR; one-way ANOVA;
* ``kdnet`` (KD-Net Tables 1-2): rows = teacher / objectives, columns WT, TC, ET (Dice), per skip setting.

Cells are mean ± std over the seeds (and over the folds for k-fold protocols) of each run's mean over its test
cases. "Δ" is the row's mean minus the baseline student's (same student, same cells). The p-value is a paired,
two-sided Wilcoxon signed-rank test (:func:`medkd.evaluate.stats.paired_wilcoxon`) over test cases: each case's
foreground Dice (mean over the classes / regions) is first averaged over the seeds of each method, and cases are
pooled over target sites / folds (a case is keyed by cell and case id).
"""

from __future__ import annotations

import json
import platform
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medkd.errors import MedkdError
from medkd.evaluate.stats import format_mean_std, one_way_anova, paired_wilcoxon
from medkd.experiment.collect import RunRecord, collect_runs, load_records
from medkd.io import atomic_write_json
from medkd.report.document import Document

__all__ = ["ReportContext", "case_scores", "render_report", "row_values"]

METRIC_NAMES = {"dice": "Dice", "iou": "IoU", "recall": "Recall", "precision": "Precision"}


class ReportContext:
    """The index and records of one experiment, with lookup helpers."""

    def __init__(self, index: dict[str, Any], records: list[RunRecord]) -> None:
        self.index = index
        self.records = records
        self.cells = list(dict.fromkeys(r["cell"] for r in index["runs"]))
        self.by_row: dict[tuple[str, str], list[RunRecord]] = defaultdict(list)
        for rec in records:
            self.by_row[(rec.cell, rec.row)].append(rec)

    def runs(self, row: str, cells: Sequence[str] | None = None) -> list[RunRecord]:
        return [r for c in (cells or self.cells) for r in self.by_row.get((c, row), [])]

    def rows(self, kind: str | None = None) -> list[str]:
        seen = dict.fromkeys(r.row for r in self.records if kind is None or r.kind == kind)
        return list(seen)


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
        groups = rec.summary["foreground_classes"]
        for case in rec.per_case:
            vals = [case["metrics"][g][metric] for g in groups if case["metrics"].get(g, {}).get(metric) is not None]
            if vals:
                acc[f"{rec.cell}/{case['case']}"].append(float(np.mean(vals)))
    return {k: float(np.mean(v)) for k, v in acc.items()}


def _fmt(values: Sequence[float], digits: int = 3) -> str:
    """``mean ± std`` over several runs; the bare value for one run (its spread is unknown, not zero)."""
    vals = [v for v in values if v is not None]
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return format_mean_std(vals, digits)


def _fmt_p(test: dict[str, Any]) -> str:
    if test["p"] is None:
        return f"n/a ({test['reason']})" if test.get("reason") else "n/a"
    return "<0.001" if test["p"] < 1e-3 else f"{test['p']:.3f}"


def _delta(values: list[float], base: list[float]) -> str:
    if not values or not base:
        return "n/a"
    return f"{np.mean(values) - np.mean(base):+.3f}"


def _seeds_text(runs: Sequence[RunRecord]) -> str:
    return str(len(runs))


def _footnote(ctx: ReportContext, extra: str = "") -> str:
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


def _label(preset: dict[str, Any], kind: str, key: str) -> str:
    spec = preset.get(kind, {}).get(key, {})
    return spec.get("label") or key


def _objective_label(preset: dict[str, Any], okey: str, tkey: str | None) -> str:
    label = _label(preset, "objectives", okey)
    if tkey:
        label += f" ← {_label(preset, 'teachers', tkey)}"
    return label


def _student_rows(ctx: ReportContext, skey: str) -> list[tuple[str, str | None, str | None]]:
    """(row, objective, teacher) of one student's rows in grid order."""
    out = []
    for row in ctx.rows("student"):
        runs = [r for r in ctx.records if r.row == row]
        if runs and runs[0].model_key == skey:
            out.append((row, runs[0].objective, runs[0].teacher_key))
    return out


def _students(ctx: ReportContext) -> list[str]:
    return list(dict.fromkeys(r.model_key for r in ctx.records if r.kind == "student"))


def _teachers(ctx: ReportContext) -> list[str]:
    return list(dict.fromkeys(r.model_key for r in ctx.records if r.kind == "teacher"))


def _significance(ctx: ReportContext, runs: list[RunRecord], base_runs: list[RunRecord]) -> dict[str, Any]:
    return paired_wilcoxon(case_scores(runs), case_scores(base_runs))


# --------------------------------------------------------------------------------------------- paper A
def _paper_a(doc: Document, ctx: ReportContext, preset: dict[str, Any], stats: dict[str, Any]) -> None:
    cells = ctx.cells
    site_names = [c.removeprefix("sites-") for c in cells]
    baseline, headline = ctx.index["baseline"], ctx.index["headline"]
    headers = ["method", "params"] + [f"target {s}" for s in site_names] + ["mean", "Δ vs w/o KD", "p (Wilcoxon)", "n"]
    doc.heading("Generalisation to unseen (simulated) target sites (paper A, Tables 2-3 layout)", 2)
    for skey in _students(ctx):
        rows_out = []
        for tkey in _teachers(ctx):
            runs = ctx.runs(f"teacher-{tkey}")
            rows_out.append(_site_row(ctx, f"Teacher {_label(preset, 'teachers', tkey)}", runs, cells, None))
        base_row = f"student-{skey}/{baseline}"
        base_runs = ctx.runs(base_row)
        for row, okey, tkey in _student_rows(ctx, skey):
            if okey not in (baseline, headline) and row != base_row:
                continue
            runs = ctx.runs(row)
            label = f"{_label(preset, 'students', skey)} " + (
                "w/o KD" if okey == baseline else f"w/ KD ({_objective_label(preset, okey, tkey)})")
            rows_out.append(_site_row(ctx, label, runs, cells, None if okey == baseline else base_runs,
                                      stats, row))
        doc.heading(f"Student {_label(preset, 'students', skey)}", 3)
        doc.table(headers, rows_out, caption=_footnote(ctx, "cells: mean foreground Dice (RV, MYO, LV) per test "
                                                           "volume, mean ± std over seeds"))
    doc.heading("Module ablation and comparison methods (paper A, Tables 3-4 layout)", 2)
    for skey in _students(ctx):
        base_runs = ctx.runs(f"student-{skey}/{baseline}")
        rows_out = []
        for row, okey, tkey in _student_rows(ctx, skey):
            runs = ctx.runs(row)
            rows_out.append(_site_row(ctx, _objective_label(preset, okey, tkey), runs, cells,
                                      None if okey == baseline else base_runs, stats, row))
        doc.heading(f"Student {_label(preset, 'students', skey)}", 3)
        doc.table(headers, rows_out, caption=_footnote(ctx, "cells: mean foreground Dice per test volume"))


def _params_text(runs: list[RunRecord], digits: int = 2) -> str:
    return f"{runs[0].params / 1e6:.{digits}f} M" if runs and runs[0].params else "n/a"


def _comparison_cells(ctx: ReportContext, runs: list[RunRecord], base_runs: list[RunRecord] | None,
                      n_text: str, stats: dict[str, Any] | None = None, key: str | None = None) -> list[str]:
    """The "Δ vs baseline", "p (Wilcoxon)" and "n" cells of a row (blank Δ and p for the baseline itself);
    records the comparison in ``stats[key]``."""
    if base_runs is None:
        return ["", "", n_text]
    test = _significance(ctx, runs, base_runs)
    delta = _delta(row_values(runs), row_values(base_runs))
    if stats is not None and key is not None:
        stats[key] = {"delta": delta, "wilcoxon": {k: v for k, v in test.items() if k != "cases"}}
    return [delta, f"{_fmt_p(test)} (n={test['n']})", n_text]


def _site_row(ctx: ReportContext, label: str, runs: list[RunRecord], cells: list[str],
              base_runs: list[RunRecord] | None, stats: dict[str, Any] | None = None, key: str | None = None
              ) -> list[str]:
    row = [label, _params_text(runs)]
    for cell in cells:
        row.append(_fmt(row_values([r for r in runs if r.cell == cell])))
    row.append(_fmt(row_values(runs)))
    return row + _comparison_cells(ctx, runs, base_runs, _seeds_text(runs), stats, key)


# --------------------------------------------------------------------------------------------- thesis B
def _thesis_b(doc: Document, ctx: ReportContext, preset: dict[str, Any], stats: dict[str, Any]) -> None:
    baseline = ctx.index["baseline"]
    metrics = ["iou", "dice", "recall", "precision"]
    headers = ["method", "params"] + [METRIC_NAMES[m] for m in metrics] + ["Δ Dice", "p (Wilcoxon)", "n"]
    doc.heading("Teachers", 2)
    rows_out = []
    for tkey in _teachers(ctx):
        runs = ctx.runs(f"teacher-{tkey}")
        psnr = [r.reconstruction["psnr"]["mean"] for r in runs if r.reconstruction and
                r.reconstruction["psnr"]["mean"] is not None]
        rows_out.append([_label(preset, "teachers", tkey), _params_text(runs)]
                        + [_fmt(row_values(runs, m)) for m in metrics]
                        + [_fmt(psnr, 2), str(len(runs))])
    doc.table(["teacher", "params"] + [METRIC_NAMES[m] for m in metrics] + ["recon. PSNR (dB)", "n"], rows_out,
              caption=_footnote(ctx, "metrics: mean over RV, MYO, LV per test volume; PSNR of the reconstruction "
                                     "head against its (z-scored) input, per test volume"))
    doc.heading("Students (thesis Tables 4.2-4.11 layout)", 2)
    for skey in _students(ctx):
        base_runs = ctx.runs(f"student-{skey}/{baseline}")
        rows_out, anova_groups = [], {}
        for row, okey, tkey in _student_rows(ctx, skey):
            runs = ctx.runs(row)
            label = _objective_label(preset, okey, tkey)
            line = [label, _params_text(runs, 3)]
            line += [_fmt(row_values(runs, m)) for m in metrics]
            line += _comparison_cells(ctx, runs, None if okey == baseline else base_runs, str(len(runs)), stats, row)
            rows_out.append(line)
            if okey == baseline or tkey is not None:
                anova_groups[label] = list(case_scores(runs).values())
        doc.heading(f"Student {_label(preset, 'students', skey)}", 3)
        doc.table(headers, rows_out, caption=_footnote(ctx, "students train on 50% of the teacher's training "
                                                            "patients unless marked 100%"))
        doc.paragraph("The distilled rows keep the thesis' weights (0.4 x Dice loss + the distillation terms); the "
                      "students alone train with 1.0 x Dice loss, so a distilled row also differs by its lower "
                      "segmentation weight; the 'PMD only' row is the closest to that alone.")
        anova = one_way_anova(anova_groups)
        stats[f"anova/{skey}"] = anova
        f_txt = "n/a" if anova["F"] is None else f"{anova['F']:.3f}"
        p_txt = "n/a" if anova["p"] is None else ("<0.0001" if anova["p"] < 1e-4 else f"{anova['p']:.4f}")
        doc.paragraph(f"One-way ANOVA over the per-test-volume Dice (averaged over seeds) of the baseline and every "
                      f"distilled row of {_label(preset, 'students', skey)}: F = {f_txt}, p = {p_txt}, "
                      f"df = {anova['df']}" + (f" ({anova['reason']})" if anova["reason"] else "") + ".")


# --------------------------------------------------------------------------------------------- KD-Net
def _kdnet(doc: Document, ctx: ReportContext, preset: dict[str, Any], stats: dict[str, Any]) -> None:
    baseline = ctx.index["baseline"]
    regions = list(ctx.records[0].summary["foreground_classes"])  # e.g. WT, TC, ET
    headers = ["method", "params"] + [f"Dice {g}" for g in regions] + ["mean", "Δ vs GT", "p (Wilcoxon)", "n"]
    doc.heading("Multi-modal teacher vs mono-modal students (KD-Net Tables 1-2 layout)", 2)
    for skey in _students(ctx):
        rows_out = []
        teacher_keys = preset.get("students", {}).get(skey, {}).get("teachers") or _teachers(ctx)
        for tkey in teacher_keys:
            runs = ctx.runs(f"teacher-{tkey}")
            if runs:
                rows_out.append([_label(preset, "teachers", tkey), _params_text(runs)]
                                + [_fmt(row_values(runs, "dice", g)) for g in regions]
                                + [_fmt(row_values(runs)), "", "", str(len(runs))])
        base_runs = ctx.runs(f"student-{skey}/{baseline}")
        for row, okey, _tkey in _student_rows(ctx, skey):
            runs = ctx.runs(row)
            line = [_objective_label(preset, okey, None), _params_text(runs)]
            line += [_fmt(row_values(runs, "dice", g)) for g in regions]
            line.append(_fmt(row_values(runs)))
            line += _comparison_cells(ctx, runs, None if okey == baseline else base_runs, str(len(runs)), stats, row)
            rows_out.append(line)
        doc.heading(_label(preset, "students", skey), 3)
        doc.table(headers, rows_out, caption=_footnote(ctx, "Dice per BraTS region per test volume (WT = labels "
                                                            "1-4, TC = 1, 3, 4, ET = 4); mean = over the 3 regions"))


# --------------------------------------------------------------------------------------------- figures
def _curves(ctx: ReportContext, preset: dict[str, Any], out: Path) -> Path | None:
    from medkd.report.figures import plot_training_curves

    cell = ctx.cells[0]
    baseline, headline = ctx.index["baseline"], ctx.index["headline"]
    hist = {}
    for rec in ctx.records:
        if rec.cell != cell or rec.seed != 0 or not rec.epochs:
            continue
        if rec.kind == "teacher" or rec.objective in (baseline, headline):
            hist[rec.row] = rec.epochs
    if not hist:
        return None
    return plot_training_curves(hist, out / "figures" / "training_curves.png")


def _qualitative(folder: Path, ctx: ReportContext, out: Path, n_rows: int = 3) -> Path | None:
    """Middle slice of a few test cases: reference (red) and the teacher / baseline / headline predictions."""
    import torch

    from medkd.data.loader import open_dataset
    from medkd.data.pipeline import prepare_cases
    from medkd.inference import predict_volume
    from medkd.report.figures import plot_qualitative
    from medkd.train.run_folder import load_run_model

    cell = ctx.cells[0]
    baseline, headline = ctx.index["baseline"], ctx.index["headline"]
    chosen = [r for r in ctx.records if r.cell == cell and r.seed == 0 and
              (r.kind == "teacher" or r.objective in (baseline, headline))]
    first_student = next((r.model_key for r in chosen if r.kind == "student"), None)
    chosen = [r for r in chosen if r.kind == "teacher" or r.model_key == first_student]
    students = [r for r in chosen if r.kind == "student"]
    if not students or not (folder / "runs" / students[0].name / "split.json").is_file():
        return None
    ref_run = folder / "runs" / students[0].name
    info = json.loads((ref_run / "split.json").read_text())
    _, cfg = load_run_model(ref_run)
    index = open_dataset(cfg.data, root=info["dataset"])
    cases = info["test"][:: max(1, len(info["test"]) // n_rows)][:n_rows]
    images, refs, labels = [], [], []
    preds: dict[str, list[np.ndarray]] = {}
    for cid in cases:
        pc = prepare_cases(index, [cid], index.channel_indices(info["channels"]), cfg.data)[0]
        ref = pc.reference
        z = int(np.argmax((ref > 0).reshape(-1, ref.shape[-1]).sum(0))) if ref.ndim == 3 else None
        if pc.grid is None:
            img = np.asarray(pc.image[0], dtype=np.float32)
        else:  # the grid changed (crop / resize): show the file's image on the reference grid
            from medkd.data.pipeline import load_case

            case = next(c for c in index.cases if c.case_id == cid)
            img = np.asarray(load_case(case, index.channel_indices(info["channels"]), index=index)[0][0],
                             dtype=np.float32)
        images.append(img[..., z] if z is not None else img)
        refs.append(ref[..., z] if z is not None else ref)
        labels.append(f"{cid}" + (f" ({pc.site})" if pc.site else ""))
    for rec in chosen:
        run_dir = folder / "runs" / rec.name
        model, mcfg = load_run_model(run_dir)
        minfo = json.loads((run_dir / "split.json").read_text())
        mindex = open_dataset(mcfg.data, root=minfo["dataset"])
        label = rec.row.split("/", 1)[-1] if rec.kind == "student" else rec.row
        preds[label] = []
        for k, cid in enumerate(cases):
            pc = prepare_cases(mindex, [cid], mindex.channel_indices(minfo["channels"]), mcfg.data)[0]
            with torch.no_grad():
                probs = pc.restore(predict_volume(model, pc.image, mcfg.data.dim, mcfg.data.size,
                                                  mcfg.data.volume_size, mcfg.evaluate.batch_size,
                                                  mcfg.evaluate.sw_overlap))
            lab = probs.argmax(0).numpy()
            z = int(np.argmax((pc.reference > 0).reshape(-1, pc.reference.shape[-1]).sum(0))) \
                if lab.ndim == 3 else None
            preds[label].append(lab[..., z] if z is not None else lab)
            if preds[label][-1].shape != refs[k].shape:
                raise MedkdError(f"{run_dir}: prediction grid {lab.shape} differs from the reference's")
    return plot_qualitative(images, refs, preds, out / "figures" / "qualitative.png", labels)


# --------------------------------------------------------------------------------------------- entry
LAYOUTS: dict[str, Callable[[Document, ReportContext, dict[str, Any], dict[str, Any]], None]] = {
    "paper_a": _paper_a, "thesis_b": _thesis_b, "kdnet": _kdnet, "generic": _paper_a,
}


def _headline_summary(ctx: ReportContext, preset: dict[str, Any]) -> list[str]:
    baseline, headline = ctx.index["baseline"], ctx.index["headline"]
    lines = []
    for skey in _students(ctx):
        base_runs = ctx.runs(f"student-{skey}/{baseline}")
        for row, okey, tkey in _student_rows(ctx, skey):
            if okey != headline:
                continue
            runs = ctx.runs(row)
            test = _significance(ctx, runs, base_runs)
            teacher = ctx.runs(f"teacher-{tkey}") if tkey else []
            b_vals, h_vals, t_vals = row_values(base_runs), row_values(runs), row_values(teacher)
            verdict = "no significant difference"
            if test["p"] is not None and test["p"] < 0.05:
                verdict = "distillation helped (p < 0.05)" if (test["delta"] or 0) > 0 else \
                    "distillation HURT (p < 0.05)"
            lines.append(
                f"{_label(preset, 'students', skey)}: alone {_fmt(b_vals)} (n={len(b_vals)}), "
                f"{_label(preset, 'objectives', okey)} {_fmt(h_vals)} (n={len(h_vals)}), "
                f"teacher ({_label(preset, 'teachers', tkey)}) {_fmt(t_vals)} (n={len(t_vals)}); "
                f"Δ {_delta(h_vals, b_vals)}, paired Wilcoxon over {test['n']} test volumes p = {_fmt_p(test)}: "
                f"{verdict}.")
    return lines


def _closing_note(ctx: ReportContext, preset: dict[str, Any], stats: dict[str, Any]) -> str:
    """One paragraph from the numbers: how many distilled rows helped / hurt significantly, and the best one."""
    rows = {k: v for k, v in stats.items() if isinstance(v, dict) and "wilcoxon" in v}
    if not rows:
        return "No distilled row finished; nothing to conclude."
    better = [k for k, v in rows.items() if (v["wilcoxon"]["p"] or 1) < 0.05 and (v["wilcoxon"]["delta"] or 0) > 0]
    worse = [k for k, v in rows.items() if (v["wilcoxon"]["p"] or 1) < 0.05 and (v["wilcoxon"]["delta"] or 0) < 0]
    deltas = {k: float(v["delta"]) for k, v in rows.items() if v["delta"] not in (None, "n/a")}
    best = max(deltas, key=deltas.get) if deltas else None
    text = (f"Of {len(rows)} rows compared with their baseline student ({ctx.index['budget']} budget, "
            f"{ctx.index.get('hardware', '?')}), {len(better)} were significantly better and {len(worse)} "
            f"significantly worse (paired Wilcoxon, p < 0.05); the rest showed no significant difference or had too "
            f"few paired test cases to test.")
    if best is not None:
        text += f" Highest mean change: {best} ({deltas[best]:+.3f} Dice)."
    student_rows = dict.fromkeys(r.row for r in ctx.records if r.kind == "student")
    collapsed = [row for row in student_rows if max(row_values(ctx.runs(row)) or [1.0]) < 0.01]
    if collapsed:
        text += (" Collapsed (every run below 0.01 mean Dice: the student learned to predict no correct "
                 "foreground): " + ", ".join(collapsed) + ".")
    if worse:
        text += " Significantly worse: " + ", ".join(worse) + "."
    if better:
        text += " Significantly better: " + ", ".join(better) + "."
    text += (" These are short CPU schedules on reduced data (see the cuts above); they do not reproduce the "
             "seed's setting and should not be read as the seed's result.")
    return text


def render_report(folder: str | Path, out: str | Path | None = None, note: str | None = None) -> tuple[Path, Path]:
    """Collect ``folder``'s finished runs into ``out`` (default ``folder``) and write the report there.

    When ``folder`` holds no run folders (e.g. a committed results folder), the report is re-rendered from
    ``folder/runs/*.json`` (figures that need the trained weights are kept as they are).

    Returns:
        The paths of ``report.md`` and ``report.html``.

    Args:
        folder: the experiment folder (or a results folder written by an earlier call).
        out: where to write the results and the report (default: ``folder``).
        note: an extra sentence for the report's preamble (e.g. how the machine was shared); kept in the
            results' ``index.json`` so a re-render repeats it.
    """
    import yaml

    folder = Path(folder)
    out = Path(out) if out is not None else folder
    index_path = folder / "index.json"
    if not index_path.is_file():
        raise MedkdError(f"{folder}: no index.json; run `medkd experiment run PRESET --out {folder}` first")
    index = json.loads(index_path.read_text())
    if note:
        index["note"] = note
    has_runs = any((folder / "runs" / r["name"] / "evaluation" / "summary.json").is_file() for r in index["runs"])
    records = collect_runs(folder, out) if has_runs else load_records(folder, index)
    if not records:
        raise MedkdError(f"{folder}: no finished run to report")
    preset_path = folder / "preset.yaml"
    preset = yaml.safe_load(preset_path.read_text()) if preset_path.is_file() else {}
    if out != folder:
        out.mkdir(parents=True, exist_ok=True)
        if preset_path.is_file():
            (out / "preset.yaml").write_text(preset_path.read_text())
    ctx = ReportContext(index, records)
    doc = Document(index["title"])
    budget = preset.get("budgets", {}).get(index["budget"], {})
    doc.paragraph(preset.get("description", "").strip())
    doc.paragraph(f"Budget '{index['budget']}': {index.get('budget_description', '').strip()} "
                  f"Hardware: {index.get('hardware', '?')}. Runs finished: {len(records)} of {len(index['runs'])}.")
    if index.get("note"):
        doc.paragraph(f"Note: {index['note']}")
    cuts = index.get("cuts") or budget.get("cuts") or []
    if cuts:
        doc.paragraph("Cut from the seed's protocol in this budget: " + "; ".join(cuts) + ".")
    not_done = [r["name"] for r in index["runs"] if r.get("status") != "done"]
    if not_done:
        doc.paragraph(f"Not finished ({len(not_done)}): " + ", ".join(not_done) + ".")
    doc.heading("Headline: baseline student vs the study's full objective vs the teacher", 2)
    for line in _headline_summary(ctx, preset) or ["(headline runs not finished)"]:
        doc.paragraph(line)
    stats: dict[str, Any] = {}
    LAYOUTS[index["study"]](doc, ctx, preset, stats)
    doc.heading("Closing note", 2)
    doc.paragraph(_closing_note(ctx, preset, stats))
    doc.heading("How to read the statistics", 3)
    doc.paragraph("Cells: mean ± std over seeds (k-fold: over folds x seeds) of each run's mean over its test "
                  "volumes; n = number of runs. Δ: row mean minus the same student's baseline mean. p: two-sided "
                  "paired Wilcoxon signed-rank test over test volumes against the baseline student; each volume's "
                  "foreground Dice is averaged over the seeds of each method first and volumes are pooled over "
                  "target sites / folds; no p-value below 6 paired volumes. The test is over volumes, not seeds: "
                  "it does not see the seed-to-seed spread, so a row run with one seed whose Δ is within the "
                  "baseline's ± over seeds may be seed noise even when p is small.")
    doc.heading("Figures", 2)
    curves = _curves(ctx, preset, out)
    if curves is not None:
        doc.image(str(curves.relative_to(out)), f"training curves ({ctx.cells[0]}, seed 0): teacher, baseline "
                                                f"student, full objective")
    qual = None
    if has_runs:
        try:
            qual = _qualitative(folder, ctx, out)
        except (MedkdError, OSError, KeyError, ValueError) as exc:  # a figure must not sink the report
            doc.paragraph(f"(qualitative panel not drawn: {exc})")
    elif (out / "figures" / "qualitative.png").is_file():
        qual = out / "figures" / "qualitative.png"
    if qual is not None:
        doc.image(str(Path(qual).relative_to(out)), "test cases (slice with most foreground): reference in red, "
                                                    "prediction in green (teacher, baseline student, full objective)")
    doc.paragraph(f"Rendered by `medkd report` on {platform.machine()}; per-run results: runs/<run name>.json; the "
                  "grid and each run's status: index.json; the preset: preset.yaml.")
    atomic_write_json(out / "statistics.json", stats)
    if out != folder:
        atomic_write_json(out / "index.json", index)
    return doc.write(out)
