"""Paper A's adaptive affinity at speed: one full distillation training step per objective arm (issue 11, item 4).

A step is what the trainer runs (``medkd.train.trainer._step`` without autocast): zero the gradients, the student's
forward (taps ``logits`` and ``bottleneck``), the frozen teacher's forward under ``no_grad``, the segmentation loss
(``focal_dice``, paper A's), the arm's distillation objective, backward, then Adam on the student and the
adapters and Adam with ``maximize=True`` on the adaptive-affinity weights. Arms (``experiments/paper_a_acdc.yaml``):

- ``baseline``: the student alone (segmentation loss only);
- ``lm``: the logits-KL arm, ``L_seg + 0.2 LM``;
- ``lm-kmm-aam``: paper A's full objective, ``L_seg + 0.2 LM + 0.9 KMM + 0.9 AAM`` (dilations 1, 2, 3).

Defaults: student ENet, teacher UNet++ with small widths, batch 8, 128 x 128, 4 classes, random inputs. The arms
are timed interleaved (one step of each arm per round) so that a shared, fluctuating CPU slows them alike; each
arm's time is the median of the timed rounds after the warm-up rounds. ``--profile`` prints the
``torch.profiler`` table of one step of the paper-A arm.

Usage::

    python benchmarks/affinity/run.py                  # CPU; writes results_cpu.json / results_cpu.md here
    python benchmarks/affinity/run.py --device cuda    # GPU; writes results_cuda.json / results_cuda.md
    python benchmarks/affinity/run.py --steps 2 --warmup 1 --size 32 --out-dir "$(mktemp -d)"  # smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import statistics
from pathlib import Path
from typing import Any

import torch

from medkd.measure.machine import machine_info
from medkd.measure.timing import clock, cuda_sync

HERE = Path(__file__).resolve().parent
REFERENCE = HERE.parents[1] / "tests" / "distill" / "test_affinity_fast.py"  # the previous affinity code
BEFORE = "lm-kmm-aam (before)"
NUM_CLASSES, IN_CHANNELS = 4, 1
TEACHER_FEATURES = (8, 16, 32, 64, 128, 16)  # UNet++ at 1/8 of its default widths
TARGET_RATIO = 1.5

ARMS: dict[str, list[dict[str, Any]]] = {
    "baseline": [],
    "lm": [{"loss": "logits_kl", "weight": 0.2, "tap": "logits", "temperature": 1.0}],
    "lm-kmm-aam": [
        {"loss": "logits_kl", "weight": 0.2, "tap": "logits", "temperature": 1.0, "reverse": False},
        {"loss": "kernel_matrix", "weight": 0.9, "tap": "bottleneck"},
        {"loss": "adaptive_affinity", "weight": 0.9, "tap": "logits", "dilations": [1, 2, 3], "margin": 3.0},
    ],
}


def machine(device: torch.device) -> dict[str, Any]:
    """The machine the numbers come from: CPU model, platform, torch, threads and (on CUDA) the GPU."""
    m = machine_info()
    info = {"cpu": m["cpu"], "platform": m["platform"], "python": m["python"], "torch": m["torch"],
            "threads": m["torch_threads"]}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


@contextlib.contextmanager
def previous_affinity_code():
    """Run paper A's affinity with the code it had before issue 11 (kept as the reference of
    ``tests/distill/test_affinity_fast.py``): the loss modules call these functions through the module."""
    import medkd.distill.functional as KF

    spec = importlib.util.spec_from_file_location("affinity_reference", REFERENCE)
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    saved = KF.affinity_pair_stats, KF.predicted_labels
    KF.affinity_pair_stats, KF.predicted_labels = ref.per_offset_pair_stats, ref.argmax_labels
    try:
        yield
    finally:
        KF.affinity_pair_stats, KF.predicted_labels = saved


class Arm:
    """One objective arm's student, objective and optimisers; :meth:`step` runs one training step."""

    def __init__(self, name: str, student_name: str, teacher: torch.nn.Module, size: tuple[int, int],
                 device: torch.device, before: bool = False) -> None:
        from medkd.distill.objective import DistillObjective
        from medkd.distill.segmentation import create_seg_loss
        from medkd.models import FeatureTapper, create_model

        torch.manual_seed(0)
        self.name = BEFORE if before else name
        self.context = previous_affinity_code if before else contextlib.nullcontext
        self.student = create_model(student_name, IN_CHANNELS, NUM_CLASSES, 2).to(device).train()
        self.seg = create_seg_loss("focal_dice", NUM_CLASSES)
        self.objective = DistillObjective.from_config(ARMS[name]) if ARMS[name] else None
        self.s_tap = FeatureTapper(self.student, ("logits", "bottleneck"))
        self.t_tap = FeatureTapper(teacher, ("logits", "bottleneck"))
        self.teacher = teacher
        if self.objective is not None:
            probe = torch.zeros(2, IN_CHANNELS, *size, device=device)
            self.objective.setup(self._student_feats(probe), self._teacher_feats(probe))
            self.objective.to(device)
        extra = self.objective.descent_parameters() if self.objective is not None else []
        self.opt = torch.optim.Adam(list(self.student.parameters()) + list(extra), lr=1e-3)
        ascent = self.objective.ascent_parameters() if self.objective is not None else []
        self.ascent = torch.optim.Adam(ascent, lr=1e-3, maximize=True) if ascent else None

    def _student_feats(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.student(x)
        feats = self.s_tap.features
        self.s_tap.clear()
        return feats

    def _teacher_feats(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            self.teacher(x)
        feats = {k: v.detach() for k, v in self.t_tap.features.items()}
        self.t_tap.clear()
        return feats

    def step(self, image: torch.Tensor, label: torch.Tensor) -> float:
        """One training step as the trainer runs it; returns the loss."""
        with self.context():
            return self._step(image, label)

    def _step(self, image: torch.Tensor, label: torch.Tensor) -> float:
        self.opt.zero_grad(set_to_none=True)
        if self.ascent is not None:
            self.ascent.zero_grad(set_to_none=True)
        s = self._student_feats(image)
        loss = self.seg(s["logits"].float(), label)
        if self.objective is not None:
            total, _ = self.objective(s, self._teacher_feats(image), {"label": label})
            loss = loss + total
        loss.backward()
        self.opt.step()
        if self.ascent is not None:
            self.ascent.step()
        return float(loss.detach())


def time_arms(arms: list[Arm], image: torch.Tensor, label: torch.Tensor, steps: int, warmup: int,
              device: torch.device) -> dict[str, list[float]]:
    """Seconds per step of every arm, interleaved round by round; warm-up rounds are not kept."""
    times: dict[str, list[float]] = {a.name: [] for a in arms}
    sync = cuda_sync(device)
    for r in range(warmup + steps):
        for arm in arms:
            t0 = clock(sync)
            arm.step(image, label)
            if r >= warmup:
                times[arm.name].append(clock(sync) - t0)
    return times


def profile_step(arm: Arm, image: torch.Tensor, label: torch.Tensor, device: torch.device, rows: int = 25) -> str:
    """``torch.profiler`` table (by self time) of one step of ``arm``."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        arm.step(image, label)
        clock(cuda_sync(device))
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)


def count_ops(arm: Arm, image: torch.Tensor, label: torch.Tensor) -> int:
    """Number of ATen operator calls in one step of ``arm`` (views included): on a GPU at this size each one is
    a dispatch and most a kernel launch, so this count, not the CPU time, is what sets the step time there."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        arm.step(image, label)
    return sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))


