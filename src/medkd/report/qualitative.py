"""The qualitative panel of a study report: a few test cases, reference and each chosen run's prediction.

Rows are the panel cases of the first student's test split (:func:`medkd.evaluate.saved_predictions.panel_cases`),
each shown on its slice with the most reference foreground; columns are the reference (red) and the predictions
(green) of the first cell's seed-0 teacher(s), baseline student and headline student. Predictions are read from
what the evaluation saved (:mod:`medkd.evaluate.saved_predictions`); a run that saved none is run again on those
cases.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medkd.data.loader import open_dataset
from medkd.data.pipeline import load_case, prepare_cases
from medkd.errors import MedkdError
from medkd.evaluate.saved_predictions import PANEL_ROWS, load_panel_predictions, panel_cases
from medkd.experiment.collect import RunRecord
from medkd.inference import predict_volume, predicted_classes
from medkd.report import figures
from medkd.report.context import ReportContext
from medkd.run import RunFolder

__all__ = ["draw_panel", "panel_runs"]


def panel_runs(ctx: ReportContext) -> list[RunRecord]:
    """First cell, seed 0: the teachers, then the first student's baseline and headline runs (grid order)."""
    cell = ctx.cells[0]
    baseline, headline = ctx.index["baseline"], ctx.index["headline"]
    chosen = [r for r in ctx.records if r.cell == cell and r.seed == 0 and
              (r.kind == "teacher" or r.objective in (baseline, headline))]
    first_student = next((r.model_key for r in chosen if r.kind == "student"), None)
    return [r for r in chosen if r.kind == "teacher" or r.model_key == first_student]


def _slice_of(labels: np.ndarray) -> int | None:
    """The last-axis slice with the most foreground of a 3D map (None for 2D)."""
    if labels.ndim != 3:
        return None
    return int(np.argmax((labels > 0).reshape(-1, labels.shape[-1]).sum(0)))


def _cut(arr: np.ndarray, z: int | None) -> np.ndarray:
    return arr[..., z] if z is not None else arr


def _prepared(run: RunFolder, cases: Sequence[str]) -> tuple[Any, list[Any]]:
    """The run's config and its prepared panel cases (image, reference, restore) as evaluation prepares them."""
    cfg, info = run.config(), run.split()
    index = open_dataset(cfg.data, root=info["dataset"])
    channels = index.channel_indices(info["channels"])
    return cfg, [(index, channels, prepare_cases(index, [cid], channels, cfg.data)[0]) for cid in cases]


def _shown_image(index: Any, channels: list[int], pc: Any) -> np.ndarray:
    """The first channel the network saw, or the file's image when the grid changed (crop / resize)."""
    if pc.grid is None:
        return np.asarray(pc.image[0], dtype=np.float32)
    case = next(c for c in index.cases if c.case_id == pc.case_id)
    return np.asarray(load_case(case, channels, index=index)[0][0], dtype=np.float32)


def _reference_rows(run: RunFolder, cases: Sequence[str]) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """Per panel case: the image slice (the slice with most reference foreground), the whole reference map and the
    row label."""
    images, refs, labels = [], [], []
    for index, channels, pc in _prepared(run, cases)[1]:
        images.append(_cut(_shown_image(index, channels, pc), _slice_of(pc.reference)))
        refs.append(pc.reference)
        labels.append(f"{pc.case_id}" + (f" ({pc.site})" if pc.site else ""))
    return images, refs, labels


def _predict(run: RunFolder, cases: Sequence[str]) -> list[np.ndarray]:
    """Run the model on the panel cases as the evaluation does (class-index maps on the original grid)."""
    model, _ = run.load_model()
    cfg, prepared = _prepared(run, cases)
    out = []
    for _index, _channels, pc in prepared:
        with torch.no_grad():
            probs = pc.restore(predict_volume(model, pc.image, cfg.data.dim, cfg.data.size, cfg.data.volume_size,
                                              cfg.evaluate.batch_size, cfg.evaluate.sw_overlap))
        out.append(predicted_classes(probs))
    return out


def _run_slices(run: RunFolder, cases: Sequence[str], refs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The run's predictions of the panel cases (saved, else predicted now), cut at the references' slices."""
    maps = load_panel_predictions(run.evaluation_dir(), cases)
    if maps is None:
        maps = _predict(run, cases)
    out = []
    for lab, ref in zip(maps, refs):
        if lab.shape != ref.shape:
            raise MedkdError(f"{run.path}: prediction grid {lab.shape} differs from the reference's")
        out.append(_cut(lab, _slice_of(ref)))
    return out


def draw_panel(folder: str | Path, ctx: ReportContext, path: Path, n_rows: int = PANEL_ROWS) -> Path | None:
    """Draw the panel of ``folder``'s runs into ``path`` (None when no student run has a split)."""
    chosen = panel_runs(ctx)
    students = [r for r in chosen if r.kind == "student"]
    if not students:
        return None
    ref_run = RunFolder(Path(folder) / "runs" / students[0].name)
    try:
        test = ref_run.split()["test"]
    except (MedkdError, OSError):
        return None
    cases = panel_cases(test, n_rows)
    images, refs, labels = _reference_rows(ref_run, cases)
    preds = {}
    for rec in chosen:
        label = rec.row.split("/", 1)[-1] if rec.kind == "student" else rec.row
        preds[label] = _run_slices(RunFolder(Path(folder) / "runs" / rec.name), cases, refs)
    return figures.plot_qualitative(images, [_cut(r, _slice_of(r)) for r in refs], preds, path, labels)
