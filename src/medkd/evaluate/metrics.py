"""Per-case segmentation metrics, their summary over cases (and sites), and the per-case CSV.

Metrics are computed on a whole case (a full 2D image or 3D volume, never slice by slice) for each named class
(one label value) or region (a set of label values, e.g. the BraTS whole tumour {1, 2, 3, 4}).

Conventions, for a binary mask pair with ``tp``, ``fp``, ``fn`` voxel counts:

- ``dice = 2 tp / (2 tp + fp + fn)``, ``iou = tp / (tp + fp + fn)``, ``precision = tp / (tp + fp)``,
  ``recall = tp / (tp + fn)``; ``hd95`` is the 95th-percentile Hausdorff distance between the mask surfaces, in
  millimetres when ``spacing`` is given and in voxels otherwise. Two definitions are in use (see :data:`HD95`):
  ``"monai"`` (the default) is the larger of the two *directed* 95th percentiles (pred -> ref and ref -> pred),
  as ``monai.metrics.compute_hausdorff_distance(percentile=95)``; ``"pooled"`` is the 95th percentile of both
  directions' surface distances taken together, as medpy's ``hd95``. Both use MONAI's surfaces (a mask minus its
  erosion) and Euclidean distances; pooled is never larger than monai, and differs when one direction has a few
  far-away surface points (an outlying blob).
- ``status`` says which masks are empty:

  ============== ===================== ======= ======= =========== ======== =======
  status         when                  dice    iou     precision   recall   hd95
  ============== ===================== ======= ======= =========== ======== =======
  ``ok``         both non-empty        value   value   value       value    value
  ``ref_empty``  only false positives  0       0       0           None     None
  ``pred_empty`` only false negatives  0       0       None        0        None
  ``both_empty`` nothing to find       None    None    None        None     None
  ============== ===================== ======= ======= =========== ======== =======

  A correctly empty prediction is neither a perfect (1) nor a failed (0) case: its metrics are undefined,
  left out of every mean and counted separately (``n_both_empty``). ``None`` marks any undefined value; no NaN
  is ever returned. Note that HD95 means are over the cases where both masks are non-empty only.

Example:
    >>> pred = np.array([[0, 1, 1, 0]]); ref = np.array([[0, 1, 1, 1]])
    >>> round(case_metrics(pred, ref, {"fg": 1})["fg"]["dice"], 3)
    0.8
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance
from monai.metrics.utils import get_edge_surface_distance

from medkd.errors import ConfigError, DataError
from medkd.evaluate.stats import finite_values, mean_std
from medkd.io import atomic_write_text

__all__ = [
    "BRATS_REGIONS",
    "HD95",
    "METRICS",
    "STATUSES",
    "binary_metrics",
    "case_metrics",
    "region_masks",
    "summarize",
    "per_case_csv_text",
    "write_per_case_csv",
]

#: BraTS evaluation regions: whole tumour, tumour core, enhancing tumour (label 4 = enhancing).
BRATS_REGIONS: dict[str, list[int]] = {"WT": [1, 2, 3, 4], "TC": [1, 3, 4], "ET": [4]}

#: The overlap and distance metrics reported per class, in report order.
METRICS: tuple[str, ...] = ("dice", "iou", "precision", "recall", "hd95")

#: The HD95 definitions (``evaluate.hd95``) and how ``summary.json`` states them (``hd95_definition``).
HD95: dict[str, str] = {
    "monai": "max of directed 95th percentiles (MONAI)",
    "pooled": "95th percentile of both directions' surface distances pooled (medpy)",
}

#: The possible values of a class record's ``status``.
STATUSES: tuple[str, ...] = ("ok", "ref_empty", "pred_empty", "both_empty")

CSV_COLUMNS: tuple[str, ...] = ("case", "site", "class", *METRICS, "status", "ref_voxels", "pred_voxels")


def _label_values(name: str, value: Any) -> list[int]:
    """Normalise one class / region definition to a non-empty list of ints."""
    items = [value] if isinstance(value, (int, np.integer)) and not isinstance(value, bool) else value
    if not isinstance(items, (list, tuple)) or not items:
        raise ConfigError(
            f"labels[{name!r}]: expected a label value or a non-empty list of them, got {value!r}"
        )
    out = []
    for v in items:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ConfigError(f"labels[{name!r}]: label values must be integers, got {v!r}")
        out.append(int(v))
    return out


def _normalise_labels(labels: Mapping[str, Any]) -> dict[str, list[int]]:
    if not isinstance(labels, Mapping) or not labels:
        raise ConfigError(
            f"labels: expected a non-empty mapping of class name to label value(s), got {labels!r}"
        )
    return {str(name): _label_values(str(name), value) for name, value in labels.items()}


def _normalise_spacing(spacing: Any, ndim: int) -> list[float] | None:
    if spacing is None:
        return None
    vals = [spacing] * ndim if isinstance(spacing, (int, float, np.number)) else list(np.ravel(spacing))
    if len(vals) != ndim:
        raise DataError(f"spacing {list(vals)} has {len(vals)} values but the image has {ndim} spatial dims")
    out = [float(v) for v in vals]
    if not all(math.isfinite(v) and v > 0 for v in out):
        raise DataError(f"spacing {out} must be positive and finite")
    return out


def region_masks(label: np.ndarray, regions: Mapping[str, Sequence[int]]) -> dict[str, np.ndarray]:
    """Boolean masks of label regions, e.g. :data:`BRATS_REGIONS`.

    Args:
        label: integer label map of any shape.
        regions: region name -> label values it unites (a single int is one value).

    Returns:
        Region name -> boolean array of ``label``'s shape, true where the label is one of the region's values.
    """
    label = np.asarray(label)
    return {name: np.isin(label, values) for name, values in _normalise_labels(regions).items()}


def _check_hd95(definition: str) -> str:
    if definition not in HD95:
        raise ConfigError(f"evaluate.hd95: unknown definition {definition!r}; valid: {', '.join(HD95)}")
    return definition


def _hd95(pred: np.ndarray, ref: np.ndarray, spacing: list[float] | None, definition: str = "monai") -> float | None:
    """95th-percentile Hausdorff distance of two non-empty boolean masks (``definition``: a key of :data:`HD95`)."""
    y_pred = torch.from_numpy(np.ascontiguousarray(pred)[None, None])
    y = torch.from_numpy(np.ascontiguousarray(ref)[None, None])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if definition == "monai":
            hd = compute_hausdorff_distance(y_pred, y, include_background=True, percentile=95, spacing=spacing)
        else:  # pooled: one percentile over the union of both directed surface distances
            _, distances, _ = get_edge_surface_distance(y_pred[0, 0].float(), y[0, 0].float(), spacing=spacing,
                                                        symmetric=True)
            both = torch.cat([d.reshape(-1).float() for d in distances])
            hd = torch.quantile(both, 0.95) if both.numel() else torch.tensor(float("nan"))
    # MONAI computes in float32: keep the shortest decimal that is that float32 (0.9, not 0.8999999761...).
    value = float(str(np.float32(hd.reshape(-1)[0].item())))
    return value if math.isfinite(value) else None


def binary_metrics(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] | float | None = None, hd95: str = "monai"
) -> dict[str, Any]:
    """Metrics of one binary prediction mask against its reference mask (see the module conventions).

    Args:
        pred: boolean (or 0/1) prediction mask, 2D or 3D.
        ref: reference mask of the same shape.
        spacing: voxel size per spatial axis (mm), or one number for isotropic voxels; ``None`` means 1.
        hd95: ``"monai"`` (max of the directed 95th percentiles) or ``"pooled"`` (medpy's); see :data:`HD95`.

    Returns:
        ``{"dice", "iou", "precision", "recall", "hd95", "ref_voxels", "pred_voxels", "status"}``.
    """
    _check_hd95(hd95)
    pred = np.asarray(pred).astype(bool, copy=False)
    ref = np.asarray(ref).astype(bool, copy=False)
    if pred.shape != ref.shape:
        raise DataError(f"prediction shape {pred.shape} does not match reference shape {ref.shape}")
    if pred.ndim not in (2, 3):
        raise DataError(f"masks must be 2D or 3D (one whole case), got shape {pred.shape}")
    spacing_list = _normalise_spacing(spacing, pred.ndim)
    n_pred = int(np.count_nonzero(pred))
    n_ref = int(np.count_nonzero(ref))
    out: dict[str, Any] = dict.fromkeys(METRICS)
    out.update(ref_voxels=n_ref, pred_voxels=n_pred)
    if n_pred == 0 and n_ref == 0:
        out["status"] = "both_empty"
        return out
    tp = int(np.count_nonzero(pred & ref))
    fp, fn = n_pred - tp, n_ref - tp
    out["dice"] = 2.0 * tp / (2 * tp + fp + fn)
    out["iou"] = tp / (tp + fp + fn)
    out["precision"] = tp / n_pred if n_pred else None
    out["recall"] = tp / n_ref if n_ref else None
    if n_ref == 0:
        out["status"] = "ref_empty"
    elif n_pred == 0:
        out["status"] = "pred_empty"
    else:
        out["status"] = "ok"
        out["hd95"] = _hd95(pred, ref, spacing_list, hd95)
    return out


def case_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    labels: Mapping[str, int] | Mapping[str, Sequence[int]],
    spacing: Sequence[float] | float | None = None,
    hd95: str = "monai",
) -> dict[str, dict[str, Any]]:
    """Metrics of a whole case for each named class or region.

    Args:
        pred: predicted label map of one case, shape (H, W) or (D, H, W) (no channel axis).
        ref: reference label map of the same shape.
        labels: class name -> label value, or region name -> list of label values
            (e.g. ``{"LV": 3}`` or :data:`BRATS_REGIONS`). Include ``"background": 0`` only if it is wanted.
        spacing: voxel size per spatial axis in mm (same axis order as the arrays), or one number for
            isotropic voxels; ``None`` reports HD95 in voxels.
        hd95: the HD95 definition, ``"monai"`` or ``"pooled"`` (see :data:`HD95`).

    Returns:
        Class name -> ``{"dice", "iou", "precision", "recall", "hd95", "ref_voxels", "pred_voxels", "status"}``;
        undefined values are ``None`` (see the module docstring for the empty-mask conventions).

    Example:
        >>> m = case_metrics(pred, ref, BRATS_REGIONS, spacing=(1.0, 1.0, 1.0))
        >>> m["ET"]["dice"], m["ET"]["status"]
    """
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    if pred.shape != ref.shape:
        raise DataError(f"prediction shape {pred.shape} does not match reference shape {ref.shape}")
    regions = _normalise_labels(labels)
    _check_hd95(hd95)
    return {
        name: binary_metrics(np.isin(pred, vals), np.isin(ref, vals), spacing, hd95)
        for name, vals in regions.items()
    }


def _describe(values: list[Any], statuses: list[str]) -> dict[str, Any]:
    """mean / std / median / min / max / n of the defined values, plus counts of undefined ones."""
    vals = finite_values(values)
    mean, std = mean_std(vals)
    n_both = sum(s == "both_empty" for s in statuses)
    return {
        "mean": mean,
        "std": std,
        "median": float(np.median(vals)) if vals else None,
        "min": min(vals) if vals else None,
        "max": max(vals) if vals else None,
        "n": len(vals),
        "n_both_empty": n_both,
        "n_undefined": len(values) - len(vals) - n_both,
    }


def _summarize_block(records: list[dict[str, Any]], background: Sequence[str]) -> dict[str, Any]:
    classes: list[str] = []
    for rec in records:
        classes.extend(c for c in rec["metrics"] if c not in classes)
    per_class: dict[str, Any] = {}
    for cls in classes:
        entries = [rec["metrics"][cls] for rec in records if cls in rec["metrics"]]
        statuses = [e.get("status", "ok") for e in entries]
        block = {m: _describe([e.get(m) for e in entries], statuses) for m in METRICS}
        block["status_counts"] = {s: statuses.count(s) for s in STATUSES}
        per_class[cls] = block
    foreground = [c for c in classes if c not in background]
    fg: dict[str, Any] = {}
    for m in METRICS:
        case_means: list[float | None] = []
        fg_statuses: list[str] = []
        for rec in records:
            entries = [rec["metrics"][c] for c in foreground if c in rec["metrics"]]
            vals = finite_values(e.get(m) for e in entries)
            case_means.append(float(np.mean(vals)) if vals else None)
            all_empty = bool(entries) and all(e.get("status") == "both_empty" for e in entries)
            fg_statuses.append("both_empty" if all_empty else "ok")
        fg[m] = _describe(case_means, fg_statuses)
    return {
        "n_cases": len(records),
        "classes": per_class,
        "foreground_classes": foreground,
        "foreground_mean": fg,
    }


def _check_records(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    seen: set[str] = set()
    out = []
    for i, rec in enumerate(records):
        if not isinstance(rec, Mapping) or "case" not in rec or not isinstance(rec.get("metrics"), Mapping):
            raise DataError(f"record {i}: expected a mapping with 'case' and 'metrics' keys")
        case = str(rec["case"])
        if case in seen:
            raise DataError(f"record {i}: case {case!r} appears more than once")
        seen.add(case)
        out.append(dict(rec))
    return out


def summarize(
    records: Sequence[Mapping[str, Any]],
    group_key: str | None = None,
    background: Sequence[str] = ("background", "bg"),
) -> dict[str, Any]:
    """Summarise per-case metrics over cases, per class and over foreground classes, optionally per group.

    For each class and metric: ``mean``, ``std`` (``ddof=1``; ``0.0`` for a single case), ``median``, ``min``,
    ``max`` and ``n`` over the cases where the value is defined, ``n_both_empty`` (cases where prediction and
    reference are both empty, left out) and ``n_undefined`` (other cases without a value, e.g. HD95 when one mask
    is empty). ``foreground_mean`` first averages, per case, the defined values of the foreground classes
    (every class not named in ``background``), then summarises those case means the same way.

    Args:
        records: one per case, ``{"case": id, "site": ..., "metrics": case_metrics(...)}``.
        group_key: a record key to also summarise by (e.g. ``"site"``); each record must have a value for it.
        background: class names left out of ``foreground_mean``.

    Returns:
        ``{"n_cases", "classes": {class: {metric: {...}, "status_counts"}}, "foreground_classes",
        "foreground_mean": {metric: {...}}}``, plus ``"group_key"`` and ``"groups": {group: <same>}`` when
        ``group_key`` is given. Plain JSON types; ``None`` where undefined.
    """
    recs = _check_records(records)
    summary = _summarize_block(recs, background)
    if group_key is not None:
        groups: dict[str, list[dict[str, Any]]] = {}
        for rec in recs:
            value = rec.get(group_key)
            if value is None:
                raise DataError(f"case {rec['case']!r} has no {group_key!r} value to group by")
            groups.setdefault(str(value), []).append(rec)
        summary["group_key"] = group_key
        summary["groups"] = {g: _summarize_block(groups[g], background) for g in sorted(groups)}
    return summary


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    return str(value)


def per_case_csv_text(records: Sequence[Mapping[str, Any]]) -> str:
    """The per-case CSV: one row per case and class.

    Columns: ``case, site, class, dice, iou, precision, recall, hd95, status, ref_voxels, pred_voxels``;
    undefined values are empty cells.

    Args:
        records: one per case, ``{"case": id, "site": ..., "metrics": case_metrics(...)}``.
    """
    recs = _check_records(records)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for rec in recs:
        for cls, m in rec["metrics"].items():
            row = [rec["case"], rec.get("site"), cls, *(m.get(k) for k in METRICS), m.get("status")]
            row += [m.get("ref_voxels"), m.get("pred_voxels")]
            writer.writerow([_csv_cell(v) for v in row])
    return buf.getvalue()


def write_per_case_csv(records: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write :func:`per_case_csv_text` of ``records`` to ``path`` atomically (its folder is created if needed);
    returns the path."""
    path = Path(path)
    atomic_write_text(path, per_case_csv_text(records))
    return path
