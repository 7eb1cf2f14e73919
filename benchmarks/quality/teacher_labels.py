"""How good are the teacher's pseudo-labels on the students' images without labels?

The quality benchmark's teacher was trained on every training patient, labels included, so on the half of them
that a student gets without labels it has seen the true labels: its pseudo-labels there may be better than what
a teacher gives on images it never saw. This script measures that. It scores the benchmark's teacher (the fixture)
on, per seed, the training volumes that seed's student gets without labels and those it gets with labels (the same
seeded 50% draw, grouped by patient, that ``run.py`` uses), and on the test split. Mean foreground Dice (RV, MYO,
LV) per volume, at 128 x 128 as the benchmark scores.

With ``--half-teachers WORK`` (a ``run.py`` work folder) it also scores each seed's half teacher found there
(``teacher_half-s<seed>``: trained on that seed's labelled patients only, as the ``rec_cwd_t50`` arm uses it) on
that seed's volumes without labels, which it never saw, and on the test split: the pseudo-labels a user whose
teacher never saw those labels would get.

Usage (from the project root; about a minute on 2 CPU cores, plus about 20 s per half teacher)::

    python benchmarks/quality/teacher_labels.py --data ../acdc128 --seeds 5 --out benchmarks/quality/teacher_labels

writes ``teacher_labels.json`` and ``teacher_labels.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from run import FIXTURE, TEACHER_MODEL, base_config, half_teacher_name  # benchmarks/quality/run.py (beside this file)

from medkd.config import ModelConfig, RunConfig, TeacherConfig, parse_config
from medkd.data.loader import DataBundle, build_bundle
from medkd.data.nifti_io import spacing_from_affine
from medkd.data.pipeline import prepare_cases
from medkd.evaluate.metrics import case_metrics
from medkd.inference import predict_volume, predicted_classes
from medkd.io import atomic_write_json, atomic_write_text
from medkd.measure.machine import machine_info
from medkd.teachers import load_teacher

FOREGROUND = {"RV": 1, "MYO": 2, "LV": 3}


def student_config(data: Path, seed: int) -> RunConfig:
    """The benchmark's student set-up for ``seed`` (what fixes its 50% draw of the training patients)."""
    return parse_config({"name": f"draw-s{seed}", "seed": seed, "model": {"name": "unet_s1"},
                         **base_config(data, epochs=1, threads=1)}, source="teacher_labels")


def teacher_dice(teacher_cfg: TeacherConfig, cfg: RunConfig, bundle: DataBundle, case_ids: list[str]
                 ) -> dict[str, float]:
    """Mean foreground Dice per volume of the teacher of ``teacher_cfg`` on ``case_ids`` (loaded as the runs load
    it)."""
    teacher = load_teacher(teacher_cfg, 1, 4, 2)
    dice = {}
    for cid in case_ids:
        pc = prepare_cases(bundle.index, [cid], bundle.channels, cfg.data)[0]
        probs = pc.restore(predict_volume(teacher, pc.image, 2, cfg.data.size, batch_size=32))
        metrics = case_metrics(predicted_classes(probs), pc.reference, FOREGROUND,
                               spacing=spacing_from_affine(pc.affine))
        dice[cid] = float(np.mean([metrics[c]["dice"] for c in FOREGROUND]))
    return dice


def draw(data: Path, seed: int) -> tuple[list[str], list[str]]:
    """Seed ``seed``'s student's training volumes: (with labels, without labels)."""
    bundle = build_bundle(student_config(data, seed))
    labelled = bundle.split["train"]
    labelled_ids = set(labelled)
    return labelled, [c for c in bundle.meta["train_pool"] if c not in labelled_ids]


def summarize(dice: dict[str, float], seeds: int, data: Path) -> dict[str, Any]:
    """Per seed: the teacher's mean Dice on that student's volumes without labels and with labels."""
    rows = []
    for seed in range(seeds):
        labelled, unlabelled = draw(data, seed)
        rows.append({"seed": seed, "n_without_labels": len(unlabelled), "n_with_labels": len(labelled),
                     "without_labels": statistics.mean(dice[c] for c in unlabelled),
                     "with_labels": statistics.mean(dice[c] for c in labelled)})
    return {"rows": rows}


def half_teachers(work: Path, seeds: int, data: Path, cfg: RunConfig, bundle: DataBundle
                  ) -> dict[str, dict[str, float]]:
    """Per seed whose half teacher has finished in ``work``: its Dice per volume on that seed's volumes without
    labels and on the test split."""
    per_seed = {}
    for seed in range(seeds):
        run = work / "runs" / half_teacher_name(seed)
        if not (run / "checkpoints" / "best.safetensors").is_file():
            continue
        _, unlabelled = draw(data, seed)
        per_seed[str(seed)] = teacher_dice(TeacherConfig(run=str(run)), cfg, bundle,
                                           unlabelled + bundle.split["test"])
    return per_seed


