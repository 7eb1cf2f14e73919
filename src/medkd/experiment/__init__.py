"""Study experiments: presets expanded into grids of runs, run resumably (reports: :mod:`medkd.report.study`)."""

from __future__ import annotations

from medkd.experiment.preset import ExperimentPreset, RunSpec, expand_grid, load_preset
from medkd.experiment.runner import run_experiment, run_status

__all__ = ["ExperimentPreset", "RunSpec", "expand_grid", "load_preset", "run_experiment", "run_status"]
