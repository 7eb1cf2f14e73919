"""Names of the files in a run folder and the one JSON reader every run file goes through.

A run folder holds ``config.yaml`` (resolved), ``split.json`` (the exact cases used), ``checkpoints/``,
``metrics.jsonl`` (one JSON line per step and per epoch), ``train_summary.json`` and ``evaluation/``
(``summary.json``, ``per_case.json``, ``per_case.csv`` and optional ``predictions/`` for the test split; other
splits in ``evaluation/<split>/``).
Only :mod:`medkd.run` spells these names; every other module asks :class:`medkd.run.RunFolder`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medkd.errors import MedkdError

__all__ = [
    "BEST_POINTER",
    "BEST_WEIGHTS",
    "CHECKPOINTS_DIR",
    "CONFIG_FILE",
    "EVALUATION_DIR",
    "EVAL_PER_CASE",
    "EVAL_PER_CASE_CSV",
    "EVAL_SUMMARY",
    "LAST_POINTER",
    "METRICS_FILE",
    "PREDICTIONS_DIR",
    "RECONSTRUCTION_FILE",
    "SPLIT_FILE",
    "SUMMARY_FILE",
    "read_json",
    "read_jsonl",
]

CONFIG_FILE = "config.yaml"
SPLIT_FILE = "split.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "train_summary.json"
EVALUATION_DIR = "evaluation"
EVAL_SUMMARY = "summary.json"
EVAL_PER_CASE = "per_case.json"
EVAL_PER_CASE_CSV = "per_case.csv"
PREDICTIONS_DIR = "predictions"
#: test reconstruction PSNR of a multi-task teacher (written by ``medkd experiment run``)
RECONSTRUCTION_FILE = "reconstruction.json"
CHECKPOINTS_DIR = "checkpoints"
BEST_WEIGHTS = "best.safetensors"
BEST_POINTER = "best.json"
LAST_POINTER = "last.json"


def read_json(path: Path, missing: str = "not found") -> Any:
    """The JSON value stored in ``path``.

    Raises:
        MedkdError: one line naming ``path``: ``missing`` when the file does not exist, or that it is unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise MedkdError(f"{path}: {missing}")
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise MedkdError(f"{path}: not readable JSON ({type(exc).__name__})") from None


def read_jsonl(path: Path) -> list[Any]:
    """Every record of a JSON-lines file (blank lines skipped; an absent file has none).

    Raises:
        MedkdError: one line naming ``path`` and the first line that is not JSON.
    """
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            raise MedkdError(f"{path}: line {number} is not valid JSON") from None
    return records
