"""Predicted label maps of the report's panel cases, saved by the evaluation and read by the report.

The qualitative panel of a report shows a few test cases of a run (:func:`panel_cases`: every k-th case of the
split, ``n_rows`` of them). The evaluation saves, for those cases only, the predicted class-index map (``0`` =
background, ``i`` = the i-th label value; on the case's original grid) as ``<evaluation dir>/panel/<case>.npz``,
so the panel reads predictions instead of running every model again.

Example:
    >>> cases = ["c0", "c1", "c2", "c3", "c4", "c5"]
    >>> panel_cases(cases)
    ['c0', 'c2', 'c4']
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medkd.errors import DataError
from medkd.io import atomic_write_bytes

__all__ = ["PANEL_FOLDER", "PANEL_ROWS", "load_panel_predictions", "panel_cases", "prediction_path",
           "save_panel_prediction"]

#: Sub-folder of an evaluation folder that holds the panel cases' predictions.
PANEL_FOLDER = "panel"

#: How many cases the panel shows by default.
PANEL_ROWS = 3


def panel_cases(case_ids: Sequence[str], n_rows: int = PANEL_ROWS) -> list[str]:
    """The cases a panel of ``n_rows`` rows shows: every ``len // n_rows``-th case of ``case_ids``, in order."""
    ids = list(case_ids)
    return ids[:: max(1, len(ids) // n_rows)][:n_rows]


def prediction_path(eval_dir: str | Path, case_id: str) -> Path:
    """Where the predicted map of ``case_id`` is saved under the evaluation folder ``eval_dir``."""
    return Path(eval_dir) / PANEL_FOLDER / f"{case_id}.npz"


def save_panel_prediction(eval_dir: str | Path, case_ids: Sequence[str], case_id: str, labels: np.ndarray,
                          n_rows: int = PANEL_ROWS) -> Path | None:
    """Save ``labels`` (a class-index map) when ``case_id`` is one of the panel cases of ``case_ids``.

    Args:
        eval_dir: the evaluation folder of the split (e.g. ``RUN/evaluation``).
        case_ids: every case of the split, in the split's order.
        case_id: the case just predicted.
        labels: its predicted class indices on the case's original grid (``probs.argmax(0)``).
        n_rows: rows of the panel.

    Returns:
        The file written, or None when the case is not shown in the panel.
    """
    if case_id not in panel_cases(case_ids, n_rows):
        return None
    arr = np.asarray(labels)
    dtype = np.uint8 if arr.size == 0 or int(arr.max()) < 256 else np.uint16
    buf = io.BytesIO()
    np.savez_compressed(buf, labels=arr.astype(dtype))
    path = prediction_path(eval_dir, case_id)
    atomic_write_bytes(path, buf.getvalue())
    return path


def load_panel_predictions(eval_dir: str | Path, cases: Sequence[str]) -> list[np.ndarray] | None:
    """The saved maps of ``cases`` (in that order), or None when any of them was not saved.

    Raises:
        DataError: a saved file cannot be read.
    """
    paths = [prediction_path(eval_dir, cid) for cid in cases]
    if not paths or not all(p.is_file() for p in paths):
        return None
    out = []
    for path in paths:
        try:
            with np.load(path) as data:
                out.append(np.asarray(data["labels"]).astype(np.int64))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise DataError(f"{path}: not a saved prediction ({exc})") from None
    return out
