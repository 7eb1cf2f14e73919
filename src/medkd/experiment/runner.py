"""``medkd experiment run``: train and evaluate every run of a preset's grid, resumably.

Layout of an experiment folder ``OUT``::

    OUT/preset.yaml          the preset as last run
    OUT/index.json           the grid: every run's name, kind, config, status, seconds, test Dice
    OUT/runs/<run name>/     normal run folders (config.yaml, split.json, checkpoints/, evaluation/ ...)

A run folder with ``evaluation/summary.json`` is finished and skipped; one with ``train_summary.json`` is
evaluated only; one with a checkpoint resumes training. A run trained on simulated sites (``data.simulate_sites``)
is also scored on its test cases without them (``evaluation/test-without-sites/``; added to a finished run that
lacks it), so the report can say what the unseen site costs each row. A failed run is recorded (with its one-line
error) and the grid goes on; students of a failed teacher are skipped. Relative data paths are resolved against
the current directory: run from the project root.
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from medkd.config import parse_config
from medkd.errors import MedkdError
from medkd.evaluate.runner import TEST_WITHOUT_SITES, evaluate_run
from medkd.experiment.preset import RunSpec, expand_grid, load_preset
from medkd.experiment.reconstruction import reconstruction_psnr
from medkd.io import atomic_write_json
from medkd.models import tap_specs
from medkd.run import RunFolder, resolve_paths
from medkd.train.trainer import train

__all__ = ["format_grid", "hardware_description", "run_experiment", "run_status"]


def hardware_description() -> str:
    """GPU name, or CPU model and torch threads, of this machine (for the report's footnotes)."""
    if torch.cuda.is_available():
        return f"GPU {torch.cuda.get_device_name(0)}"
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {model}, {torch.get_num_threads()} torch threads"


def run_status(run_dir: Path) -> str:
    """``done`` (evaluated), ``trained``, ``started`` (a checkpoint or log exists) or ``pending``."""
    run_dir = Path(run_dir)
    run = RunFolder(run_dir)
    if run.has_evaluation():
        return "done"
    if run.has_summary():
        return "trained"
    if run_dir.is_dir() and any(run_dir.iterdir()):
        return "started"
    return "pending"


def format_grid(runs: list[RunSpec], out: Path | None = None) -> str:
    """One line per run: index, name, kind, model, teacher and (with ``out``) status."""
    lines = []
    for k, r in enumerate(runs, start=1):
        status = f" [{run_status(out / 'runs' / r.name)}]" if out is not None else ""
        teacher = f" <- {r.teacher_run}" if r.teacher_run else ""
        lines.append(f"[{k}/{len(runs)}] {r.name} ({r.config['model']['name']}){teacher}{status}")
    n_t = sum(r.kind == "teacher" for r in runs)
    lines.append(f"{len(runs)} runs: {n_t} teachers, {len(runs) - n_t} students")
    return "\n".join(lines)


def _index(out: Path, preset_path: Path, preset: Any, budget: str, seeds: int | None,
           runs: list[RunSpec], records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    b = preset.budgets[budget]
    return {
        "study": preset.study, "title": preset.title, "preset": preset_path.name, "budget": budget,
        "budget_description": b.description, "cuts": b.cuts, "seeds": seeds if seeds is not None else b.seeds,
        "protocol": preset.protocol.model_dump(), "baseline": preset.baseline, "headline": preset.headline,
        "hardware": hardware_description(),
        "runs": [{**r.to_json(), **records.get(r.name, {"status": run_status(out / "runs" / r.name)})}
                 for r in runs],
    }


def _test_dice(run_dir: Path) -> float | None:
    """Mean foreground Dice of the run's test evaluation (None before it is evaluated)."""
    run = RunFolder(run_dir)
    if not run.has_evaluation():
        return None
    return run.evaluation()["foreground_mean"]["dice"]["mean"]


def _execute(spec: RunSpec, run_dir: Path, runs_root: Path, device: str | None) -> None:
    """Train (or resume) and evaluate one run of the grid."""
    data = json.loads(json.dumps(spec.config))
    if spec.teacher_run:
        data["distill"]["teacher"]["run"] = str((runs_root / spec.teacher_run).resolve())
    cfg = resolve_paths(parse_config(data, source=spec.name))
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    status = run_status(run_dir)
    if status in ("pending", "started"):
        run_dir.mkdir(parents=True, exist_ok=True)
        train(cfg, run_dir, resume=status == "started", device=device)
    evaluate_run(run_dir, "test", device, progress=False)
    _maybe_without_sites(run_dir, device)
    if spec.kind == "teacher":
        _maybe_reconstruction(run_dir)


def _maybe_without_sites(run_dir: Path, device: str | None) -> None:
    """Score a run trained on simulated sites on its test cases without them, once (what the site costs it)."""
    run = RunFolder(run_dir)
    if run.has_evaluation(TEST_WITHOUT_SITES) or run.config().data.simulate_sites is None:
        return
    evaluate_run(run_dir, "test", device, progress=False, without_sites=True)


def _maybe_reconstruction(run_dir: Path) -> None:
    """Write the test reconstruction PSNR of a 2D multi-task teacher next to its evaluation."""
    run = RunFolder(run_dir)
    model, cfg = run.load_model()
    if "reconstruction" in tap_specs(model) and cfg.data.dim == 2:
        run.write_reconstruction(reconstruction_psnr(run_dir, "test"))


def _earlier_records(index_path: Path) -> dict[str, dict[str, Any]]:
    """What earlier (partial) invocations recorded in ``index.json`` for runs that ended (done, failed, skipped)."""
    if not index_path.is_file():
        return {}
    old = json.loads(index_path.read_text())
    return {r["name"]: {k: r[k] for k in ("status", "seconds", "error", "test_dice") if k in r}
            for r in old.get("runs", []) if r.get("status") in ("done", "failed", "skipped")}


def run_experiment(preset_path: str | Path, out: str | Path, budget: str = "quick", seeds: int | None = None,
                   only: str | None = None, dry_run: bool = False, device: str | None = None,
                   echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Expand ``preset_path`` and run its grid into ``out`` (see the module docstring).

    Args:
        preset_path: the preset YAML.
        out: the experiment folder.
        budget: ``quick`` or ``full`` (any key of the preset's ``budgets``).
        seeds: default number of seeds (``--seeds``).
        only: run only names matching this pattern (plus the teachers they need).
        dry_run: print the grid and return without training.
        device: torch device (default CUDA when available).
        echo: where progress lines go.

    Returns:
        The index (as written to ``OUT/index.json``; not written on a dry run).
    """
    preset_path, out = Path(preset_path), Path(out)
    preset = load_preset(preset_path)
    runs = expand_grid(preset, budget, seeds, only, source=str(preset_path))
    if dry_run:
        echo(format_grid(runs, out if out.is_dir() else None))
        return _index(out, preset_path, preset, budget, seeds, runs, {})
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(preset_path, out / "preset.yaml")  # the grid as last run
    runs_root = out / "runs"
    index_path = out / "index.json"
    records = _earlier_records(index_path)
    failed: set[str] = set()
    t0 = time.time()
    for k, spec in enumerate(runs, start=1):
        run_dir = runs_root / spec.name
        prefix = f"[{k}/{len(runs)}] {spec.name}"
        if run_status(run_dir) == "done":
            try:
                _maybe_without_sites(run_dir, device)
            except MedkdError as exc:  # the run stays done; only the evaluation without sites is missing
                echo(f"{prefix} evaluation without sites failed: {exc}")
            records[spec.name] = {**records.get(spec.name, {}), "status": "done", "test_dice": _test_dice(run_dir)}
            echo(f"{prefix} ... finished earlier, skipped")
            continue
        if spec.teacher_run in failed:
            records[spec.name] = {"status": "skipped", "error": f"teacher {spec.teacher_run} failed"}
            echo(f"{prefix} ... skipped: teacher failed")
            continue
        echo(f"{prefix} ... ({spec.config['model']['name']}, elapsed {time.time() - t0:.0f}s)")
        start = time.time()
        try:
            _execute(spec, run_dir, runs_root, device)
        except MedkdError as exc:
            failed.add(spec.name)
            records[spec.name] = {"status": "failed", "error": str(exc), "seconds": round(time.time() - start, 1)}
            echo(f"{prefix} FAILED: {exc}")
        else:
            dice = _test_dice(run_dir)
            records[spec.name] = {"status": "done", "seconds": round(time.time() - start, 1), "test_dice": dice}
            echo(f"{prefix} done in {time.time() - start:.0f}s, test Dice {dice:.4f}")
        atomic_write_json(index_path, _index(out, preset_path, preset, budget, seeds, runs, records))
    index = _index(out, preset_path, preset, budget, seeds, runs, records)
    atomic_write_json(index_path, index)
    n_done = sum(1 for r in index["runs"] if r["status"] == "done")
    echo(f"{n_done}/{len(runs)} runs done in {time.time() - t0:.0f}s -> {out}")
    return index
