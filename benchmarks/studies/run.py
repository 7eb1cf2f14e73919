"""Run several study presets' grids in parallel on one machine, within a deadline, then render their reports.

``medkd experiment run`` trains a grid one run at a time. This driver starts each run of the grids as its own
``medkd experiment run PRESET --only RUN`` process (so every run is an ordinary run of the experiment folder),
up to ``--parallel`` at once: teachers first, then the students alone, then the distilled students once their
teacher has finished. On a CPU, ``--pin-cores`` splits this machine's cores into ``--parallel`` groups and keeps
each run on a group of its own (Linux): each run keeps its ``train.threads``, so its arithmetic, and its result,
are those of the same run alone on the machine. At ``--deadline`` seconds it launches nothing new; runs still
going at ``--hard-deadline`` are stopped and stay unfinished (the report lists them). At the end it writes each
experiment's ``index.json`` from the run folders and renders the report into ``--results/<preset name>``. Run
from the project root::

    python benchmarks/studies/run.py --budget gpu --work ../studies_work --results ../studies_results \
        --parallel 16 --deadline 360 --hard-deadline 500 experiments/paper_a_acdc.yaml experiments/thesis_b_acdc.yaml
    python benchmarks/studies/run.py --budget cpu --device cpu --parallel 2 --pin-cores --work ../studies_cpu \
        --results ../studies_cpu_results experiments/paper_a_acdc.yaml
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from medkd.experiment.preset import RunSpec, expand_grid, load_preset
from medkd.experiment.runner import run_experiment, run_status
from medkd.io import atomic_write_json
from medkd.report.study import render_report
from medkd.run import RunFolder


@dataclass
class Job:
    """One run of one preset's grid, and its process once launched."""

    preset: Path
    out: Path
    spec: RunSpec
    proc: subprocess.Popen | None = None
    status: str = "waiting"  # waiting | running | ended | skipped | stopped
    cores: tuple[int, ...] | None = None  # the CPU cores it is pinned to (None: not pinned)

    @property
    def rank(self) -> int:
        """Launch order: teachers, students alone, distilled students."""
        return 0 if self.spec.kind == "teacher" else (1 if self.spec.teacher_run is None else 2)


def plan(presets: list[Path], budget: str, work: Path) -> list[Job]:
    """Every run of every preset, in launch order."""
    jobs = [Job(p, work / p.stem, spec) for p in presets for spec in expand_grid(load_preset(p), budget)]
    return sorted(jobs, key=lambda j: j.rank)


def core_groups(cores: Sequence[int], parallel: int) -> list[tuple[int, ...]]:
    """``cores`` cut into ``parallel`` contiguous groups whose sizes differ by at most one (one run per group)."""
    if not 1 <= parallel <= len(cores):
        raise ValueError(f"--pin-cores needs 1 <= --parallel <= {len(cores)} cores, got {parallel}")
    size, extra = divmod(len(cores), parallel)
    groups, start = [], 0
    for i in range(parallel):
        end = start + size + (i < extra)
        groups.append(tuple(cores[start:end]))
        start = end
    return groups


def _launch(job: Job, budget: str, device: str, logs: Path, cores: tuple[int, ...] | None = None) -> None:
    """Start the job's ``medkd experiment run --only RUN`` process (on ``cores`` only, when given)."""
    log = logs / job.preset.stem / f"{job.spec.name.replace('/', '_')}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "medkd", "experiment", "run", str(job.preset), "--budget", budget,
           "--out", str(job.out), "--only", job.spec.name, "--device", device]
    pin = None if cores is None else (lambda: os.sched_setaffinity(0, cores))  # inherited by every thread
    job.proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=pin)
    job.status, job.cores = "running", cores
    where = "" if cores is None else f" on cores {','.join(map(str, cores))}"
    print(f"{time.strftime('%H:%M:%S')} start {job.preset.stem}: {job.spec.name}{where}", flush=True)


def _ready(job: Job, jobs: list[Job]) -> bool | None:
    """True when the job's teacher (if any) has finished, None when the teacher ended without finishing."""
    if job.spec.teacher_run is None or run_status(job.out / "runs" / job.spec.teacher_run) == "done":
        return True
    teacher_over = any(j.out == job.out and j.spec.name == job.spec.teacher_run and j.status not in ("waiting",
                       "running") for j in jobs)
    return None if teacher_over else False


def schedule(jobs: list[Job], args: argparse.Namespace, poll_s: float = 2.0) -> None:
    """Launch, reap and stop the jobs (see the module docstring); with ``args.pin_cores`` one core group a run."""
    t0 = time.time()
    groups = core_groups(sorted(os.sched_getaffinity(0)), args.parallel) if args.pin_cores else None
    while any(j.status in ("waiting", "running") for j in jobs):
        now = time.time() - t0
        for j in (j for j in jobs if j.status == "running"):
            if j.proc.poll() is not None:
                j.status = "ended"
            elif now > args.hard_deadline:
                os.killpg(j.proc.pid, signal.SIGTERM)
                j.proc.wait()
                j.status = "stopped"
        running = [j for j in jobs if j.status == "running"]
        free = [g for g in groups if all(j.cores != g for j in running)] if groups else None
        slots = args.parallel - len(running)
        for j in (j for j in jobs if j.status == "waiting"):
            ready = _ready(j, jobs)
            if ready is None or now > args.deadline:
                j.status = "skipped"
            elif ready and slots > 0:
                _launch(j, args.budget, args.device, args.work / "logs", free.pop(0) if free else None)
                slots -= 1
        time.sleep(poll_s)
    print(f"scheduler done after {time.time() - t0:.0f} s", flush=True)


def write_index(preset: Path, out: Path, budget: str) -> None:
    """``out/index.json`` from the run folders (each run's status and test Dice) and ``out/preset.yaml``."""
    index = run_experiment(preset, out, budget, dry_run=True, echo=lambda _line: None)
    for run in index["runs"]:
        folder = RunFolder(out / "runs" / run["name"])
        if run["status"] == "done":
            run["test_dice"] = folder.evaluation()["foreground_mean"]["dice"]["mean"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "preset.yaml").write_text(preset.read_text())
    atomic_write_json(out / "index.json", index)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("presets", nargs="+", type=Path)
    parser.add_argument("--budget", default="gpu")
    parser.add_argument("--work", type=Path, required=True, help="experiment folders go to WORK/<preset name>")
    parser.add_argument("--results", type=Path, required=True, help="reports go to RESULTS/<preset name>")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--parallel", type=int, default=16)
    parser.add_argument("--pin-cores", action="store_true",
                        help="CPU: keep each run on its own group of this machine's cores (Linux)")
    parser.add_argument("--deadline", type=float, default=float("inf"), help="seconds: launch nothing after")
    parser.add_argument("--hard-deadline", type=float, default=float("inf"), help="seconds: stop runs still going")
    parser.add_argument("--note", default=None, help="a sentence for every report's preamble")
    args = parser.parse_args()
    jobs = plan(args.presets, args.budget, args.work)
    print(json.dumps({p.stem: sum(j.preset == p for j in jobs) for p in args.presets}), flush=True)
    schedule(jobs, args)
    for preset in args.presets:
        out = args.work / preset.stem
        write_index(preset, out, args.budget)
        try:
            render_report(out, args.results / preset.stem, note=args.note)
        except Exception as exc:  # one study's report must not sink the others'
            print(f"{preset.stem}: report not rendered: {exc}", flush=True)


if __name__ == "__main__":
    main()
