"""``medkd report DIR``: an experiment's tables, statistics and figures as Markdown + HTML.

The tables follow the preset's ``study`` (:mod:`medkd.report.layouts`). Cells are mean ± std over the seeds (and
over the folds for k-fold protocols) of each run's mean over its test cases. "Δ" is the row's mean minus the
baseline student's (same student, same cells). The p-value is a paired, two-sided Wilcoxon signed-rank test
(:func:`medkd.evaluate.stats.paired_wilcoxon`) over test cases: each case's foreground Dice (mean over the classes /
regions, as the evaluation computes it) is first averaged over the seeds of each method, and cases are pooled over
target sites / folds (a case is keyed by cell and case id).

Example:
    >>> md, html = render_report("runs/paper_a", "results/paper_a")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import yaml

from medkd.errors import MedkdError
from medkd.experiment.collect import RunRecord, collect_runs, load_records
from medkd.io import atomic_write_json
from medkd.report.balance import balance_section
from medkd.report.context import (
    MIN_SEEDS,
    N_BOOT,
    RECIPE_OBJECTIVE,
    ReportContext,
    fmt,
    fmt_ci,
    fmt_p,
    fmt_seed_p,
    row_values,
)
from medkd.report.document import Document
from medkd.report.figures import plot_training_curves
from medkd.report.floors import learning_check, learning_lines
from medkd.report.layouts import LAYOUTS, comparison
from medkd.report.qualitative import draw_panel
from medkd.report.site_shift import site_shift_section
from medkd.run import RunFolder

__all__ = ["STATISTICS_NOTE", "render_report"]

STATISTICS_NOTE = (
    "Cells: mean ± std over seeds (k-fold: over folds x seeds) of each run's mean over its test "
    "volumes; n = number of runs. Δ: row mean minus the same student's baseline mean. Three tests against the "
    "baseline student, each named for its unit. 'p (volumes, Wilcoxon)': two-sided paired Wilcoxon signed-rank "
    "test over test volumes; each volume's foreground Dice is averaged over the seeds of each method first and "
    "volumes are pooled over target sites / folds; no p-value below 6 paired volumes. It does not see the "
    "seed-to-seed spread of training, so it overstates significance: a row run with one seed whose Δ is within "
    "the baseline's ± over seeds may be seed noise even when this p is small. 'p (seeds, paired t)': two-sided "
    "paired t-test whose unit is one training run (a seed; with several target sites or folds, a site or fold x "
    "seed), paired with the baseline run of the same cell and seed, on each run's mean test Dice; no p-value "
    f"below {MIN_SEEDS} paired runs ('n/a (k seeds)'). '95% CI (bootstrap seeds x volumes)': hierarchical "
    f"bootstrap ({N_BOOT} resamples, fixed generator seed) of the mean Dice difference, resampling the paired "
    "runs and then, within each, the paired test volumes; 'n/a' below 2 paired runs. statistics.json holds all "
    "three per row, with the spreads of the row and of its baseline over runs.")

def _verdict(test: dict[str, Any]) -> str:
    if test["p"] is not None and test["p"] < 0.05:
        return "distillation helped (p < 0.05)" if (test["delta"] or 0) > 0 else "distillation HURT (p < 0.05)"
    return "no significant difference"


def _seed_verdict(test: dict[str, Any]) -> str:
    if test["p"] is None:
        return "no seed-level test" + (f" ({test['n']} paired seeds)" if test["n"] < MIN_SEEDS else
                                       f" ({test['reason']})")
    word = "helped" if (test["delta"] or 0) > 0 else "HURT"
    return f"{word} (p < 0.05)" if test["p"] < 0.05 else "no significant difference"


def _headline_line(ctx: ReportContext, skey: str, okey: str, tkey: str | None, cmp: dict[str, Any]) -> str:
    """One sentence: the row against the student alone and its teacher, with all three tests."""
    spread, test, seeds = cmp["spread"], cmp["wilcoxon"], cmp["paired_t"]
    teacher = row_values(ctx.runs(f"teacher-{tkey}")) if tkey else []
    return (f"{ctx.label('students', skey)}: alone {spread['baseline']} (n={spread['baseline_n']}), "
            f"{ctx.label('objectives', okey)} {spread['row']} (n={spread['row_n']}), "
            f"teacher ({ctx.label('teachers', tkey)}) {fmt(teacher)} (n={len(teacher)}); Δ {cmp['delta']}; "
            f"over seeds: paired t p = {fmt_seed_p(seeds)}, bootstrap 95% CI (seeds x volumes) "
            f"{fmt_ci(cmp['bootstrap'])}: {_seed_verdict(seeds)}; over volumes: paired Wilcoxon over {test['n']} "
            f"seed-averaged test volumes p = {fmt_p(test)}: {_verdict(test)}.")


def _headline_summary(ctx: ReportContext, stats: dict[str, Any]) -> list[str]:
    """Per student: alone vs the headline objective and vs medkd's recipe (when run), each vs its teacher."""
    baseline = ctx.index["baseline"]
    wanted = [ctx.index["headline"], RECIPE_OBJECTIVE]
    lines = []
    for skey in ctx.students():
        base_runs = ctx.runs(f"student-{skey}/{baseline}")
        rows = [(row, o, t) for o in wanted for row, o2, t in ctx.student_rows(skey) if o2 == o]
        for row, okey, tkey in rows:
            if row not in stats:
                stats[row] = comparison(ctx.runs(row), base_runs)
            lines.append(_headline_line(ctx, skey, okey, tkey, stats[row]))
    return lines