def summarize_half(per_seed: dict[str, dict[str, float]], test: list[str]) -> list[dict[str, Any]]:
    """Per half teacher: its mean Dice on its seed's volumes without labels (the scored volumes outside the test
    split, as ``half_teachers`` chose them) and on the test split."""
    test_ids = set(test)
    rows = []
    for seed, dice in per_seed.items():
        unlabelled = [c for c in dice if c not in test_ids]
        rows.append({"seed": int(seed), "n_without_labels": len(unlabelled),
                     "without_labels": statistics.mean(dice[c] for c in unlabelled),
                     "test": statistics.mean(dice[c] for c in test)})
    return rows


def render(result: dict[str, Any]) -> str:
    """The markdown table."""
    lines = ["# The teacher's pseudo-labels: on images whose labels it saw, and on the test split", "",
             f"Teacher: the quality benchmark's fixture (1.6 M `monai.UNet`, trained on every training patient). "
             f"Machine: {result['machine']}.", "",
             "Mean foreground Dice (RV, MYO, LV) per volume against the true labels, at 128 x 128.", "",
             "| seed | student's volumes without labels | with labels | test split (40 volumes) |",
             "|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['seed']} | {r['without_labels']:.3f} ({r['n_without_labels']}) | "
                     f"{r['with_labels']:.3f} ({r['n_with_labels']}) | {result['test']:.3f} |")
    diff = 100 * (result["without_labels_mean"] - result["test"])
    lines += ["", f"On the volumes the students get without labels the teacher scores "
              f"{result['without_labels_mean']:.3f} on average over seeds, against {result['test']:.3f} on the test "
              f"split: its pseudo-labels there differ by {diff:+.1f} points from its labels on images it never saw.",
              ""]
    return "\n".join(lines + render_half(result.get("half_teachers", [])))


def render_half(rows: list[dict[str, Any]]) -> list[str]:
    """The half teachers' table (none: no lines)."""
    if not rows:
        return []
    lines = ["## A teacher that never saw those labels", "",
             "Each seed's half teacher (`teacher_half-s<seed>` of `run.py`: the same network and schedule, trained on "
             "that seed's labelled patients only, as the `rec_cwd_t50` arm distils from it), scored on that seed's "
             "volumes without labels, which it never saw, and on the test split.", "",
             "| seed | student's volumes without labels | test split (40 volumes) |", "|---|---|---|"]
    lines += [f"| {r['seed']} | {r['without_labels']:.3f} ({r['n_without_labels']}) | {r['test']:.3f} |" for r in rows]
    mean_without = statistics.mean(r["without_labels"] for r in rows)
    lines += ["", f"Mean over {len(rows)} half teacher(s): {mean_without:.3f} on the volumes without labels, "
              f"{statistics.mean(r['test'] for r in rows):.3f} on the test split.", ""]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="compact ACDC copy (medkd data compact)")
    parser.add_argument("--teacher-fixture", type=Path, default=FIXTURE)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--half-teachers", type=Path, default=None,
                        help="a run.py work folder: also score the teacher_half-s<seed> runs found there")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "teacher_labels")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = student_config(args.data, 0)
    bundle = build_bundle(cfg)
    pool, test = bundle.meta["train_pool"], bundle.split["test"]
    fixture = TeacherConfig(model=ModelConfig(**TEACHER_MODEL), checkpoint=str(args.teacher_fixture))
    dice = teacher_dice(fixture, cfg, bundle, pool + test)
    result = summarize(dice, args.seeds, args.data)
    result["test"] = statistics.mean(dice[c] for c in test)
    result["without_labels_mean"] = statistics.mean(r["without_labels"] for r in result["rows"])
    info = machine_info()
    result["machine"] = f"{info.get('cpu', 'CPU')} ({info.get('logical_cores')} cores), torch threads: {args.threads}"
    result["per_volume"] = dice
    if args.half_teachers:
        half = half_teachers(args.half_teachers, args.seeds, args.data, cfg, bundle)
        result["half_teachers"] = summarize_half(half, test)
        result["half_teachers_per_volume"] = half
    atomic_write_json(args.out.with_suffix(".json"), result)
    atomic_write_text(args.out.with_suffix(".md"), render(result))
    print(render(result))


if __name__ == "__main__":
    sys.exit(main())