def summarise(times: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Median / min milliseconds per arm and the ratio of each median to the ``lm`` arm's."""
    ref = statistics.median(times["lm"])
    return {name: {"median_ms": round(1e3 * statistics.median(t), 1), "min_ms": round(1e3 * min(t), 1),
                   "steps": len(t), "ratio_to_lm": round(statistics.median(t) / ref, 3)}
            for name, t in times.items()}


def render_markdown(result: dict[str, Any]) -> str:
    """The results table as markdown."""
    m, c = result["machine"], result["config"]
    where = m.get("gpu", f"{m['cpu']} ({m['threads']} threads)")
    lines = [
        "# Paper A's adaptive affinity: one full distillation training step",
        "",
        f"Machine: {where}; {m['platform']}; torch {m['torch']}.",
        "",
        f"Student {c['student']}, teacher {c['teacher']} (features {c['teacher_features']}), batch {c['batch']}, "
        f"{c['size'][0]}x{c['size'][1]}, {NUM_CLASSES} classes, device {c['device']}; median of {c['steps']} timed "
        f"steps after {c['warmup']} warm-up steps, arms interleaved round by round (a shared machine slows them "
        f"alike: compare the ratios). Target: lm-kmm-aam <= {TARGET_RATIO}x lm. ATen ops: operator calls in one "
        "step (views included), the count that sets a step's time on a GPU at this size.",
        "",
        "| arm | median step (ms) | min (ms) | ratio to lm | ATen ops per step |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in result["arms"].items():
        lines.append(f"| {name} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | {r['ratio_to_lm']:.2f} | "
                     f"{r.get('aten_ops', '-')} |")
    if BEFORE in result["arms"]:
        lines += ["", f"'{BEFORE}' is paper A's arm run with the affinity code before issue 11 (per-offset "
                  "Python loop, index_add binning, argmax labels), kept as the reference of "
                  "tests/distill/test_affinity_fast.py; timed interleaved with the other arms."]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="torch device: cpu (default) or cuda")
    p.add_argument("--size", type=int, default=128, help="square image side (default 128)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=7, help="timed steps per arm (median reported)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--student", default="enet")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--profile", action="store_true", help="print the profiler table of one paper-A step")
    p.add_argument("--before", action="store_true",
                   help=f"also time paper A's arm with the previous affinity code ('{BEFORE}'; needs tests/)")
    p.add_argument("--out-dir", type=Path, default=HERE, help="where results_<device>.json/.md go")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark and write ``results_<device>.json`` / ``.md``."""
    from medkd.models import create_model

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    size = (args.size, args.size)
    torch.manual_seed(0)
    teacher = create_model("unetplusplus", IN_CHANNELS, NUM_CLASSES, 2, features=TEACHER_FEATURES).to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    image = torch.randn(args.batch, IN_CHANNELS, *size, generator=g).to(device)
    label = torch.randint(0, NUM_CLASSES, (args.batch, 1, *size), generator=g).to(device)
    arms = [Arm(name, args.student, teacher, size, device) for name in ARMS]
    if args.before:
        arms.append(Arm("lm-kmm-aam", args.student, teacher, size, device, before=True))
    times = time_arms(arms, image, label, args.steps, args.warmup, device)
    summary = summarise(times)
    for arm in arms:
        summary[arm.name]["aten_ops"] = count_ops(arm, image, label)
    result = {"machine": machine(device),
              "config": {"student": args.student, "teacher": "unetplusplus", "teacher_features": TEACHER_FEATURES,
                         "batch": args.batch, "size": size, "device": str(device), "steps": args.steps,
                         "warmup": args.warmup},
              "arms": summary, "times_s": times}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"results_{device.type}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out_dir / f"results_{device.type}.md").write_text(render_markdown(result))
    print(render_markdown(result))
    if args.profile:
        print(profile_step(arms[len(ARMS) - 1], image, label, device))
    return result


if __name__ == "__main__":
    main()