def _seed_counts(rows: dict[str, Any]) -> str:
    """How the rows fared in the seed-level paired t-test (the unit that carries training noise)."""
    tested = {k: v["paired_t"] for k, v in rows.items() if v.get("paired_t", {}).get("p") is not None}
    better = sorted(k for k, t in tested.items() if t["p"] < 0.05 and t["delta"] > 0)
    worse = sorted(k for k, t in tested.items() if t["p"] < 0.05 and t["delta"] < 0)
    text = (f"Over seeds (paired t, p < 0.05; rows with at least {MIN_SEEDS} paired runs: {len(tested)} of "
            f"{len(rows)}): {len(better)} better, {len(worse)} worse")
    listed = [f"better: {', '.join(better)}" if better else "", f"worse: {', '.join(worse)}" if worse else ""]
    listed = [x for x in listed if x]
    return text + (f" ({'; '.join(listed)})." if listed else ".")


def _closing_note(ctx: ReportContext, stats: dict[str, Any]) -> str:
    """One paragraph from the numbers: how many distilled rows helped / hurt significantly, and the best one."""
    rows = {k: v for k, v in stats.items() if isinstance(v, dict) and "wilcoxon" in v}
    if not rows:
        return "No distilled row finished; nothing to conclude."
    missed = "floors" in stats and not stats["floors"]["met"]
    prefix = ("The floors were NOT MET (see 'Did the networks learn?'): what follows describes networks that had "
              "not learned and is no evidence about the methods. ") if missed else ""
    better = [k for k, v in rows.items() if (v["wilcoxon"]["p"] or 1) < 0.05 and (v["wilcoxon"]["delta"] or 0) > 0]
    worse = [k for k, v in rows.items() if (v["wilcoxon"]["p"] or 1) < 0.05 and (v["wilcoxon"]["delta"] or 0) < 0]
    deltas = {k: float(v["delta"]) for k, v in rows.items() if v["delta"] not in (None, "n/a")}
    best = max(deltas, key=deltas.get) if deltas else None
    text = prefix + (f"Of {len(rows)} rows compared with their baseline student ({ctx.index['budget']} budget, "
            f"{ctx.index.get('hardware', '?')}), {len(better)} were significantly better and {len(worse)} "
            f"significantly worse (paired Wilcoxon over volumes, p < 0.05); the rest showed no significant difference "
            f"or had too few paired test cases to test.")
    text += " " + _seed_counts(rows)
    if best is not None:
        text += f" Highest mean change: {best} ({deltas[best]:+.3f} Dice)."
    collapsed = [row for row in ctx.rows("student") if max(row_values(ctx.runs(row)) or [1.0]) < 0.01]
    if collapsed:
        text += (" Collapsed (every run below 0.01 mean Dice: the student learned to predict no correct "
                 "foreground): " + ", ".join(collapsed) + ".")
    if worse:
        text += " Significantly worse: " + ", ".join(worse) + "."
    if better:
        text += " Significantly better: " + ", ".join(better) + "."
    if ctx.index["budget"] == "quick":
        text += (" These are short CPU schedules on reduced data (see the cuts above); they do not reproduce the "
                 "seed's setting and should not be read as the seed's result.")
    elif ctx.index["budget"] != "full":
        text += (f" The '{ctx.index['budget']}' budget cuts the seed's protocol (see the cuts above); it does not "
                 "reproduce the seed's setting and should not be read as the seed's result.")
    return text


def _curves(ctx: ReportContext, out: Path) -> Path | None:
    """Training curves of the first cell's seed-0 teacher, baseline and headline runs."""
    cell = ctx.cells[0]
    baseline, headline = ctx.index["baseline"], ctx.index["headline"]
    hist = {rec.row: rec.epochs for rec in ctx.records if rec.cell == cell and rec.seed == 0 and rec.epochs
            and (rec.kind == "teacher" or rec.objective in (baseline, headline))}
    if not hist:
        return None
    return plot_training_curves(hist, out / "figures" / "training_curves.png")


def _read_experiment(folder: Path, out: Path, note: str | None) -> tuple[dict[str, Any], list[RunRecord], bool]:
    """The index (with ``note``), the finished runs' records (collected into ``out``) and whether run folders
    exist (False for a results folder re-rendered from its ``runs/*.json``)."""
    index_path = folder / "index.json"
    if not index_path.is_file():
        raise MedkdError(f"{folder}: no index.json; run `medkd experiment run PRESET --out {folder}` first")
    try:
        index = json.loads(index_path.read_text())
    except json.JSONDecodeError:
        raise MedkdError(f"{index_path}: not valid JSON") from None
    if note:
        index["note"] = note
    has_runs = any(RunFolder(folder / "runs" / r["name"]).is_run() for r in index["runs"])
    records = collect_runs(folder, out) if has_runs else load_records(folder, index)
    if not records:
        raise MedkdError(f"{folder}: no finished run to report")
    return index, records, has_runs


