"""The run folder: one package writes and reads it (config, split, metrics, summaries, evaluations, weights).

Every stage after training goes through :class:`RunFolder`; no other module names the run folder's files.
"""

from __future__ import annotations

from medkd.run.files import read_json, read_jsonl
from medkd.run.folder import RunFolder, load_run_model
from medkd.run.networks import build_network, load_network
from medkd.run.paths import resolve_paths
from medkd.run.progress import training_progress
from medkd.run.resume import RESUME_FREE_KEYS, SPLIT_KEYS, check_resume_config, config_text

__all__ = [
    "RESUME_FREE_KEYS",
    "SPLIT_KEYS",
    "RunFolder",
    "build_network",
    "check_resume_config",
    "config_text",
    "load_network",
    "load_run_model",
    "read_json",
    "read_jsonl",
    "resolve_paths",
    "training_progress",
]
