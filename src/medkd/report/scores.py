"""Per-case scores for reports, computed the way the evaluation computes them.

A case's foreground score is the evaluation's own ``foreground_mean`` of that one case
(:func:`medkd.evaluate.metrics.summarize` on the case's record): the mean of the defined values of its foreground
classes (or regions), ``None`` when none is defined (e.g. every class empty in both masks). Reports never
re-implement that rule.

Example:
    >>> recs = [{"case": "a", "metrics": {"RV": {"dice": 0.5}, "LV": {"dice": 1.0}}}]
    >>> case_foreground_means(recs)
    {'a': 0.75}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from medkd.evaluate.metrics import summarize

__all__ = ["case_foreground_mean", "case_foreground_means"]


def case_foreground_mean(record: Mapping[str, Any], metric: str = "dice",
                         classes: Iterable[str] | None = None) -> float | None:
    """The evaluation's foreground mean of ``metric`` for one per-case record (``None`` when undefined).

    Args:
        record: one entry of ``evaluation/per_case.json`` (``{"case", "metrics": {class: {metric: value}}}``).
        metric: ``dice``, ``iou``, ``precision``, ``recall`` or ``hd95``.
        classes: restrict to these classes / regions (default: every foreground class of the record).
    """
    metrics = record["metrics"]
    if classes is not None:
        metrics = {c: metrics[c] for c in classes if c in metrics}
    one = summarize([{"case": str(record["case"]), "metrics": metrics}])
    block = one["foreground_mean"].get(metric)
    return None if block is None else block["mean"]


def case_foreground_means(per_case: Sequence[Mapping[str, Any]], metric: str = "dice",
                          classes: Iterable[str] | None = None) -> dict[str, float]:
    """Per case id: :func:`case_foreground_mean`; cases without a defined value are left out."""
    keep = None if classes is None else list(classes)
    out: dict[str, float] = {}
    for record in per_case:
        value = case_foreground_mean(record, metric, keep)
        if value is not None:
            out[str(record["case"])] = value
    return out