def _read_preset(folder: Path, out: Path) -> dict[str, Any]:
    """``folder/preset.yaml`` as a dict (empty when absent), copied to ``out``."""
    preset_path = folder / "preset.yaml"
    if not preset_path.is_file():
        return {}
    if out != folder:
        out.mkdir(parents=True, exist_ok=True)
        (out / "preset.yaml").write_text(preset_path.read_text())
    return yaml.safe_load(preset_path.read_text()) or {}


def _preamble(doc: Document, ctx: ReportContext) -> None:
    index, preset = ctx.index, ctx.preset
    budget = preset.get("budgets", {}).get(index["budget"], {})
    doc.paragraph(preset.get("description", "").strip())
    doc.paragraph(f"Budget '{index['budget']}': {index.get('budget_description', '').strip()} "
                  f"Hardware: {index.get('hardware', '?')}. Runs finished: {len(ctx.records)} of "
                  f"{len(index['runs'])}.")
    if index.get("note"):
        doc.paragraph(f"Note: {index['note']}")
    cuts = index.get("cuts") or budget.get("cuts") or []
    if cuts:
        doc.paragraph("Cut from the seed's protocol in this budget: " + "; ".join(cuts) + ".")
    not_done = [r["name"] for r in index["runs"] if r.get("status") != "done"]
    if not_done:
        doc.paragraph(f"Not finished ({len(not_done)}): " + ", ".join(not_done) + ".")


def _figures(doc: Document, ctx: ReportContext, folder: Path, out: Path, has_runs: bool) -> None:
    doc.heading("Figures", 2)
    curves = _curves(ctx, out)
    if curves is not None:
        doc.image(str(curves.relative_to(out)), f"training curves ({ctx.cells[0]}, seed 0): teacher, baseline "
                                                f"student, full objective")
    qual = None
    if has_runs:
        try:
            qual = draw_panel(folder, ctx, out / "figures" / "qualitative.png")
        except (MedkdError, OSError, KeyError, ValueError) as exc:  # a figure must not sink the report
            doc.paragraph(f"(qualitative panel not drawn: {exc})")
    elif (out / "figures" / "qualitative.png").is_file():
        qual = out / "figures" / "qualitative.png"
    if qual is not None:
        doc.image(str(Path(qual).relative_to(out)), "test cases (slice with most foreground): reference in red, "
                                                    "prediction in green (teacher, baseline student, full objective)")


def render_report(folder: str | Path, out: str | Path | None = None, note: str | None = None) -> tuple[Path, Path]:
    """Collect ``folder``'s finished runs into ``out`` (default ``folder``) and write the report there.

    When ``folder`` holds no run folders (e.g. a committed results folder), the report is re-rendered from
    ``folder/runs/*.json`` (figures that need the run folders are kept as they are).

    Args:
        folder: the experiment folder (or a results folder written by an earlier call).
        out: where to write the results and the report (default: ``folder``).
        note: an extra sentence for the report's preamble (e.g. how the machine was shared); kept in the
            results' ``index.json`` so a re-render repeats it.

    Returns:
        The paths of ``report.md`` and ``report.html``.
    """
    folder = Path(folder)
    out = Path(out) if out is not None else folder
    index, records, has_runs = _read_experiment(folder, out, note)
    ctx = ReportContext(index, records, _read_preset(folder, out))
    doc = Document(index["title"])
    _preamble(doc, ctx)
    stats: dict[str, Any] = {}
    floors = learning_check(ctx)
    if floors is not None:
        stats["floors"] = floors
        doc.heading("Did the networks learn?", 2)
        for line in learning_lines(floors):
            doc.paragraph(line)
    doc.heading("Headline: baseline student vs the study's full objective (and medkd's recipe) vs the teacher", 2)
    for line in _headline_summary(ctx, stats) or ["(headline runs not finished)"]:
        doc.paragraph(line)
    LAYOUTS[index.get("study") or "generic"](doc, ctx, stats)
    site_shift_section(doc, ctx, stats)
    balance_section(doc, ctx, stats)
    doc.heading("Closing note", 2)
    doc.paragraph(_closing_note(ctx, stats))
    doc.heading("How to read the statistics", 3)
    doc.paragraph(STATISTICS_NOTE)
    _figures(doc, ctx, folder, out, has_runs)
    doc.paragraph(f"Rendered by `medkd report` on {platform.machine()}; per-run results: runs/<run name>.json; the "
                  "grid and each run's status: index.json; the preset: preset.yaml.")
    atomic_write_json(out / "statistics.json", stats)
    if out != folder:
        atomic_write_json(out / "index.json", index)
    return doc.write(out)
