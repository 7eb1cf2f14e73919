"""How far a run's training got, as evaluations and exports record it (one rule for both)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medkd.config import load_config
from medkd.run.files import BEST_POINTER, CHECKPOINTS_DIR, CONFIG_FILE, LAST_POINTER, SUMMARY_FILE

__all__ = ["training_progress"]


def _epoch_in(path: Path) -> int | None:
    """The integer ``epoch`` of a checkpoint pointer (None when absent or unreadable)."""
    try:
        value = json.loads(path.read_text()).get("epoch")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) else None


def training_progress(run_dir: str | Path, planned_epochs: int | None = None) -> dict[str, Any]:
    """How far a run folder's training got.

    Args:
        run_dir: a run folder.
        planned_epochs: ``train.epochs`` of its config (read from ``config.yaml`` when not given).

    Returns:
        ``{"epoch": epoch of best.safetensors (the weights exported), "last_epoch": completed epochs
        (checkpoints/last.json), "epochs": planned epochs, "finished": bool}``; epochs the files do not state are
        None. A run is finished when ``train_summary.json`` exists and ``last_epoch`` reached ``epochs``.
    """
    run_dir = Path(run_dir)
    if planned_epochs is None:
        planned_epochs = load_config(run_dir / CONFIG_FILE).train.epochs
    last = _epoch_in(run_dir / CHECKPOINTS_DIR / LAST_POINTER)
    finished = (run_dir / SUMMARY_FILE).is_file() and (last is None or last >= planned_epochs)
    return {"epoch": _epoch_in(run_dir / CHECKPOINTS_DIR / BEST_POINTER), "last_epoch": last,
            "epochs": int(planned_epochs), "finished": bool(finished)}
