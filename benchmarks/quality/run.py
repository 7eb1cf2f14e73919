"""Quality benchmark: does distillation make a small student better than the same student trained alone?

Setting (issue "Distillation that pays"): ACDC cine MRI as a compact copy at 128 x 128 in-plane
(``medkd data compact``), ACDC's patient split (``splits.json``: 70 / 10 / 20 patients), students ``unet_s1``
(57 k) and ``enet`` (0.36 M) trained on a seeded 50% of the training patients (drawn per seed, grouped by
patient), the student alone on 100% as an upper control, one teacher trained on every training patient and
reused. Every run is an ordinary ``medkd train`` run (the same trainer users run), scored by ``medkd evaluate``
on the test split; arms differ only in their ``distill`` section and unlabelled images.

Usage (from the project root)::

    python benchmarks/quality/run.py plan                         # the arms and runs, nothing trained
    python benchmarks/quality/run.py run --work ../quality_runs --device cuda --parallel 14 --deadline 480
    python benchmarks/quality/run.py collect --work ../quality_runs --out raw.json
    python benchmarks/quality/run.py report raw.json              # statistics -> results_<tag>.json / .md

``run`` schedules the runs by priority (the student alone and the recipe candidates first), launches up to
``--parallel`` at once, and, once the candidates of a student have finished, picks the recipe on the
VALIDATION split (best mean validation Dice over seeds) and adds its extra seeds. At ``--deadline`` seconds it
launches nothing new; runs still going at ``--hard-deadline`` are stopped and left out (the report lists every
run that is missing). ``report`` computes, per arm, mean +- std over seeds, the paired Wilcoxon over test
volumes (seed-averaged per volume), the seed-level paired t-test and a hierarchical bootstrap over seeds and
volumes against the student alone, and the share of the teacher-student gap closed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from arms import ARM_BY_NAME, ARMS, BASELINES, Arm, merge  # benchmarks/quality/arms.py (beside this file)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
STUDENTS = ("unet_s1", "enet")
TEACHER_MODEL = {"name": "monai.UNet",
                 "kwargs": {"channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2], "num_res_units": 2}}
FIXTURE = HERE / "fixtures" / "teacher_unet16_acdc128.safetensors"



def base_config(data: Path, epochs: int, threads: int, steps_per_epoch: int | None = None) -> dict[str, Any]:
    """The student set-up every arm shares (the issue's GPU setting)."""
    cfg = {
        "data": {"root": str(data), "dim": 2, "size": [128, 128], "normalize": "zscore",
                 "split": {"file": "splits.json", "group_pattern": "patient\\d+"}, "train_fraction": 0.5,
                 "augment": {"flip": True, "rot90": True}},
        "train": {"epochs": epochs, "batch_size": 16, "val_every": 3, "threads": threads, "progress": False,
                  "optimizer": {"name": "adam", "lr": 3.0e-3}, "scheduler": {"name": "cosine", "min_lr": 1.0e-5},
                  "seg_loss": {"name": "dice_ce"}},
    }
    if steps_per_epoch:
        cfg["train"]["max_steps_per_epoch"] = steps_per_epoch
    return cfg


def teacher_config(data: Path, epochs: int, threads: int, steps_per_epoch: int | None = None) -> dict[str, Any]:
    cfg = base_config(data, epochs, threads, steps_per_epoch)
    cfg["data"]["train_fraction"] = 1.0
    cfg["train"]["optimizer"]["lr"] = 2.0e-3
    return {"name": "teacher", "seed": 0, "model": TEACHER_MODEL, **cfg}


def half_teacher_name(seed: int) -> str:
    return f"teacher_half-s{seed}"


def half_teacher_config(data: Path, epochs: int, threads: int, seed: int, steps_per_epoch: int | None = None
                        ) -> dict[str, Any]:
    """The benchmark's teacher trained on the labelled patients of seed ``seed``'s students only (the same seeded
    50% draw: ``data.train_fraction`` and ``seed`` fix it)."""
    cfg = teacher_config(data, epochs, threads, steps_per_epoch)
    cfg["data"]["train_fraction"] = 0.5
    return {**cfg, "name": half_teacher_name(seed), "seed": seed}


def run_config(arm: Arm, student: str, seed: int, args: argparse.Namespace, teacher: dict[str, Any]
               ) -> dict[str, Any]:
    """One run's config; ``teacher`` is the ``distill.teacher`` section of arms distilling from the benchmark's
    teacher (an arm on the labelled half's teacher gets that seed's ``teacher_half`` run instead)."""
    if arm.teacher == "labelled":
        teacher = {"run": str(_run_dir(args.work.resolve(), half_teacher_name(seed)))}
    epochs = args.epochs * arm.epochs_factor
    cfg = merge({"name": f"{student}-{arm.name}-s{seed}", "seed": seed, "model": {"name": student}},
                 base_config(args.data, epochs, args.threads, args.steps_per_epoch), arm.overrides)
    if "distill" in cfg:
        cfg["distill"] = {"teacher": teacher, "cache": True, **cfg["distill"]}
    return cfg


# --- scheduling ---------------------------------------------------------------------------------------------------
@dataclass
class Job:
    name: str
    config: dict[str, Any]
    priority: int
    teacher: str | None  # the job whose run this one distils from (None: none, or the fixture)
    proc: subprocess.Popen | None = None
    started: float | None = None
    finished: float | None = None
    status: str = "pending"  # pending | running | done | failed | stopped | skipped


def _run_dir(work: Path, name: str) -> Path:
    return work / "runs" / name


def _launch(job: Job, work: Path, device: str) -> None:
    cfg_file = work / "configs" / f"{job.name}.yaml"
    cfg_file.parent.mkdir(parents=True, exist_ok=True)
    cfg_file.write_text(yaml.safe_dump(job.config, sort_keys=False))
    log = (work / "logs" / f"{job.name}.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "medkd", "train", str(cfg_file), "--out", str(_run_dir(work, job.name)),
           "--device", device]
    env = dict(os.environ, OMP_NUM_THREADS=str(job.config["train"]["threads"]))
    job.proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    job.started, job.status = time.time(), "running"
    print(f"[{time.strftime('%H:%M:%S')}] start {job.name}", flush=True)


def _expected_seconds(jobs: list[Job], job: Job, default: float) -> float:
    """How long ``job`` takes here: the slowest finished run of the same student (else of any student), per epoch,
    times ``job``'s epochs, x 1.1; ``default`` until a run has finished."""
    done = [j for j in jobs if j.status == "done" and j.finished]
    same = ([j for j in done if j.name.split("-")[0] == job.name.split("-")[0]]
            or [j for j in done if not j.name.startswith("teacher")])
    if not same:
        return default
    per_epoch = max((j.finished - j.started) / j.config["train"]["epochs"] for j in same)
    return 1.1 * per_epoch * job.config["train"]["epochs"]


def _best_val(work: Path, name: str) -> float | None:
    path = _run_dir(work, name) / "train_summary.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text())["best"].get("val_dice")


def _choose_recipe(work: Path, students: list[str], seeds: int) -> str | None:
    """The recipe arm, chosen on VALIDATION once every candidate run of seeds 0..seeds-1 has finished."""
    from report import choose_recipe  # benchmarks/quality/report.py

    names = [f"{st}-{a.name}-s{s}" for st in students for a in ARMS if a.candidate for s in range(seeds)]
    best = {n: _best_val(work, n) for n in names}
    if any(v is None for v in best.values()):
        return None
    choice = choose_recipe(best, [a.name for a in ARMS if a.candidate], students, tuple(range(seeds)))
    (work / "recipe.json").write_text(json.dumps(choice, indent=2))
    print(f"recipe (validation): {choice}", flush=True)
    return choice["chosen"]


def _teacher_job(arm: Arm, seed: int, args: argparse.Namespace) -> str | None:
    """The job an arm's run of ``seed`` waits for: its seed's half teacher, the benchmark's teacher, or none."""
    if "distill" not in arm.overrides:
        return None
    if arm.teacher == "labelled":
        return half_teacher_name(seed)
    return None if args.teacher_fixture is not None else "teacher"


def plan(args: argparse.Namespace, teacher: dict[str, Any]) -> list[Job]:
    """Every run of the grid (``--only``: the matching runs and the teachers they need)."""
    jobs = []
    if args.teacher_fixture is None:
        teacher_cfg = teacher_config(args.data, args.teacher_epochs, args.threads, args.steps_per_epoch)
        jobs.append(Job("teacher", teacher_cfg, -1, None))
    half_seeds: set[int] = set()
    for arm in ARMS:
        seeds = args.headline_seeds if arm.name in BASELINES else args.seeds
        if arm.teacher == "labelled" and "distill" in arm.overrides:
            half_seeds.update(range(seeds))
        for student in args.students:
            for seed in range(seeds):
                jobs.append(Job(f"{student}-{arm.name}-s{seed}", run_config(arm, student, seed, args, teacher),
                                arm.priority, _teacher_job(arm, seed, args)))
    jobs += [Job(half_teacher_name(seed), half_teacher_config(args.data, args.teacher_epochs, args.threads, seed,
                                                              args.steps_per_epoch), -1, None)
             for seed in sorted(half_seeds)]
    if args.only:
        kept = [j for j in jobs if re.search(args.only, j.name)]
        needed = {j.teacher for j in kept}
        jobs = [j for j in jobs if j in kept or j.name in needed]
    return jobs


def describe_machine(work: Path, device: str, parallel: int, threads: int) -> None:
    """Write ``work/machine.json`` (GPU, CPU model and cores, torch, how the runs shared it) unless it exists.

    ``collect`` copies it into ``raw.json``, so the report names the machine of every run; ``gpu.sh`` writes
    its own first with the same writer (it knows about CUDA MPS), which this keeps.
    """
    from medkd.measure.machine import write_runs_machine

    sharing = ("runs in parallel on one GPU" if device.startswith("cuda") and parallel > 1
               else f"{parallel} run(s) at a time")
    write_runs_machine(work, device, f"{sharing}, {threads} torch threads", keep=True)


def schedule(args: argparse.Namespace) -> None:
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    describe_machine(work, args.device, args.parallel, args.threads)
    teacher = ({"model": TEACHER_MODEL, "checkpoint": str(args.teacher_fixture.resolve())} if args.teacher_fixture
               else {"run": str(_run_dir(work, "teacher"))})
    jobs = plan(args, teacher)
    chosen: str | None = None
    t0 = time.time()
    while True:
        now = time.time() - t0
        running = [j for j in jobs if j.status == "running"]
        for job in running:
            code = job.proc.poll()
            if code is not None:
                job.status, job.finished = ("done" if code == 0 else "failed"), time.time()
                print(f"[{time.strftime('%H:%M:%S')}] {job.status} {job.name} ({time.time() - job.started:.0f} s)",
                      flush=True)
            elif now > args.hard_deadline:
                job.proc.kill()
                job.status = "stopped"
        if chosen is None:
            chosen = _choose_recipe(work, args.students, args.seeds)
            if chosen is not None:  # the recipe's extra seeds for the headline comparison
                arm = ARM_BY_NAME[chosen]
                for student in args.students:
                    for seed in range(args.seeds, args.headline_seeds):
                        jobs.append(Job(f"{student}-{arm.name}-s{seed}", run_config(arm, student, seed, args, teacher),
                                        1, _teacher_job(arm, seed, args)))
        status = {j.name: j.status for j in jobs}
        pending = sorted((j for j in jobs if j.status == "pending"), key=lambda j: j.priority)
        for j in pending:
            if j.teacher is not None and status.get(j.teacher, "skipped") in ("failed", "stopped", "skipped"):
                j.status = "skipped"
        slots = args.parallel - sum(j.status == "running" for j in jobs)
        fits = [j for j in pending if j.status == "pending" and now <= args.deadline
                and now + _expected_seconds(jobs, j, args.expected_seconds) <= args.hard_deadline]
        for job in fits:
            if slots <= 0:
                break
            if job.teacher is None or status.get(job.teacher) == "done":
                _launch(job, work, args.device)
                slots -= 1
        if not any(j.status == "running" for j in jobs):  # nothing launched or running: nothing can change
            break
        time.sleep(2)
    summary = {j.name: j.status for j in jobs}
    (work / "schedule.json").write_text(json.dumps({"elapsed_s": round(time.time() - t0, 1), "jobs": summary,
                                                    "recipe": chosen}, indent=2))
    print(json.dumps({s: sum(v == s for v in summary.values()) for s in set(summary.values())}), flush=True)


def train_teacher(args: argparse.Namespace) -> None:
    """Train the benchmark's teacher with ``medkd train`` and store its best weights as the fp16 fixture."""
    import torch
    from safetensors.torch import load_file, save_file

    work = args.work.resolve()
    job = Job("teacher", teacher_config(args.data, args.teacher_epochs, args.threads, args.steps_per_epoch), -1, None)
    _launch(job, work, args.device)
    if job.proc.wait() != 0:
        raise SystemExit(f"teacher training failed; see {work / 'logs' / 'teacher.log'}")
    weights = load_file(str(_run_dir(work, "teacher") / "checkpoints" / "best.safetensors"))
    FIXTURE.parent.mkdir(exist_ok=True)
    save_file({k: v.to(torch.float16) if v.is_floating_point() else v for k, v in weights.items()}, str(FIXTURE))
    print(f"teacher fixture -> {FIXTURE} ({FIXTURE.stat().st_size / 2**20:.1f} MiB)")


# --- collecting ---------------------------------------------------------------------------------------------------
def collect(work: Path) -> dict[str, Any]:
    """Per run: per-volume test foreground Dice, best validation Dice, epoch, seconds, collapse flag."""
    from medkd.report.scores import case_foreground_means
    from medkd.run import RunFolder

    runs = {}
    for run in sorted((work / "runs").iterdir()) if (work / "runs").is_dir() else []:
        folder = RunFolder(run)
        if not folder.has_evaluation() or not folder.has_summary():
            continue
        per_case = folder.per_case()
        summary = folder.summary()
        classes = folder.class_names()[1:]
        runs[run.name] = {"test_dice": case_foreground_means(per_case, "dice", classes),
                          "best_val_dice": summary["best"].get("val_dice"), "best_epoch": summary["best"]["epoch"],
                          "train_seconds": summary["train_seconds"], "val_collapse": summary.get("val_collapse"),
                          "device": summary["device"]}
    extra = {}
    for name in ("schedule.json", "recipe.json", "machine.json"):
        if (work / name).is_file():
            extra[name.removesuffix(".json")] = json.loads((work / name).read_text())
    return {"runs": runs, **extra}


def merge_raw(raw_files: list[Path]) -> dict[str, Any]:
    """Several ``collect`` outputs as one ``raw.json``: runs keyed by name, the first file's schedule and recipe,
    and under ``machines`` each file's machine with the runs it contributed. A run already merged from an earlier
    file is kept as ``<name>@<device>`` when it ran on another device (the report pairs each arm with the student
    alone on its own device where it can, and shows the device effect); on the same device it is an error."""
    runs: dict[str, Any] = {}
    machines = []
    for path in raw_files:
        raw = json.loads(path.read_text())
        added = {}
        for name, rec in raw["runs"].items():
            key = name if name not in runs else _repeat_name(path, name, rec, runs)
            added[key] = rec
        runs.update(added)
        machines.append({**raw.get("machine", {}), "source": path.name, "runs": sorted(added)})
    first = json.loads(raw_files[0].read_text())
    extra = {k: first[k] for k in ("schedule", "recipe", "machine") if k in first}
    return {"runs": runs, **extra, "machines": machines}


def _repeat_name(path: Path, name: str, rec: dict[str, Any], runs: dict[str, Any]) -> str:
    """``<name>@<device>`` for a run merged before from another device; SystemExit for a true duplicate."""
    key = f"{name}@{rec.get('device')}"
    if rec.get("device") is None or rec.get("device") == runs[name].get("device") or key in runs:
        raise SystemExit(f"error: {path}: runs already in an earlier file: {name}")
    return key


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("plan", "run", "teacher"):
        p = sub.add_parser(name)
        p.add_argument("--data", type=Path, default=Path("../acdc128"),
                       help="compact ACDC copy (medkd data compact ../shared/data/acdc DIR --size 128x128)")
        p.add_argument("--work", type=Path, default=Path("../quality_runs"))
        p.add_argument("--device", default="cpu")
        p.add_argument("--parallel", type=int, default=1)
        p.add_argument("--threads", type=int, default=2, help="torch threads per run")
        p.add_argument("--epochs", type=int, default=60)
        p.add_argument("--teacher-epochs", type=int, default=100)
        p.add_argument("--steps-per-epoch", type=int, default=None, help="cap (smoke tests only)")
        p.add_argument("--teacher-fixture", type=Path, default=None,
                       help="safetensors weights of the teacher (skips training it)")
        p.add_argument("--students", nargs="+", default=list(STUDENTS))
        p.add_argument("--only", default=None, help="regular expression: run only the matching runs")
        p.add_argument("--seeds", type=int, default=3)
        p.add_argument("--headline-seeds", type=int, default=5)
        p.add_argument("--deadline", type=float, default=float("inf"), help="seconds: launch nothing after")
        p.add_argument("--hard-deadline", type=float, default=float("inf"), help="seconds: stop runs still going")
        p.add_argument("--expected-seconds", type=float, default=150.0,
                       help="how long a run takes, until one has finished (no launch that would pass the hard "
                            "deadline)")
    c = sub.add_parser("collect")
    c.add_argument("--work", type=Path, required=True)
    c.add_argument("--out", type=Path, required=True)
    m = sub.add_parser("merge", help="several raw.json files (runs of different calls or machines) as one")
    m.add_argument("raw", type=Path, nargs="+")
    m.add_argument("--out", type=Path, required=True)
    r = sub.add_parser("report")
    r.add_argument("raw", type=Path)
    r.add_argument("--tag", default=None)
    args = parser.parse_args()
    if args.cmd == "plan":
        for job in sorted(plan(args, {"run": "TEACHER"}), key=lambda j: j.priority):
            print(f"P{job.priority} {job.name}")
    elif args.cmd == "run":
        schedule(args)
    elif args.cmd == "teacher":
        train_teacher(args)
    elif args.cmd == "collect":
        args.out.write_text(json.dumps(collect(args.work), indent=1))
    elif args.cmd == "merge":
        if args.out.resolve() in {f.resolve() for f in args.raw}:
            raise SystemExit(f"error: {args.out}: the output would replace an input")
        args.out.write_text(json.dumps(merge_raw(args.raw), indent=1))
    else:
        from report import write_report  # benchmarks/quality/report.py

        write_report(args.raw, HERE, args.tag)


if __name__ == "__main__":
    main()
