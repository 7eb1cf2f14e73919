"""Compare finished runs (e.g. teacher / student alone / distilled student) in one report.

Cells are mean ± std over test cases (whole volumes); the change against a baseline run comes with a
paired Wilcoxon test over the cases both runs scored. The verdict sentence is computed from those
numbers, so the report says plainly when distillation did not help.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medkd.evaluate.stats import format_mean_std, paired_wilcoxon
from medkd.report.document import Document
from medkd.report.figures import plot_training_curves
from medkd.report.scores import case_foreground_means
from medkd.run import RunFolder

__all__ = ["RunResult", "comparison_document", "load_run_result"]


@dataclass
class RunResult:
    """What a report needs from a finished run folder."""

    label: str
    path: Path
    model: str
    params: int
    summary: dict[str, Any]
    per_case: list[dict[str, Any]]
    epochs: list[dict[str, Any]]
    train_seconds: float | None


def load_run_result(label: str, run_dir: Path) -> RunResult:
    """Read a run's evaluation, history and size through its :class:`~medkd.run.RunFolder`."""
    run = RunFolder(run_dir)
    model, cfg = run.load_model()
    params = sum(p.numel() for p in model.parameters())
    seconds = run.summary().get("train_seconds") if run.has_summary() else None
    return RunResult(label, run.path, cfg.model.name, params, run.evaluation(), run.per_case(),
                     run.epoch_metrics(), seconds)


def _fmt_p(p: float | None) -> str:
    return "n/a" if p is None else ("<0.001" if p < 1e-3 else f"{p:.3f}")


def comparison_document(title: str, runs: Mapping[str, Path], baseline: str | None, context: str,
                        figures_dir: Path, compare_pairs: list[tuple[str, str]] | None = None) -> Document:
    """Build the comparison report of several runs and write its figures into ``figures_dir``.

    Args:
        title: report title.
        runs: label -> run folder (each evaluated).
        baseline: label of the run the others are compared with (paired Wilcoxon), or None.
        context: the line under the table (data, budget, hardware, seeds).
        figures_dir: where PNG figures go (paths in the document are relative to its parent).
        compare_pairs: (label, reference label) pairs to state a verdict for.
    """
    results = {label: load_run_result(label, path) for label, path in runs.items()}
    first = next(iter(results.values()))
    classes = first.summary["foreground_classes"]
    fg = {label: case_foreground_means(r.per_case, "dice", classes) for label, r in results.items()}
    doc = Document(title)
    doc.heading("Results on held-out cases")
    headers = ["run", "network", "params", "train s", "Dice (fg mean)", *[f"Dice {c}" for c in classes],
               "HD95 mm", "Δ Dice vs " + (baseline or "-"), "Wilcoxon p"]
    rows = []
    for label, r in results.items():
        per_class = [r.summary["classes"][c]["dice"] for c in classes]
        row = [label, r.model, f"{r.params:,}", "n/a" if r.train_seconds is None else f"{r.train_seconds:.0f}",
               format_mean_std(list(fg[label].values()), 3),
               *[_fmt_ms(b) for b in per_class], _fmt_ms(r.summary["foreground_mean"]["hd95"], 2)]
        if baseline and label != baseline:
            test = paired_wilcoxon(fg[label], fg[baseline])
            row += [f"{test['delta']:+.3f}" if test["delta"] is not None else "n/a", _fmt_p(test["p"])]
        else:
            row += ["-", "-"]
        rows.append(row)
    doc.table(headers, rows, caption=context)
    sites = first.summary.get("groups")
    if sites:
        doc.heading("Per site (mean foreground Dice)", 3)
        site_names = list(sites)
        site_rows = []
        for label, r in results.items():
            groups = r.summary.get("groups", {})
            site_rows.append([label, *[_fmt_ms(groups[s]["foreground_mean"]["dice"]) if s in groups else "n/a"
                                       for s in site_names]])
        doc.table(["run", *site_names], site_rows)
    doc.heading("Verdict", 3)
    for label, ref in compare_pairs or []:
        if label in fg and ref in fg:
            doc.paragraph(_verdict(label, ref, fg[label], fg[ref]))
    figures_dir.mkdir(parents=True, exist_ok=True)
    curves = plot_training_curves({lab: r.epochs for lab, r in results.items()}, figures_dir / "training_curves.png")
    doc.heading("Training curves", 3)
    doc.image(str(curves.relative_to(figures_dir.parent)), "training loss and validation Dice per epoch")
    return doc


def _fmt_ms(block: dict[str, Any], digits: int = 3) -> str:
    if block.get("mean") is None:
        return "n/a"
    return f"{block['mean']:.{digits}f} ± {block['std']:.{digits}f}"


def _verdict(label: str, ref: str, a: dict[str, float], b: dict[str, float]) -> str:
    test = paired_wilcoxon(a, b)
    if test["delta"] is None:
        return f"{label} vs {ref}: no cases in common."
    delta = test["delta"]
    p = test["p"]
    significant = p is not None and p < 0.05
    if delta > 0 and significant:
        word = "improved on"
    elif delta < 0 and significant:
        word = "was worse than"
    else:
        word = "did not differ significantly from"
    p_txt = ("p < 0.001" if p < 1e-3 else f"p = {p:.3f}") if p is not None else f"no p-value ({test['reason']})"
    return (f"{label} {word} {ref}: mean foreground Dice change {delta:+.3f} over {test['n']} paired test cases "
            f"(Wilcoxon signed-rank, {p_txt}).")
